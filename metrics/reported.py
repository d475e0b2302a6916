"""Metrics whose values others keep: the verified-token caches and the live binding count in plain
integers (a join pays no metric call), and with workers each process's memory and CPU. Each is
declared once, here, for one process and for workers alike; `publish` brings them up to date from
their owners: at every scrape in one process, and twice a second into the shared files with
workers (where a scrape may be answered by another process)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

from prometheus_client import Counter, Gauge, ProcessCollector
from prometheus_client.core import Metric
from prometheus_client.registry import Collector


@dataclass(frozen=True)
class CacheStats:
    """Verified-token cache counts at one moment, read when Prometheus scrapes."""

    hits: int
    misses: int
    entries: int


class BindingStats(Protocol):
    """The live binding's state at one moment, per kind (pod, serviceaccount, node). Read by field
    name: the binding's own record (verifier.k8s.binding.BindingStats) fits this without either
    package importing the other, and mypy checks that it does."""

    @property
    def objects(self) -> Mapping[str, int]: ...

    @property
    def synced(self) -> Mapping[str, bool]: ...

    @property
    def lookups(self) -> Mapping[tuple[str, str], int]: ...  # (kind, result) -> count

    @property
    def restarts(self) -> Mapping[str, int]: ...


class _Binding:
    """The binding's metrics. With workers each worker runs its own binding: objects held is the
    largest, synced the smallest (1 only when every worker is), lookups and restarts the sums."""

    def __init__(self, read: Callable[[], Mapping[str, BindingStats]], *, forget: bool = True) -> None:
        self.read = read
        # Whether a removed cluster's series are removed: prometheus_client cannot remove series
        # from the shared files of workers (it warns), so with workers they stay until a restart.
        self._forgets = forget
        self.objects = Gauge(
            "kubejoin_binding_objects",
            "Objects held by the live binding cache, terminating ones included.",
            ["cluster", "kind"],
            registry=None,
            multiprocess_mode="livemax",
        )
        self.synced = Gauge(
            "kubejoin_binding_synced",
            "1 while the list completed and the watch runs, else 0.",
            ["cluster", "kind"],
            registry=None,
            multiprocess_mode="livemin",
        )
        self.lookups = Counter(
            "kubejoin_binding_lookups",
            "Binding lookups by kind and result.",
            ["cluster", "kind", "result"],
            registry=None,
        )
        self.restarts = Counter(
            "kubejoin_binding_watch_restarts",
            "Relists after a failed or expired (410) watch.",
            ["cluster", "kind"],
            registry=None,
        )
        self.published: dict[str, BindingStats] = {}

    def publish(self) -> None:
        published: dict[str, BindingStats] = {}
        for cluster, stats in self.read().items():
            last = self.published.get(cluster)
            for kind, count in stats.objects.items():
                self.objects.labels(cluster, kind).set(count)
                self.synced.labels(cluster, kind).set(1 if stats.synced.get(kind) else 0)
            for key, count in stats.lookups.items():
                self.lookups.labels(cluster, *key).inc(max(0, count - (last.lookups.get(key, 0) if last else 0)))
            for kind, count in stats.restarts.items():
                self.restarts.labels(cluster, kind).inc(max(0, count - (last.restarts.get(kind, 0) if last else 0)))
            published[cluster] = stats
        for cluster, gone in self.published.items():
            if cluster not in published and self._forgets:  # a cluster removed at run time: its series go
                self._forget(cluster, gone)
        self.published = published

    def _forget(self, cluster: str, stats: BindingStats) -> None:
        for kind in stats.objects:
            self.objects.remove(cluster, kind)
            self.synced.remove(cluster, kind)
        for key in stats.lookups:
            self.lookups.remove(cluster, *key)
        for kind in stats.restarts:
            self.restarts.remove(cluster, kind)

    def metrics(self) -> tuple[Collector, ...]:
        return self.objects, self.synced, self.lookups, self.restarts


class _Resources:
    """A worker's resident memory and CPU time, for the sums over the workers (one process has
    prometheus_client's ProcessCollector instead)."""

    def __init__(self) -> None:
        self.memory = Gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes, summed over the workers.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.cpu = Counter("process_cpu_seconds", "User and system CPU time in seconds, all workers.", registry=None)
        self._own = ProcessCollector(registry=None)
        self._cpu_published = 0.0

    def publish(self) -> None:
        for family in self._own.collect():
            if family.name == "process_resident_memory_bytes" and family.samples:
                self.memory.set(family.samples[0].value)
            elif family.name == "process_cpu_seconds" and family.samples:
                cpu = family.samples[0].value
                self.cpu.inc(max(0.0, cpu - self._cpu_published))
                self._cpu_published = cpu


class Reported(Collector):
    """The metrics read from their owners, as one collector: collecting it publishes first, so a
    scrape of one process reads current values; with workers `publish` runs on a timer too."""

    def __init__(self, *, workers: bool) -> None:
        self._cache: Callable[[], CacheStats] | None = None
        self._cache_published = CacheStats(0, 0, 0)
        self.cache_requests = Counter(
            "kubejoin_verified_token_cache_requests",
            "Verified-token cache lookups by result.",
            ["result"],
            registry=None,
        )
        self.cache_entries = Gauge(
            "kubejoin_verified_token_cache_entries",
            "Tokens held in the verified-token cache.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self._binding: _Binding | None = None
        self._resources = _Resources() if workers else None

    def watch_cache(self, read: Callable[[], CacheStats]) -> None:
        self._cache = read

    def watch_binding(self, read: Callable[[], Mapping[str, BindingStats]]) -> None:
        self._binding = _Binding(read, forget=self._resources is None)

    def publish(self) -> None:
        if self._cache is not None:
            stats, last = self._cache(), self._cache_published
            # Retired key sources keep their counts, so these never go backwards.
            self.cache_requests.labels("hit").inc(max(0, stats.hits - last.hits))
            self.cache_requests.labels("miss").inc(max(0, stats.misses - last.misses))
            self.cache_entries.set(stats.entries)
            self._cache_published = stats
        if self._binding is not None:
            self._binding.publish()
        if self._resources is not None:
            self._resources.publish()

    def collect(self) -> Iterator[Metric]:
        self.publish()
        watched: list[Collector] = [self.cache_requests, self.cache_entries] if self._cache is not None else []
        if self._binding is not None:
            watched.extend(self._binding.metrics())
        for metric in watched:
            yield from metric.collect()
