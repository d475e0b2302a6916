"""All metrics in one object with its own CollectorRegistry (no global state), so that two
services in one process, or one test after another, never share counters.

Label values are bounded by construction: `token` is a configured name of a kubernetes join
token (other join methods' names are secrets) or `unknown`,
`reason` one of the fixed REASON codes, `issuer` a configured issuer, `route` a registered route.
Never a service account, pod, kid, jti or caller address.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)

from .multiprocess import FoldedCollector
from .reported import BindingStats, CacheStats, Reported

# A join verifies a cached token in tens of microseconds and a fresh one with a certificate in a
# few milliseconds; the buckets resolve both ends.
JOIN_BUCKETS: Final = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
FETCH_BUCKETS: Final = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNKNOWN_TOKEN: Final = "unknown"


class Metrics:
    """Every metric kubejoin exports, on its own CollectorRegistry rather than the global one, so
    two services in one process (and one test after another) never share counters. Label values
    are bounded by construction and known series are created at 0, so dashboards and alerts see
    them before the first event.

    With `multiprocess_dir` (a worker of `kubejoin serve --workers N`, whose
    PROMETHEUS_MULTIPROC_DIR names the same directory), values live in prometheus_client's
    per-process files and `render` reports the sums over all workers: counters and histograms
    summed (a dead worker's counts stay), gauges each with the mode that keeps its meaning."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, process: bool = True, multiprocess_dir: str | None = None
    ) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._children: dict[tuple[Any, tuple[str, ...]], Any] = {}
        self._exposed = self.registry
        self._workers = multiprocess_dir is not None
        self._in_flight: Callable[[], int] | None = None
        r = self.registry
        self.join_attempts = Counter(
            "kubejoin_join_attempts",
            "Join attempts by join token, result and reason.",
            ["token", "result", "reason"],
            registry=r,
        )
        self.join_duration = Histogram(
            "kubejoin_join_duration_seconds",
            "Time to answer a join request.",
            ["result"],
            buckets=JOIN_BUCKETS,
            registry=r,
        )
        self.token_verifications = Counter(
            "kubejoin_token_verifications", "ServiceAccount token verifications.", ["result", "reason"], registry=r
        )
        self.jwks_fetches = Counter(
            "kubejoin_jwks_fetches", "Key set fetches by issuer and result.", ["issuer", "result"], registry=r
        )
        self.jwks_keys = Gauge(
            "kubejoin_jwks_keys",
            "Usable signing keys held per issuer.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.jwks_last_success = Gauge(
            "kubejoin_jwks_last_success_timestamp_seconds",
            "When the keys of an issuer were last fetched successfully.",
            ["issuer"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.certificates_issued = Counter(
            "kubejoin_certificates_issued", "Certificates issued by role.", ["role"], registry=r
        )
        self.http_requests = Counter(
            "kubejoin_http_requests",
            "HTTP requests by route, method and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "kubejoin_http_request_duration_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=JOIN_BUCKETS,
            registry=r,
        )
        self.join_tokens = Gauge("kubejoin_join_tokens", "Join tokens loaded.", registry=r, multiprocess_mode="livemax")
        self.config_reloads = Counter(
            "kubejoin_config_reloads", "Reloads of the join token file by result.", ["result"], registry=r
        )
        self.join_log_dropped = Counter(
            "kubejoin_join_log_dropped_lines",
            "Join log lines that could not be written (stdout stuck or closed).",
            registry=r,
        )
        self.tokens_reload_ok = Gauge(
            "kubejoin_join_tokens_last_reload_successful",
            "1 when the join tokens file as it is now is in force; 0 while an edit is refused.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.tokens_reload_ok.set(1)
        self.clusters = Gauge(
            "kubejoin_clusters", "Registered clusters in force.", registry=r, multiprocess_mode="livemax"
        )
        self.clusters_reload_ok = Gauge(
            "kubejoin_clusters_last_reload_successful",
            "1 when the clusters as configured now are in force; 0 while a change is refused.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.clusters_reload_ok.set(1)
        self.ca_expiry = Gauge(
            "kubejoin_ca_expiry_timestamp_seconds",
            "When kubejoin's CA certificate expires.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.joins_in_flight = Gauge(
            "kubejoin_joins_in_flight",
            "Join and TokenReview requests being served now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        # With workers: 1 while any worker serves joins (each worker is a whole replica).
        self.ready = Gauge(
            "kubejoin_ready",
            "1 while this replica serves joins (CA and join tokens loaded).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.token_reviews = Counter(
            "kubejoin_token_reviews",
            "TokenReview requests by result and reason (a REASON, or the caller's error).",
            ["result", "reason"],
            registry=r,
        )
        self.token_reviews.labels("success", "ok")
        self.stale_tokens = Counter(
            "kubejoin_stale_tokens",
            "Tokens accepted after their kubernetes.io.warnafter time: kubelet should have rotated them.",
            registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)
        self._reported = Reported(workers=self._workers)
        r.register(self._reported)
        if multiprocess_dir is not None:
            # A scrape reads every worker's files (a retired worker's counts folded into one).
            self._exposed = CollectorRegistry()
            self._exposed.register(FoldedCollector(multiprocess_dir))
        elif process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    def child(self, metric: Any, *values: str) -> Any:
        """The labelled child of a metric, looked up once: prometheus_client's labels() takes a
        lock and validates on every call, which costs more than the increment on the join path.
        Label values are bounded, so this map is too."""
        key = (metric, values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def watch_cache(self, read: Callable[[], CacheStats]) -> None:
        self._reported.watch_cache(read)

    def watch_binding(self, read: Callable[[], Mapping[str, BindingStats]]) -> None:
        """Reports the live bindings that `read` returns, by cluster name (`local`: the cluster
        kubejoin runs in). Called once."""
        self._reported.watch_binding(read)

    def watch_in_flight(self, read: Callable[[], int]) -> None:
        """Reports joins in flight from `read` (no gauge update on the join path)."""
        if self._workers:
            self._in_flight = read
        else:
            self.joins_in_flight.set_function(read)

    def publish(self) -> None:
        """With workers: copies this process's scrape-time values (joins in flight, cache and
        binding counts, resource use) into the shared files, for whichever worker answers the
        next scrape (the service calls it twice a second and before each scrape). One process
        reads them at the scrape itself."""
        if self._workers:
            if self._in_flight is not None:
                self.joins_in_flight.set(self._in_flight())
            self._reported.publish()

    def tokens_loaded(self, names: Iterable[str], count: int) -> None:
        """Creates the success series of each named token at 0, so rates and alerts work before
        any join; `count` tokens are loaded (the names of some are secrets, not labels)."""
        for name in names:
            self.join_attempts.labels(name, "success", "ok")
        self.join_tokens.set(count)

    def join_finished(self, token: str, reason: str, seconds: float) -> None:
        result = "success" if reason == "ok" else "failure"
        self.child(self.join_attempts, token, result, reason).inc()
        self.child(self.join_duration, result).observe(seconds)

    def token_verified(self, reason: str) -> None:
        self.child(self.token_verifications, "success" if reason == "ok" else "failure", reason).inc()

    def token_reviewed(self, reason: str) -> None:
        self.child(self.token_reviews, "success" if reason == "ok" else "failure", reason).inc()

    def certificate_issued(self, role: str) -> None:
        self.child(self.certificates_issued, role).inc()

    def http_request(self, route: str, method: str, status: str, seconds: float) -> None:
        self.child(self.http_requests, route, method, status).inc()
        self.child(self.http_duration, route).observe(seconds)

    def key_fetch(self, issuer: str, ok: bool, keys: int, when: float) -> None:
        self.jwks_fetches.labels(issuer, "success" if ok else "failure").inc()
        self.jwks_keys.labels(issuer).set(keys)
        if ok:
            self.jwks_last_success.labels(issuer).set(when)

    @property
    def exposed(self) -> CollectorRegistry:
        """The registry a scrape reads: this process's, or with workers the sums over all."""
        return self._exposed
