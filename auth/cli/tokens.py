"""`kubejoin tokens check FILE`: validates a join token file (exit 0 valid, 1 invalid)."""

from __future__ import annotations

import argparse
from typing import Any

from ..service.files import ConfigError
from ..service.tokens import load_tokens
from .common import EXIT_OK, EXIT_REFUSED, emit_json, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("tokens", help="work with join token files")
    actions = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a join token file; errors name the field path")
    check.add_argument("file")
    check.set_defaults(handler=run_check)


def run_check(args: argparse.Namespace) -> int:
    try:
        tokens = load_tokens(args.file)
    except ConfigError as exc:
        say(str(exc))
        return EXIT_REFUSED
    emit_json(
        {
            "tokens": [
                {
                    "name": t.name if t.public else None,  # other join methods' names are secrets
                    "join_method": t.join_method,
                    "roles": list(t.roles),
                    "type": t.kubernetes.type if t.kubernetes else None,
                }
                for t in tokens.values()
            ]
        }
    )
    say(f"{args.file}: {len(tokens)} valid join token(s)")
    return EXIT_OK
