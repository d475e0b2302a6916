"""The `kubejoin` command line. Exit codes: 0 success, 1 refused or invalid, 2 usage or
configuration error. Messages go to stderr, machine output (JSON) to stdout."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import ca, demo, issuer, join, loadtest, serve, tokens, verify
from .common import EXIT_USAGE

Register = Callable[["argparse._SubParsersAction[Any]"], None]
# The order of `kubejoin --help`.
REGISTRY: list[Register] = [
    serve.register,
    demo.register,
    join.register,
    tokens.register,
    verify.register,
    issuer.register,
    ca.register,
    loadtest.register,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubejoin",
        description="Join workloads running in Kubernetes to an auth service by verifying their "
        "ServiceAccount tokens offline.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in REGISTRY:
        register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # a bug: say so in one line rather than a traceback, and exit 2
        print(
            f"kubejoin {args.command}: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr
        )
        return EXIT_USAGE


def entry_point() -> None:
    sys.exit(main())
