"""What `kubejoin serve` says to its operator: one-line messages on stderr, and its exit status
(CONTRACT.md: 0 success, 1 refused or failed, 2 usage or configuration error)."""

from __future__ import annotations

import sys
from enum import IntEnum


class Exit(IntEnum):
    OK = 0
    FAILED = 1  # with workers: one did not stop cleanly
    USAGE = 2  # the config, CA, tokens or listeners do not work


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
