"""`kubejoin issuer`: a local issuer that behaves like kube-apiserver's, for demos and load tests."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
from typing import Any

from aiohttp import web

from ..devtools.issuer import IssuerKey, LocalIssuer
from ..service.config import split_host_port
from ..service.files import write_private_file
from .common import EXIT_OK, EXIT_USAGE, duration_arg, emit_json, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("issuer", help="a local issuer that behaves like kube-apiserver's (tests, demos)")
    actions = parser.add_subparsers(dest="issuer_command", required=True, metavar="ACTION")

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--key-file",
            action="append",
            required=True,
            metavar="PEM",
            help="signing key (repeatable; the first signs, all are published); created if missing",
        )
        p.add_argument(
            "--key-type",
            default="RSA",
            choices=["RSA", "P-256", "P-384", "P-521"],
            help="type of keys created for missing key files",
        )
        p.add_argument("--issuer", default="https://kubernetes.default.svc.cluster.local", metavar="URL")

    serve = actions.add_parser("serve", help="serve discovery and JWKS")
    common(serve)
    serve.add_argument("--listen", default="127.0.0.1:8443", metavar="HOST:PORT")
    serve.add_argument("--tls-cert", metavar="PEM")
    serve.add_argument("--tls-key", metavar="PEM")
    serve.add_argument("--bearer-token-file", metavar="FILE", help="require this bearer token, as kube does")
    serve.set_defaults(handler=_serve)

    mint = actions.add_parser("mint", help="print a bound ServiceAccount token")
    common(mint)
    mint.add_argument("--namespace", default="default")
    mint.add_argument("--service-account", default="default")
    mint.add_argument("--pod", help="pod name (default: <service account>-pod)")
    mint.add_argument("--audience", action="append", help="audience (repeatable; default kubejoin)")
    mint.add_argument("--lifetime", type=duration_arg, default=600.0, metavar="DURATION")
    mint.set_defaults(handler=_mint)

    jwks = actions.add_parser("jwks", help="print the JWKS the issuer serves")
    common(jwks)
    jwks.set_defaults(handler=_jwks)


def load_or_create_key(path: str, kind: str) -> IssuerKey:
    if os.path.exists(path):
        with open(path, "rb") as handle:
            return IssuerKey.from_pem(handle.read())
    key = IssuerKey.generate(kind)
    write_private_file(path, key.private_pem())
    return key


def _issuer(args: argparse.Namespace) -> LocalIssuer:
    return LocalIssuer(args.issuer, [load_or_create_key(path, args.key_type) for path in args.key_file])


def _guard(action: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            return int(action(args))
        except (OSError, ValueError) as exc:
            say(f"kubejoin issuer: {exc}")
            return EXIT_USAGE

    return run


@_guard
def _mint(args: argparse.Namespace) -> int:
    token = _issuer(args).mint(
        args.namespace, args.service_account, audiences=args.audience, lifetime=int(args.lifetime), pod=args.pod
    )
    print(token)
    return EXIT_OK


@_guard
def _jwks(args: argparse.Namespace) -> int:
    import json

    emit_json(json.loads(_issuer(args).jwks_document()))
    return EXIT_OK


@_guard
def _serve(args: argparse.Namespace) -> int:
    issuer = _issuer(args)
    if args.bearer_token_file:
        with open(args.bearer_token_file, encoding="utf-8") as handle:
            issuer.bearer_token = handle.read().strip()
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    host, port = split_host_port(args.listen)

    async def serve() -> None:
        runner = web.AppRunner(issuer.app())
        await runner.setup()
        await web.TCPSite(runner, host, port, ssl_context=context).start()
        say(f"issuer {issuer.issuer} serving on {args.listen}; signing kid {issuer.signing_key.kid}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return EXIT_OK
