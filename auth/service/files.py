"""Writing secrets to disk."""

from __future__ import annotations

import os


def write_private_file(path: str, data: bytes) -> None:
    """Creates `path` readable by its owner only (0600) and writes `data`. Refuses a path that
    exists (O_EXCL): a private key must never land in a file that someone else created, or one
    whose mode lets others read it."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)
