#!/usr/bin/env python3
"""Where the time of one join goes, stage by stage, in one process (no HTTP): the profile behind
the ratios in bench/RESULTS.md. Each stage runs over the same unique RS256 tokens; medians of
the rounds, in microseconds per token.

    python bench/breakdown.py [--tokens 3000] [--rounds 5]
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
import contextlib
import datetime
import io
import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.loadtest import join_token_document, mint_tokens, public_keys
from auth.service.ca import CertificateAuthority, parse_public_key
from auth.service.config import parse_config
from auth.service.errors import JoinError
from auth.service.server import SERVICE, create_app
from auth.service.tokenreview import review_record
from verifier import StaticKeySource, Verifier, parse_jwks
from verifier.claims import usual_claims
from verifier.jose import HeaderMemo, parse_compact

AUDIENCE = "example.teleport.sh"
REVIEW_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def timed(run: Callable[[], object], count: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        run()
        samples.append((time.perf_counter() - started) / count * 1e6)
    return statistics.median(samples)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = IssuerKey.generate()
    issuer = LocalIssuer(ISSUER, [key])
    tokens = mint_tokens(key.private_pem(), ISSUER, AUDIENCE, "loadtest", args.tokens, args.tokens, lambda _: None)
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="bench", issuer=ISSUER)
    probe = Verifier(source, [AUDIENCE], cache_size=0)
    parsed = [parse_compact(token) for token in tokens]
    memo = HeaderMemo()  # as the verifier's, once the first token's signature verified
    memo.remember(parsed[0].header_segment, (parsed[0].alg, parsed[0].kid))
    usual = [parse_compact(token, memo, usual_claims) for token in tokens]
    verifying_key = source.cached_key(parsed[0].kid or "")
    assert verifying_key is not None
    pems = public_keys(16)
    ca = CertificateAuthority.generate(AUDIENCE)
    now = datetime.datetime.now(datetime.UTC)
    n = len(tokens)

    async def verify_all(verifier: Verifier) -> None:
        for token in tokens:
            await verifier.verify(token)

    stages: list[tuple[str, Callable[[], object]]] = [
        (
            "signature (key.verify)",
            lambda: [verifying_key.verify(p.signing_input, p.signature) for p in parsed] and None,
        ),
        ("parse, every header decoded, general JSON", lambda: [parse_compact(t) for t in tokens] and None),
        (
            "parse, header memoized, usual claims (as verify does)",
            lambda: [parse_compact(t, memo, usual_claims) for t in tokens] and None,
        ),
        (
            "claims decode + checks + identity (general)",
            lambda: [probe._check_claims(p.claims) for p in parsed] and None,
        ),
        ("claim checks + identity (usual claims)", lambda: [probe._check_claims(p.claims) for p in usual] and None),
        ("verify, no cache", lambda: asyncio.run(verify_all(Verifier(source, [AUDIENCE], cache_size=0)))),
        ("verify, filling the cache", lambda: asyncio.run(verify_all(Verifier(source, [AUDIENCE])))),
        ("public key PEM parse", lambda: [parse_public_key(pems[i % 16]) for i in range(n)] and None),
        (
            "certificate (encode + CA signature)",
            lambda: (
                [
                    ca.issue(
                        parse_public_key(pems[0]),
                        host_id=str(uuid.uuid4()),
                        role="App",
                        namespace="ns",
                        service_account="sa",
                        now=now,
                        not_after=now,
                    )
                    for _ in range(n)
                ]
                and None
            ),
        ),
    ]
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "tokens.yaml").write_text(json.dumps(join_token_document("b", jwks=issuer.jwks_document().decode())))
        bodies = [
            {"token_name": "b", "id_token": t, "role": "App", "public_key": pems[i % 16]} for i, t in enumerate(tokens)
        ]

        refused_roles = [{**body, "role": "Db"} for body in bodies]  # the token grants App only
        # The tokens are minted for joins (aud: the cluster name), which token_review.audiences may
        # not hold: the reviews name that audience, as a Vault role names its own.
        review = {
            "source": {"type": "static_jwks", "static_jwks": {"jwks": issuer.jwks_document().decode()}},
            "audiences": [REVIEW_AUDIENCE],
        }
        reviews = [
            json.dumps(
                {
                    "apiVersion": "authentication.k8s.io/v1",
                    "kind": "TokenReview",
                    "spec": {"token": t, "audiences": [AUDIENCE]},
                }
            ).encode()
            for t in tokens
        ]

        def fresh_service() -> Any:
            config = {"cluster_name": AUDIENCE, "tokens_file": "tokens.yaml", "token_review": review}
            app = create_app(parse_config(config, work), registry=CollectorRegistry(), audit=io.StringIO())
            service = app[SERVICE]
            service.keyring.update(service.tokens.tokens)
            assert service.reviewer is not None
            service.reviewer.start()
            return service

        def whole_join(requests: list[dict[str, str]]) -> Callable[[], None]:
            async def joins() -> None:
                service = fresh_service()
                for body in requests:
                    with contextlib.suppress(JoinError):
                        await service.join.join(body, "127.0.0.1")

            return lambda: asyncio.run(joins())

        def whole_review() -> None:
            async def run() -> None:
                service = fresh_service()
                for raw in reviews:
                    record = review_record("v1", "127.0.0.1")
                    answer = await service.reviewer.review("v1", raw, record, time.perf_counter())
                    assert answer["status"]["authenticated"] is True

            asyncio.run(run())

        stages.append(("whole join logic (JoinService.join)", whole_join(bodies)))
        stages.append(("join logic minus the certificate (role refused)", whole_join(refused_roles)))
        stages.append(("whole review logic (TokenReviewer.review)", whole_review))
        print(f"{n} unique RS256 tokens, median of {args.rounds} rounds, microseconds per token")
        for name, run in stages:
            print(f"  {name:48} {timed(run, n, args.rounds):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
