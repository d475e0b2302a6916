"""`kubejoin loadtest`: drive a running kubejoin at a fixed arrival rate; see auth/devtools/loadtest.py."""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from typing import Any

from ..devtools.loadtest import mint_tokens, plot, print_summary, public_keys, run_load
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, duration_arg, emit_json, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("loadtest", help="open-loop load test of a running kubejoin")
    parser.add_argument("--server", required=True, metavar="URL")
    parser.add_argument("--token-name", required=True, metavar="NAME", help="join token to join with")
    parser.add_argument("--role", default="App")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=duration_arg, default=10.0, metavar="DURATION")
    parser.add_argument("--pods", type=int, default=1000, help="distinct service accounts and pods")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--issuer-key", metavar="PEM", help="mint tokens with this issuer key (kubejoin issuer)")
    source.add_argument("--tokens-file", metavar="FILE", help="one token per line")
    parser.add_argument("--issuer", default="https://kubernetes.default.svc.cluster.local", help="iss of minted tokens")
    parser.add_argument("--audience", default="example.teleport.sh", help="aud of minted tokens (cluster_name)")
    parser.add_argument("--namespace", default="loadtest", help="namespace of minted tokens")
    parser.add_argument("--connections", type=int, default=256)
    parser.add_argument("--ca-file", metavar="F")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")
    parser.add_argument("--plot", metavar="FILE.png", help="draw latency over time and its histogram")
    parser.set_defaults(handler=run)


def _progress(message: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\033[K" + message)
    else:
        sys.stderr.write(message + "\n")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> int:
    if args.rate <= 0 or args.pods <= 0 or args.connections <= 0:
        say("kubejoin loadtest: --rate, --pods and --connections must be positive")
        return EXIT_USAGE
    try:
        if args.tokens_file:
            with open(args.tokens_file, encoding="utf-8") as handle:
                tokens = [line.strip() for line in handle if line.strip()][: args.pods]
        else:
            with open(args.issuer_key, "rb") as handle:
                pem = handle.read()
            count = min(args.pods, int(args.rate * args.duration))
            tokens = mint_tokens(pem, args.issuer, args.audience, args.namespace, args.pods, count, _progress)
        context = ssl.create_default_context(cafile=args.ca_file) if args.ca_file else None
    except (OSError, ValueError) as exc:
        say(f"kubejoin loadtest: {exc}")
        return EXIT_USAGE
    if not tokens:
        say("kubejoin loadtest: no tokens")
        return EXIT_USAGE
    keys = public_keys(32)
    bodies = [
        json.dumps(
            {"token_name": args.token_name, "id_token": token, "role": args.role, "public_key": keys[i % len(keys)]}
        ).encode()
        for i, token in enumerate(tokens)
    ]
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    report = asyncio.run(
        run_load(
            args.server.rstrip("/") + "/v1/join",
            bodies,
            rate=args.rate,
            duration=args.duration,
            connections=args.connections,
            ssl_context=context,
            progress=_progress,
        )
    )
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    summary = report.summary()
    print_summary(summary)
    if args.json:
        emit_json(summary)
    if args.plot:
        try:
            plot(report, args.plot)
        except ImportError:
            say("kubejoin loadtest: --plot needs matplotlib: pip install 'kubejoin[plot]'")
            return EXIT_USAGE
        say(f"plot written to {args.plot}")
    return EXIT_OK if summary["by_status"].get("0", 0) == 0 else EXIT_REFUSED
