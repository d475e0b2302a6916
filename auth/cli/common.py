"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from ..runtime.console import Exit, say
from ..service.durations import parse_duration

__all__ = ["EXIT_OK", "EXIT_REFUSED", "EXIT_USAGE", "duration_arg", "emit_json", "say"]

EXIT_OK = Exit.OK
EXIT_REFUSED = Exit.FAILED  # the thing checked was refused or invalid
EXIT_USAGE = Exit.USAGE


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
