"""Small helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable
from typing import Any

from ..service.durations import parse_duration

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def emit_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def listening_on(socknames: Iterable[Any], scheme: str = "") -> str:
    """The addresses listeners got, as `[scheme://]host:port` (`[v6]:port`), comma-separated: for
    port 0 in the config the kernel chose the port, and the start-up line says which."""
    prefix = f"{scheme}://" if scheme else ""
    return ", ".join(
        f"{prefix}[{host}]:{port}" if ":" in host else f"{prefix}{host}:{port}" for host, port, *_ in socknames
    )
