"""`kubejoin loadtest`: an open-loop load generator for a running kubejoin.

Requests leave at a fixed arrival rate whether or not earlier ones have finished, and each
latency is measured from the moment its request was due, not from when it was sent: a slow
server cannot hide its queueing by slowing the generator down (coordinated omission).
"""

from __future__ import annotations

import asyncio
import json
import math
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .issuer import IssuerKey, LocalIssuer

MAX_DURATION = 3600.0
LAG_WARNING = 0.005  # requests sent this late mean the generator, not the server, is the limit


@dataclass
class Outcome:
    """One request of a load test, timed from when it was due (open loop), so that a slow server
    shows as latency instead of silently lowering the request rate."""

    due: float  # seconds since start when the request was due
    latency: float  # from due to answer
    lag: float  # from due to sent
    status: int  # 0 when no HTTP answer arrived
    reason: str


@dataclass
class Report:
    """All outcomes of one load test run and the summary (rate achieved, latency percentiles,
    statuses and reasons) that `kubejoin loadtest` prints."""

    rate: float
    duration: float
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0

    def percentile(self, values: Sequence[float], q: float) -> float:
        if not values:
            return math.nan
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def summary(self) -> dict[str, Any]:
        latencies = [o.latency for o in self.outcomes]
        lags = [o.lag for o in self.outcomes]
        return {
            "target_rate": self.rate,
            "achieved_rate": round(len(self.outcomes) / self.elapsed, 1) if self.elapsed else 0.0,
            "requests": len(self.outcomes),
            "duration_s": round(self.elapsed, 3),
            "latency_ms": {
                name: round(self.percentile(latencies, q) * 1000, 3)
                for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100))
            },
            "by_status": dict(sorted(Counter(str(o.status) for o in self.outcomes).items())),
            "by_reason": dict(sorted(Counter(o.reason for o in self.outcomes).items())),
            "generator_lag_ms_p99": round(self.percentile(lags, 99) * 1000, 3),
            "generator_bottleneck": self.percentile(lags, 99) > LAG_WARNING,
        }


def join_token_document(
    name: str, *, jwks: str | None = None, oidc_issuer: str | None = None, namespace: str = "loadtest"
) -> dict[str, Any]:
    """A join token (Teleport's format) that admits the service accounts this load test mints
    (`<namespace>:agent-<n>`), trusting a static key set or an OIDC issuer reachable over http."""
    kubernetes: dict[str, Any] = {
        "allow": [{"service_account_namespace": namespace, "service_account_name": "agent-*"}]
    }
    if oidc_issuer is not None:
        kubernetes.update(type="oidc", oidc={"issuer": oidc_issuer, "insecure_allow_http_issuer": True})
    else:
        kubernetes.update(type="static_jwks", static_jwks={"jwks": jwks})
    return {
        "kind": "token",
        "version": "v2",
        "metadata": {"name": name},
        "spec": {"roles": ["App"], "join_method": "kubernetes", "kubernetes": kubernetes},
    }


def _mint_batch(args: tuple[bytes, str, str, str, int, int, int]) -> list[str]:
    pem, issuer_url, audience, namespace, pods, start, stop = args
    issuer = LocalIssuer(issuer_url, [IssuerKey.from_pem(pem)])
    return [
        issuer.mint(namespace, f"agent-{i % pods}", audiences=[audience], pod=f"agent-{i % pods}-pod", lifetime=900)
        for i in range(start, stop)
    ]


def mint_tokens(
    pem: bytes, issuer_url: str, audience: str, namespace: str, pods: int, count: int, progress: Callable[[str], None]
) -> list[str]:
    """One token per pod (at most `count`), minted in parallel: RSA signing is slow."""
    count = min(count, pods)
    step = max(1, math.ceil(count / 16))
    batches = [(pem, issuer_url, audience, namespace, pods, i, min(count, i + step)) for i in range(0, count, step)]
    tokens: list[str] = []
    with ProcessPoolExecutor() as pool:
        for batch in pool.map(_mint_batch, batches):
            tokens.extend(batch)
            progress(f"minted {len(tokens)}/{count} tokens")
    return tokens


def public_keys(count: int) -> list[str]:
    return [
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
        for _ in range(count)
    ]


async def run_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    rate: float,
    duration: float,
    connections: int = 256,
    ssl_context: ssl.SSLContext | None = None,
    progress: Callable[[str], None] | None = None,
) -> Report:
    """Sends bodies[i % len(bodies)] at `rate` per second for `duration` seconds, open loop."""
    duration = min(duration, MAX_DURATION)
    report = Report(rate, duration)
    total = int(rate * duration)
    connector = aiohttp.TCPConnector(limit=connections, ssl=ssl_context if ssl_context is not None else True)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        start = time.perf_counter()

        async def one(index: int) -> None:
            due = index / rate
            sent = time.perf_counter() - start
            status, reason = 0, "connection_error"
            try:
                async with session.post(url, data=bodies[index % len(bodies)], headers=headers) as response:
                    status = response.status
                    text = await response.read()
                    reason = "ok" if status == 200 else _reason(text)
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = type(exc).__name__
            report.outcomes.append(Outcome(due, time.perf_counter() - start - due, sent - due, status, reason))

        tasks: set[asyncio.Task[None]] = set()
        last_progress = 0.0
        for index in range(total):
            delay = start + index / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(one(index))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            now = time.perf_counter() - start
            if progress is not None and now - last_progress >= 1.0:
                last_progress = now
                done = len(report.outcomes)
                progress(f"{now:5.1f}s sent {index + 1}/{total} answered {done} in flight {len(tasks)}")
        if tasks:
            await asyncio.wait(tasks, timeout=35)
        report.elapsed = time.perf_counter() - start
    return report


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unparsed"


def plot(report: Report, path: str) -> None:
    """Latency over time and its histogram (needs matplotlib: pip install 'kubejoin[plot]')."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (over_time, histogram) = plt.subplots(1, 2, figsize=(12, 4))
    ok = [o for o in report.outcomes if o.status == 200]
    bad = [o for o in report.outcomes if o.status != 200]
    over_time.scatter([o.due for o in ok], [o.latency * 1000 for o in ok], s=2, label="200")
    if bad:
        over_time.scatter([o.due for o in bad], [o.latency * 1000 for o in bad], s=2, c="red", label="other")
    over_time.set(xlabel="seconds since start", ylabel="latency (ms)", title="Latency over time")
    over_time.legend()
    histogram.hist([o.latency * 1000 for o in report.outcomes], bins=100)
    histogram.set(xlabel="latency (ms)", ylabel="requests", title="Latency histogram", yscale="log")
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def print_summary(summary: dict[str, Any], out: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> None:
    lat = summary["latency_ms"]
    out(
        f"requests {summary['requests']} in {summary['duration_s']} s: {summary['achieved_rate']}/s "
        f"(target {summary['target_rate']}/s)"
    )
    out("latency ms  " + "  ".join(f"{k} {v}" for k, v in lat.items()))
    out("by status   " + "  ".join(f"{k}: {v}" for k, v in summary["by_status"].items()))
    out("by reason   " + "  ".join(f"{k}: {v}" for k, v in summary["by_reason"].items()))
    if summary["generator_bottleneck"]:
        out(
            f"WARNING: the generator sent requests late (p99 lag {summary['generator_lag_ms_p99']} ms): it, not the "
            "server, is the bottleneck; lower --rate or run more generators"
        )
