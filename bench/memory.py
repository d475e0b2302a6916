#!/usr/bin/env python3
"""Resident memory with the verified-token cache full at its default size.

Builds the service in-process (as `kubejoin serve` does), joins with more distinct pods than the
cache holds (each join verifies a fresh RS256 token and issues a certificate), and reports the
process's resident memory before and after, with the cache's entry count.

    python bench/memory.py [--pods 17000] [--json]
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
import gc
import io
import json
import sys
import tempfile
from pathlib import Path

from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.loadtest import join_token_document, mint_tokens, public_keys
from auth.service.config import parse_config
from auth.service.joinlog import JoinLog
from auth.service.server import SERVICE, create_app
from verifier.verify import DEFAULT_CACHE_SIZE

AUDIENCE = "example.teleport.sh"
ISSUER = "https://kubernetes.default.svc.cluster.local"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(pods: int) -> dict[str, float]:
    key = IssuerKey.generate()
    issuer = LocalIssuer(ISSUER, [key])
    tokens = mint_tokens(key.private_pem(), ISSUER, AUDIENCE, "loadtest", pods, pods, lambda _: None)
    keys = public_keys(16)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "tokens.yaml").write_text(json.dumps(join_token_document("m", jwks=issuer.jwks_document().decode())))
        app = create_app(
            parse_config({"cluster_name": AUDIENCE, "tokens_file": "tokens.yaml"}, work),
            registry=CollectorRegistry(),
            audit=io.StringIO(),
        )
        service = app[SERVICE]
        service.keyring.update(service.tokens.tokens)
        gc.collect()
        before = rss_mb()
        for index, token in enumerate(tokens):
            await service.join.join(
                {"token_name": "m", "id_token": token, "role": "App", "public_key": keys[index % len(keys)]},
                "127.0.0.1",
            )
            if index % 1000 == 0:
                service.audit.writer = JoinLog(io.StringIO())  # the log goes to stdout in production, not memory
        gc.collect()
        stats = service.keyring.cache_stats()
        return {
            "pods": pods,
            "cache_entries": stats.entries,
            "cache_size": DEFAULT_CACHE_SIZE,
            "rss_mb_before": round(before, 1),
            "rss_mb_after": round(rss_mb(), 1),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pods", type=int, default=DEFAULT_CACHE_SIZE + 600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.pods))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(
            f"{result['pods']} distinct pods joined; cache {result['cache_entries']:g}/{result['cache_size']} entries; "
            f"RSS {result['rss_mb_before']} MB before, {result['rss_mb_after']} MB after"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
