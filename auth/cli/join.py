"""`kubejoin join`: the workload side. Joins once, or with --renew keeps re-joining before the
certificate expires, re-reading the projected token each time (kubelet rotates it)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import random
import signal
from typing import Any

import aiohttp

from ..agent.client import Joined, JoinRefused, join_once, renewal_delay, retry_delay
from ..service.errors import error_body
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, emit_json, say

RETRY_MIN = 2.0
RETRY_MAX = 60.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("join", help="join from a workload: get a certificate for its ServiceAccount token")
    parser.add_argument("--server", required=True, metavar="URL", help="kubejoin's address, e.g. https://kubejoin:3025")
    parser.add_argument("--token-name", required=True, metavar="NAME", help="the join token to use")
    parser.add_argument("--sa-token-file", required=True, metavar="PATH", help="the projected ServiceAccount token")
    parser.add_argument("--role", required=True, metavar="ROLE")
    parser.add_argument("--out", required=True, metavar="DIR", help="where key.pem, cert.pem, ca.pem are written")
    parser.add_argument("--ca-file", metavar="F", help="CA bundle to trust for an https:// server")
    parser.add_argument("--host-name", metavar="NAME")
    parser.add_argument("--renew", action="store_true", help="keep running and re-join before the certificate expires")
    parser.set_defaults(handler=run)


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


async def _join(args: argparse.Namespace) -> Joined:
    return await join_once(
        args.server,
        token_name=args.token_name,
        sa_token=_read_token(args.sa_token_file),
        role=args.role,
        out_dir=args.out,
        ca_file=args.ca_file,
        host_name=args.host_name,
    )


def _report(joined: Joined, out: str) -> None:
    emit_json(
        {
            "host_id": joined.host_id,
            "role": joined.role,
            "expires_at": joined.response["expires_at"],
            "identity": joined.response["identity"],
            "out": out,
        }
    )
    say(
        f"joined as {joined.response['identity']['username']} with role {joined.role}; "
        f"certificate in {out}/cert.pem valid until {joined.response['expires_at']}"
    )


async def _renew_forever(args: argparse.Namespace, joined: Joined, rng: random.Random) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    delay = RETRY_MIN
    while True:
        now = datetime.datetime.now(datetime.UTC)
        wait = renewal_delay((joined.expires_at - now).total_seconds(), rng)
        try:
            await asyncio.wait_for(stop.wait(), wait)
            return EXIT_OK
        except TimeoutError:
            pass
        while not stop.is_set():
            try:
                joined = await _join(args)
                _report(joined, args.out)
                delay = RETRY_MIN
                break
            except (JoinRefused, aiohttp.ClientError, OSError, TimeoutError) as exc:
                pause = retry_delay(delay, rng)
                say(f"renewal failed, retrying in {pause:.1f} s: {exc}")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), pause)
                delay = min(delay * 2, RETRY_MAX)
        if stop.is_set():
            return EXIT_OK


def run(args: argparse.Namespace) -> int:
    async def main() -> int:
        try:
            joined = await _join(args)
        except JoinRefused as exc:
            emit_json(error_body(exc.code, exc.message))
            say(f"join refused ({exc.code}): {exc.message}")
            return EXIT_REFUSED
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            say(f"kubejoin join: cannot join: {exc or type(exc).__name__}")
            return EXIT_USAGE
        _report(joined, args.out)
        rng = random.Random()  # noqa: S311 (jitter, not a secret)
        return await _renew_forever(args, joined, rng) if args.renew else EXIT_OK

    return asyncio.run(main())
