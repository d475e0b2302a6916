"""`kubejoin loadtest`: an open-loop load generator for a running kubejoin.

Requests leave at a fixed arrival rate whether or not earlier ones have finished, and each
latency is measured from the moment its request was due, not from when it was sent: a slow
server cannot hide its queueing by slowing the generator down (coordinated omission).

The generator keeps its own schedule: during a run its garbage collector makes no full
collections (a gen-2 pause of the client would show as the server's tail), and the summary says
how late requests left (generator lag, p99.9 included), so a user can tell the server's tail from
the client's.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .issuer import IssuerKey, LocalIssuer

MAX_DURATION = 3600.0
LAG_WARNING = 0.005  # requests sent this late mean the generator, not the server, is the limit


class Outcome(NamedTuple):
    """One request of a load test, timed from when it was due (open loop), so that a slow server
    shows as latency instead of silently lowering the request rate. (A tuple: one object per
    request, where a dataclass instance and its __dict__ were two for the collector.)"""

    due: float  # seconds since start when the request was due
    latency: float  # from due to answer
    lag: float  # from due to sent
    status: int  # 0 when no HTTP answer arrived
    reason: str


@dataclass
class CollectorPauses:
    """The garbage collector's pauses in this process, by generation: a gc.callbacks entry (the
    load generator's own during a run; bench/gcpause.py's)."""

    collections: list[int] = field(default_factory=lambda: [0, 0, 0])
    longest: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # seconds
    _started: float = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:  # a gc.callbacks entry
        if phase == "start":
            self._started = time.perf_counter()
            return
        generation = info["generation"]
        self.collections[generation] += 1
        self.longest[generation] = max(self.longest[generation], time.perf_counter() - self._started)


PERCENTILES: Final = (("p50", 50), ("p90", 90), ("p99", 99), ("p99.9", 99.9), ("max", 100))


@dataclass
class Report:
    """All outcomes of one load test run and the summary (rate achieved, latency percentiles,
    statuses and reasons, how late the generator was) that `kubejoin loadtest` prints."""

    rate: float
    duration: float
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0
    pauses: CollectorPauses = field(default_factory=CollectorPauses)
    # counted as answers arrive, for the progress line
    joined: int = 0  # 200
    refused: int = 0  # another HTTP answer
    failed: int = 0  # no HTTP answer (connection error, timeout)

    def percentile(self, values: Sequence[float], q: float) -> float:
        if not values:
            return math.nan
        ordered = sorted(values)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]

    def _percentiles_ms(self, values: Sequence[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {name: round(self.percentile(ordered, q) * 1000, 3) for name, q in PERCENTILES}

    def summary(self) -> dict[str, Any]:
        lags = self._percentiles_ms([o.lag for o in self.outcomes])
        return {
            "target_rate": self.rate,
            "achieved_rate": round(len(self.outcomes) / self.elapsed, 1) if self.elapsed else 0.0,
            "requests": len(self.outcomes),
            "duration_s": round(self.elapsed, 3),
            "latency_ms": self._percentiles_ms([o.latency for o in self.outcomes]),
            "by_status": dict(sorted(Counter(str(o.status) for o in self.outcomes).items())),
            "by_reason": dict(sorted(Counter(o.reason for o in self.outcomes).items())),
            # how late requests left the generator: its own tail, not the server's
            "generator_lag_ms": lags,
            "generator_lag_ms_p99": lags["p99"],
            "generator_bottleneck": lags["p99"] > LAG_WARNING * 1000,
            "client_gc": {
                "collections": list(self.pauses.collections),
                "longest_ms": [round(seconds * 1000, 3) for seconds in self.pauses.longest],
            },
        }

    def progress_line(self, now: float, sent: int, total: int, in_flight: int) -> str:
        return (
            f"{now:5.1f}s sent {sent}/{total} joined {self.joined} refused {self.refused} "
            f"failed {self.failed} in flight {in_flight}"
        )


@contextlib.contextmanager
def own_schedule(pauses: CollectorPauses) -> Iterator[None]:
    """No full collection of the generator's while requests are timed: everything alive before
    the run (tokens, bodies, the session) is frozen out of the collector's way, and the gen-2
    threshold is raised out of reach, so only the young generations (small, and cheap to walk)
    are collected. Objects that survive them wait for the collection after the run. `pauses`
    records every collection made meanwhile."""
    thresholds = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(thresholds[0], thresholds[1], 2**31 - 1)
    gc.callbacks.append(pauses)
    try:
        yield
    finally:
        gc.callbacks.remove(pauses)
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        gc.collect()


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
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        with own_schedule(report.pauses):
            await _send_all(session, url, bodies, report, total, progress)
    return report


async def _send_all(
    session: aiohttp.ClientSession,
    url: str,
    bodies: Sequence[bytes],
    report: Report,
    total: int,
    progress: Callable[[str], None] | None,
) -> None:
    rate = report.rate
    headers = {"Content-Type": "application/json"}
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
        if status == 200:
            report.joined += 1
        elif status:
            report.refused += 1
        else:
            report.failed += 1

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
            progress(report.progress_line(now, index + 1, total, len(tasks)))
    if tasks:
        await asyncio.wait(tasks, timeout=35)
    report.elapsed = time.perf_counter() - start


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
    lag = summary["generator_lag_ms"]
    gc_longest = summary["client_gc"]["longest_ms"]
    out(
        "generator   sent late by ms  "
        + "  ".join(f"{k} {v}" for k, v in lag.items())
        + f"; its longest collector pause {max(gc_longest)} ms (gen-2: {summary['client_gc']['collections'][2]})"
    )
    if summary["generator_bottleneck"]:
        out(
            f"WARNING: the generator sent requests late (p99 lag {summary['generator_lag_ms_p99']} ms): it, not the "
            "server, is the bottleneck; lower --rate or run more generators"
        )
