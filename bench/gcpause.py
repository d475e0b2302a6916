#!/usr/bin/env python3
"""The longest garbage-collector pause with the verified-token cache full (issue 21).

Builds the service in-process as `kubejoin serve` does (every module imported, config, CA, join
tokens, metrics), applies its start-up collector policy (auth/service/gcpolicy.py: collect, then
freeze), then fills a verifier's cache with N distinct valid tokens (ES256: quick to mint) through
`Verifier.verify`, so the entries have exactly the shape the service keeps. For each N it reports:
  fill_gen2_max_ms   the longest gen-2 collection the collector ran by itself during the fill
  gen2_ms            full collections (gc.collect(2)) with the cache full: median and max of --rounds
  tracked            objects the collector still walks (gc.get_objects(); frozen ones are not)
and the same for the youngest generations (gen-0 and gen-1), which run far more often.

    python bench/gcpause.py [--entries 10000,100000] [--rounds 7] [--source DIR] [--json]

--source DIR measures another checkout (e.g. `git archive e90c027 | tar -x -C /tmp/base`) with
the same script: a checkout without gcpolicy is measured without a start-up freeze.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
_SOURCE = next((sys.argv[i + 1] for i, arg in enumerate(sys.argv[:-1]) if arg == "--source"), None)
sys.path.insert(0, str(Path(_SOURCE).resolve() if _SOURCE else ROOT))

import argparse
import asyncio
import gc
import io
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.loadtest import join_token_document
from auth.service.config import parse_config
from auth.service.server import SERVICE, create_app
from verifier import StaticKeySource, Verifier, parse_jwks

AUDIENCE = "example.teleport.sh"
ISSUER = "https://kubernetes.default.svc.cluster.local"


class PauseLog:
    """Times every collection the interpreter runs, by generation (gc.callbacks). Its own, like
    the rest of this script, rather than auth.devtools.loadtest.CollectorPauses: with --source
    the script imports the other checkout, which may not have it."""

    def __init__(self) -> None:
        self.longest = [0.0, 0.0, 0.0]
        self.count = [0, 0, 0]
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.count[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)

    def reset(self) -> None:
        self.longest, self.count = [0.0, 0.0, 0.0], [0, 0, 0]


def start_up_policy() -> Callable[[], object] | None:
    try:
        from auth.service.gcpolicy import freeze_after_start
    except ImportError:  # a checkout from before the policy
        return None
    return freeze_after_start


def _timed_collect(generation: int, rounds: int) -> list[float]:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        gc.collect(generation)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


async def measure(counts: list[int], rounds: int) -> dict[str, Any]:
    key = IssuerKey.generate("P-256")
    issuer = LocalIssuer(ISSUER, [key])
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "tokens.yaml").write_text(json.dumps(join_token_document("g", jwks=issuer.jwks_document().decode())))
        app = create_app(
            parse_config({"cluster_name": AUDIENCE, "tokens_file": "tokens.yaml"}, work),
            registry=CollectorRegistry(),
            audit=io.StringIO(),
        )
        service = app[SERVICE]
        service.keyring.update(service.tokens.tokens)
        policy = start_up_policy()
        if policy is not None:
            policy()
        log = PauseLog()
        gc.callbacks.append(log)
        source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="static:g", issuer=ISSUER)
        results: dict[str, Any] = {"start_up_freeze": policy is not None, "frozen": gc.get_freeze_count(), "runs": []}
        for count in counts:
            verifier = Verifier(source, [AUDIENCE], cache_size=count)
            log.reset()
            now = time.time()
            for index in range(count):
                token = issuer.mint("loadtest", f"agent-{index}", audiences=[AUDIENCE], now=now, lifetime=1800)
                await verifier.verify(token)
            assert verifier.cache_entries == count
            fill_gen2 = log.longest[2]
            gen2 = _timed_collect(2, rounds)
            young = _timed_collect(0, rounds) + _timed_collect(1, rounds)
            results["runs"].append(
                {
                    "entries": count,
                    "fill_gen2_max_ms": round(fill_gen2 * 1000, 2),
                    "fill_gen2_collections": log.count[2],
                    "gen2_median_ms": round(statistics.median(gen2), 3),
                    "gen2_max_ms": round(max(gen2), 3),
                    "young_max_ms": round(max(young), 3),
                    "tracked": len(gc.get_objects()),
                }
            )
            del verifier
            gc.collect()
        gc.callbacks.remove(log)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", default="10000,100000", help="comma-separated cache sizes to fill")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--source", help="measure the checkout in DIR instead of this one")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    results = asyncio.run(measure([int(n) for n in args.entries.split(",")], args.rounds))
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(
        f"start-up freeze: {'yes' if results['start_up_freeze'] else 'no'} ({results['frozen']} objects frozen); "
        f"Python {sys.version.split()[0]}"
    )
    print(
        f"{'entries':>8} {'fill gen-2 max ms':>18} {'gen-2 median ms':>16} {'gen-2 max ms':>13} "
        f"{'young max ms':>13} {'tracked':>9}"
    )
    for run in results["runs"]:
        print(
            f"{run['entries']:8d} {run['fill_gen2_max_ms']:18.2f} {run['gen2_median_ms']:16.3f} "
            f"{run['gen2_max_ms']:13.3f} {run['young_max_ms']:13.3f} {run['tracked']:9d}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
