"""`kubejoin verify`: checks one ServiceAccount token offline and explains the verdict."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from verifier import KeySourceError, OIDCKeySource, StaticKeySource, VerificationError, Verifier, parse_jwks
from verifier.errors import Reason
from verifier.jose import MAX_TOKEN_BYTES
from verifier.sources import KeySource, RemoteKeySource
from verifier.verify import DEFAULT_LEEWAY, DEFAULT_MAX_TTL

from ..service.errors import error_body
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, duration_arg, emit_json, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("verify", help="check one ServiceAccount token offline and explain the verdict")
    parser.add_argument("--audience", action="append", required=True, help="accepted audience (repeatable)")
    keys = parser.add_mutually_exclusive_group(required=True)
    keys.add_argument("--jwks", metavar="FILE", help="a static JWKS file (the cluster's /openid/v1/jwks)")
    keys.add_argument("--issuer", metavar="URL", help="an issuer to discover keys from (OIDC discovery)")
    parser.add_argument("--expect-issuer", metavar="ISS", help="with --jwks: also require this iss")
    parser.add_argument("--now", type=float, metavar="UNIX_SECONDS", help="verify as of this time")
    parser.add_argument("--max-ttl", type=duration_arg, default=DEFAULT_MAX_TTL, metavar="DURATION")
    parser.add_argument("--leeway", type=duration_arg, default=DEFAULT_LEEWAY, metavar="DURATION")
    parser.add_argument("--token-file", metavar="FILE", help="read the token here instead of stdin")
    parser.add_argument("--ca-file", metavar="FILE", help="with --issuer: trust this CA bundle")
    parser.add_argument(
        "--insecure-allow-http-issuer", action="store_true", help="with --issuer: allow http:// (tests only)"
    )
    parser.set_defaults(handler=run)


def read_token(path: str | None) -> str:
    """Reads a token (trimming surrounding whitespace); raises VerificationError for bytes that
    cannot be a token, so that they get a verdict rather than a traceback."""
    limit = MAX_TOKEN_BYTES * 4
    if path is None:
        raw = sys.stdin.buffer.read(limit + 1)
    else:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
    raw = raw.strip()
    if len(raw) > MAX_TOKEN_BYTES:
        raise VerificationError(Reason.TOKEN_TOO_LARGE, f"token is over {MAX_TOKEN_BYTES} bytes")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise VerificationError(Reason.MALFORMED_TOKEN, "token is not UTF-8 text") from None


def _source(args: argparse.Namespace) -> KeySource:
    if args.jwks:
        with open(args.jwks, "rb") as handle:
            return StaticKeySource(parse_jwks(handle.read()), label=f"static:{args.jwks}", issuer=args.expect_issuer)
    if args.expect_issuer:
        raise KeySourceError("--expect-issuer goes with --jwks; with --issuer the discovered issuer is required")
    return OIDCKeySource(args.issuer, allow_http=args.insecure_allow_http_issuer, ca_file=args.ca_file)


async def _verify(args: argparse.Namespace, token: str, source: KeySource) -> dict[str, Any]:
    clock = (lambda: args.now) if args.now is not None else None
    options: dict[str, Any] = {"leeway": args.leeway, "max_ttl": args.max_ttl, "cache_size": 0}
    if clock is not None:
        options["clock"] = clock
    try:
        identity = await Verifier(source, args.audience, **options).verify(token)
        return identity.to_json()
    finally:
        if isinstance(source, RemoteKeySource):
            await source.close()


def run(args: argparse.Namespace) -> int:
    try:
        source = _source(args)
    except (OSError, KeySourceError) as exc:
        say(f"kubejoin verify: cannot load keys: {exc}")
        return EXIT_USAGE
    try:
        token = read_token(args.token_file)
        result = asyncio.run(_verify(args, token, source))
    except OSError as exc:
        say(f"kubejoin verify: cannot read the token: {exc}")
        return EXIT_USAGE
    except VerificationError as exc:
        emit_json(error_body(exc.code, exc.message))
        if exc.code == Reason.KEYS_UNAVAILABLE:
            say(f"kubejoin verify: could not get keys: {exc.message}")
            return EXIT_USAGE
        say(f"refused ({exc.code}): {exc.message}")
        return EXIT_REFUSED
    emit_json(result)
    say(f"accepted: {result['username']} (pod {result['pod']['name']})")
    return EXIT_OK
