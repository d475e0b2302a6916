#!/usr/bin/env python3
"""Token verification throughput: kubejoin against the physical limit and the peer libraries.

In one process, on the same unique kube-shaped tokens (RS256 with RSA 2048, and ES256):
  raw        cryptography's signature verification alone, inputs pre-split (the limit)
  kubejoin   kubejoin's verifier on tokens it has not seen (every lookup misses the cache)
  cached     kubejoin's verifier on the same tokens again (cache hits)
  joserfc    jwt.decode + JWTClaimsRegistry
  pyjwt      jwt.decode with audience, issuer and required claims
  authlib    JsonWebToken.decode + claims.validate
Every verifier runs the same claim checks (issuer, audience, exp/iat/nbf with leeway, lifetime,
pod binding, subject). Rounds go round-robin over the cases (a shared machine's load falls on all
alike). Prints the median of the rounds, per token, as a ratio to raw, and kubejoin's unique-token
rate as a ratio to the fastest peer's.

    python bench/verify.py [--tokens 2000] [--rounds 5] [--json]

Peers: pip install 'kubejoin[bench]' (PyJWT, authlib); a missing peer is reported, not fatal.
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import json
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from auth.devtools.issuer import IssuerKey, LocalIssuer
from verifier import StaticKeySource, Verifier, parse_jwks
from verifier.jose import b64url_decode

ISSUER = "https://kubernetes.default.svc.cluster.local"
AUDIENCE = "example.teleport.sh"
LEEWAY = 10
MAX_TTL = 1800


def kube_checks(claims: dict[str, Any]) -> None:
    """What kubejoin checks beyond the registered claims, for the peers to do too."""
    if claims["exp"] - claims["iat"] > MAX_TTL:
        raise ValueError("ttl")
    binding = claims["kubernetes.io"]
    pod = binding["pod"]
    if not pod["name"] or not pod["uid"]:
        raise ValueError("pod")
    if claims["sub"] != f"system:serviceaccount:{binding['namespace']}:{binding['serviceaccount']['name']}":
        raise ValueError("sub")


def raw_case(issuer: LocalIssuer, tokens: list[str]) -> Callable[[], None]:
    public = issuer.signing_key.private_key.public_key()
    prepared = []
    for token in tokens:
        head, _, signature = token.rpartition(".")
        raw = b64url_decode(signature.encode(), "signature")
        if isinstance(public, ec.EllipticCurvePublicKey):
            raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        prepared.append((head.encode(), raw))

    def run() -> None:
        if isinstance(public, rsa.RSAPublicKey):
            for data, signature in prepared:
                public.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())
        else:
            assert isinstance(public, ec.EllipticCurvePublicKey)
            for data, signature in prepared:
                public.verify(signature, data, ec.ECDSA(hashes.SHA256()))

    return run


def kubejoin_case(issuer: LocalIssuer, tokens: list[str], *, warm: bool) -> Callable[[], None]:
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="bench", issuer=ISSUER)
    state: dict[str, Verifier] = {}

    async def verify_all(verifier: Verifier) -> None:
        for token in tokens:
            await verifier.verify(token)

    def fresh() -> Verifier:
        return Verifier(source, [AUDIENCE], leeway=LEEWAY, max_ttl=MAX_TTL)

    if warm:
        state["v"] = fresh()
        asyncio.run(verify_all(state["v"]))

    def run() -> None:
        verifier = state["v"] if warm else fresh()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(verify_all(verifier))
        finally:
            loop.close()

    return run


def joserfc_case(issuer: LocalIssuer, tokens: list[str]) -> Callable[[], None]:
    from joserfc import jwt
    from joserfc.jwk import KeySet

    keys = KeySet.import_key_set(json.loads(issuer.jwks_document()))
    registry = jwt.JWTClaimsRegistry(
        leeway=LEEWAY,
        iss={"essential": True, "value": ISSUER},
        aud={"essential": True, "value": AUDIENCE},
        exp={"essential": True},
        iat={"essential": True},
        sub={"essential": True},
    )
    alg = issuer.signing_key.alg

    def run() -> None:
        for token in tokens:
            decoded = jwt.decode(token, keys, algorithms=[alg])
            registry.validate(decoded.claims)
            kube_checks(decoded.claims)

    return run


def pyjwt_case(issuer: LocalIssuer, tokens: list[str]) -> Callable[[], None]:
    import jwt

    public = issuer.signing_key.private_key.public_key()
    alg = issuer.signing_key.alg
    required = ["exp", "iat", "iss", "aud", "sub"]

    def run() -> None:
        for token in tokens:
            claims = jwt.decode(
                token,
                public,
                algorithms=[alg],
                audience=AUDIENCE,
                issuer=ISSUER,
                leeway=LEEWAY,
                options={"require": required},
            )
            kube_checks(claims)

    return run


def authlib_case(issuer: LocalIssuer, tokens: list[str]) -> Callable[[], None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from authlib.jose import JsonWebKey, JsonWebToken

    alg = issuer.signing_key.alg
    decoder = JsonWebToken([alg])
    keys = JsonWebKey.import_key_set(json.loads(issuer.jwks_document()))
    options = {
        "iss": {"essential": True, "value": ISSUER},
        "aud": {"essential": True, "value": AUDIENCE},
        "exp": {"essential": True},
        "iat": {"essential": True},
        "sub": {"essential": True},
    }

    def run() -> None:
        for token in tokens:
            claims = decoder.decode(token, keys, claims_options=options)
            claims.validate(leeway=LEEWAY)
            kube_checks(dict(claims))

    return run


def bench(kind: str, count: int, rounds: int) -> list[dict[str, Any]]:
    issuer = LocalIssuer(ISSUER, [IssuerKey.generate(kind)])
    now = time.time()
    tokens = [
        issuer.mint(f"ns-{i % 37}", f"agent-{i}", audiences=[AUDIENCE], now=now, pod=f"agent-{i}-pod")
        for i in range(count)
    ]
    cases: list[tuple[str, Callable[[], Callable[[], None]]]] = [
        ("raw cryptography (limit)", lambda: raw_case(issuer, tokens)),
        ("kubejoin, unique tokens", lambda: kubejoin_case(issuer, tokens, warm=False)),
        ("kubejoin, repeated (cache)", lambda: kubejoin_case(issuer, tokens, warm=True)),
        ("joserfc", lambda: joserfc_case(issuer, tokens)),
        ("PyJWT", lambda: pyjwt_case(issuer, tokens)),
        ("authlib", lambda: authlib_case(issuer, tokens)),
    ]
    rows: list[dict[str, Any]] = []
    runs: dict[str, Callable[[], None]] = {}
    for name, make in cases:
        try:
            run = make()
            run()  # warm up, and fail here rather than in the timing loop
        except ImportError as exc:
            rows.append({"alg": issuer.signing_key.alg, "case": name, "error": f"not installed ({exc.name})"})
            continue
        runs[name] = run
    # Round-robin: each round passes over the tokens once per case, so that a change in the
    # machine's load (it is shared) falls on every case alike instead of on whichever ran then.
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            started = time.perf_counter()
            run()
            times[name].append((time.perf_counter() - started) / count)
    for name in runs:  # median seconds per token over the rounds
        rows.append({"alg": issuer.signing_key.alg, "case": name, "seconds": statistics.median(times[name])})
    rows.sort(key=lambda row: [c[0] for c in cases].index(row["case"]))
    limit = rows[0]["seconds"]
    for row in rows:
        if "seconds" in row:
            row["us_per_token"] = round(row["seconds"] * 1e6, 2)
            row["tokens_per_s"] = round(1 / row["seconds"])
            row["ratio_to_raw"] = round(limit / row["seconds"], 3)
    peers = [row["seconds"] for row in rows if row["case"] in PEERS and "seconds" in row]
    ours = next(row for row in rows if row["case"] == "kubejoin, unique tokens")
    if peers:
        ours["ratio_to_best_peer"] = round(min(peers) / ours["seconds"], 3)
    return rows


PEERS: Final = ("joserfc", "PyJWT", "authlib")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rows = bench("RSA", args.tokens, args.rounds) + bench("P-256", args.tokens, args.rounds)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{args.tokens} unique tokens, median of {args.rounds} rounds, Python {sys.version.split()[0]}")
    print(f"{'alg':6} {'case':28} {'us/token':>9} {'tokens/s':>9} {'x raw':>6} {'x best peer':>11}")
    for row in rows:
        if "error" in row:
            print(f"{row['alg']:6} {row['case']:28} {row['error']}")
        else:
            peer = f"{row['ratio_to_best_peer']:11.2f}" if "ratio_to_best_peer" in row else ""
            print(
                f"{row['alg']:6} {row['case']:28} {row['us_per_token']:9.2f} {row['tokens_per_s']:9d} "
                f"{row['ratio_to_raw']:6.2f} {peer}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
