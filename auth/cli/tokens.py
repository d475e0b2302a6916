"""`kubejoin tokens check FILE [--config F]`: validates a join token file (exit 0 valid, 1
invalid). With the service's config, it also refuses allow rules that read the cluster where the
config has no binding to answer them, as `serve` does, and warns of join tokens naming a cluster
that the config does not register (their joins would be refused with unknown_cluster). `tokens explain`
lives in explain.py."""

from __future__ import annotations

import argparse
from typing import Any

from ..service.clusterobjects import check_token_rules
from ..service.config import load_config
from ..service.files import ConfigError
from ..service.tokens import load_tokens
from . import explain
from .common import EXIT_OK, EXIT_REFUSED, emit_json, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("tokens", help="work with join token files")
    actions = parser.add_subparsers(dest="tokens_command", required=True, metavar="ACTION")
    check = actions.add_parser("check", help="validate a join token file; errors name the field path")
    check.add_argument("file")
    check.add_argument("--config", help="the service's config: warn of join tokens naming unregistered clusters")
    check.set_defaults(handler=run_check)
    explain.add_parser(actions)


def run_check(args: argparse.Namespace) -> int:
    try:
        tokens = load_tokens(args.file)
        registered = None
        if args.config:
            config = load_config(args.config)
            registered = {c.name for c in config.clusters}
            # what `serve` refuses at load: rules reading the cluster with no binding to answer them
            check_token_rules(tokens, config, {c.name: c for c in config.clusters}, args.file)
    except ConfigError as exc:
        say(str(exc))
        return EXIT_REFUSED
    for token in tokens.values():
        named = token.kubernetes.cluster if token.kubernetes else None
        if named is None:
            continue
        if registered is None:
            say(f"{args.file}: join token {token.name} names cluster {named}: give --config to check it is registered")
        elif named not in registered:
            shown = ", ".join(sorted(registered)) or "none"
            say(
                f"warning: {args.file}: join token {token.name} names cluster {named}, which the config does not "
                f"register (registered: {shown}); its joins are refused with unknown_cluster"
            )
    emit_json(
        {
            "tokens": [
                {
                    "name": t.name if t.public else None,  # other join methods' names are secrets
                    "join_method": t.join_method,
                    "roles": list(t.roles),
                    "type": t.kubernetes.type if t.kubernetes else None,
                    **({"cluster": t.kubernetes.cluster} if t.kubernetes and t.kubernetes.cluster else {}),
                }
                for t in tokens.values()
            ]
        }
    )
    say(f"{args.file}: {len(tokens)} valid join token(s)")
    return EXIT_OK
