"""The HTTP service: `POST /v1/join`, the TokenReview API (when configured), `/healthz`, `/readyz`,
`/metrics`.

`create_app` builds everything from the config; nothing lives at module level. The key sources'
refreshers and the join token watcher start and stop with the application (cleanup_ctx).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import hashlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, NamedTuple, TextIO

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.aiohttp import make_aiohttp_handler

from metrics import Metrics
from verifier.k8s.binding import BindingStats as LiveBindingStats
from verifier.k8s.binding import LiveBinding
from verifier.texts import cut

from .admission import Admission
from .auditlog import AuditLog
from .body import parse_body
from .ca import CertificateAuthority
from .clusterobjects import ClusterObjects
from .clusterreview import CLUSTER_REVIEWS, ClusterReviews, handle_cluster_review
from .clusterreview import PREFIX as CLUSTER_PREFIX
from .clusterreview import ROUTE as CLUSTER_ROUTE
from .clusterreview import ROUTE_LABEL as CLUSTER_ROUTE_LABEL
from .config import Config
from .errors import STATUS, JoinError, JoinReason, error_body
from .files import ConfigError, read_text_file
from .join import JoinService
from .keyring import Keyring, kube_api
from .pipeline import INTERNAL, MAX_BODY, Pipeline, retry_after
from .registry import ClusterRegistry
from .tokenreview import REVIEW_PATHS, REVIEWER, ROUTE, ROUTE_LABEL, TokenReviewer, handle_token_review, kube_status
from .tokens import JoinToken, parse_tokens, public_names

log = logging.getLogger("kubejoin.server")
CA_WARNING: Final = 30 * 86400.0  # warn this long before the CA expires
_METHODS: Final = frozenset({"GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"})


class Reload(enum.Enum):
    """What a reload of the join tokens file did."""

    CHANGED = "changed"  # new tokens are in force
    UNCHANGED = "unchanged"  # the file says what was applied (or refused) last
    REFUSED = "refused"  # a broken edit: the last good tokens stay in force


class _Read(NamedTuple):
    digest: str
    tokens: dict[str, JoinToken]


class TokenStore:
    """The join tokens in force. The file is re-read off the event loop and applied when its
    content changed (a hash, not mtime and size: an edit within one second of the same size
    counts). A broken edit, or one that leaves no tokens (a truncating rewrite caught halfway),
    is refused and the last good tokens stay in force."""

    def __init__(self, path: str, *, validate: Callable[[dict[str, JoinToken], str], None] | None = None) -> None:
        self.path = path
        # beyond the file itself: what the service must have for the tokens' rules (a binding)
        self._validate = validate or (lambda tokens, source: None)
        text = read_text_file(path)
        self.tokens: dict[str, JoinToken] = parse_tokens(text, path)
        self._validate(self.tokens, path)
        self._applied = self._seen = _digest(text)
        self.last_error = ""

    def _read_new(self) -> _Read | None:
        """Runs in a thread: the digest and tokens if the content changed and parses; None if it
        is what was applied or refused last. Raises ConfigError."""
        try:
            text = read_text_file(self.path)
        except ConfigError:
            if self._seen == "unreadable":
                return None
            self._seen = "unreadable"
            raise
        digest = _digest(text)
        if digest in (self._applied, self._seen):
            self._seen = digest
            return None
        self._seen = digest
        tokens = parse_tokens(text, self.path)
        self._validate(tokens, self.path)
        if not tokens:
            raise ConfigError(f"{self.path}: no join tokens; a reload that leaves none is refused")
        return _Read(digest, tokens)

    async def read_new(self) -> dict[str, JoinToken] | None:
        """The file's tokens if they changed and are good; None if unchanged. Raises ConfigError."""
        found = await asyncio.to_thread(self._read_new)
        if found is None:
            if self._seen == self._applied:
                self.last_error = ""  # a broken edit was undone
            return None
        self._applied = found.digest
        return found.tokens


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Service:
    """Everything one running kubejoin holds: config, metrics, join tokens, CA, keyring and the
    join service, plus the in-flight count that overload refusals and graceful shutdown read.
    Built by create_app and stored under an AppKey: no module-level state."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
        audit: TextIO | None = None,
        worker: int | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.binding: LiveBinding | None = None
        if config.binding.mode == "watch" and config.in_cluster is not None:
            self.binding = LiveBinding(
                kube_api(config.in_cluster),
                leeway=config.verification.leeway,
                nodes=config.binding.nodes,
                clock=clock,
                watch_idle_timeout=config.binding.watch_idle_timeout,
            )
        self.clusters = ClusterRegistry(config, metrics, clock=clock)
        # Allow rules that read the cluster's objects are judged by these bindings' watch caches:
        # a tokens file whose rules no binding can answer is refused, at start as at a reload.
        self.objects = ClusterObjects(config, self.binding, self.clusters)
        self.tokens = TokenStore(config.tokens_file, validate=self.objects.check_tokens)
        if config.token_review is not None:
            self.objects.check_reviewers(config.token_review.reviewers, config.token_review.source)
        self._want_labels()
        # A supervised worker only loads the CA its supervisor made: one whose files went missing
        # must not start with a CA of its own while the other workers sign with the first.
        ca_of = CertificateAuthority.load if worker is not None else CertificateAuthority.load_or_create
        self.ca = ca_of(
            config.ca_cert_file,
            config.ca_key_file,
            config.cluster_name,
            datetime.datetime.fromtimestamp(clock(), datetime.UTC),
        )
        self._clock = clock
        self._ca_warned = -math.inf
        metrics.ca_expiry.set(self.ca.not_after.timestamp())
        self.check_ca()
        self.worker = worker  # with `serve --workers N`: this worker's slot
        self.audit = AuditLog(
            audit,
            clock=clock,
            worker=worker,
            on_drop=metrics.join_log_dropped.inc,
            sync_timeout=config.limits.request_timeout,
        )
        if self.binding is not None or self.clusters.enabled:
            metrics.watch_binding(self._binding_stats)
        self.keyring = Keyring(
            config,
            metrics,
            clock=clock,
            binding=self.binding,
            # with no cluster registered or to be registered, verifiers stay as they were
            follows=self.clusters.binding.chained if self.clusters.enabled else None,
        )
        self.join = JoinService(
            cluster_name=config.cluster_name,
            ca=self.ca,
            keyring=self.keyring,
            tokens=lambda: self.tokens.tokens,
            metrics=metrics,
            audit=self.audit,
            certificate_ttl=config.certificate_ttl,
            clock=clock,
            clusters=self.clusters,
            objects=self.objects,
        )
        self.admission = Admission(
            max_in_flight=config.limits.max_in_flight,
            max_pending_per_address=config.limits.max_pending_per_address,
        )
        # joins and reviews share it: both bounds, and the drain at SIGTERM, count them together
        self.pipeline = Pipeline(self.admission, request_timeout=config.limits.request_timeout)
        self.ready = False
        self.draining = False
        self._reloading = asyncio.Lock()
        metrics.tokens_loaded(public_names(self.tokens.tokens), len(self.tokens.tokens))
        self.reviewer: TokenReviewer | None = None
        if config.token_review is not None:
            self.reviewer = TokenReviewer(
                config.token_review,
                keyring=self.keyring,
                metrics=metrics,
                pipeline=self.pipeline,
                audit=self.audit,
                clock=clock,
                objects=self.objects,
            )

    def _want_labels(self) -> None:
        reviewers = self.config.token_review.reviewers if self.config.token_review is not None else None
        self.objects.want(self.tokens.tokens, reviewers or ())

    def _binding_stats(self) -> dict[str, LiveBindingStats]:
        """The live bindings by cluster, for the metrics: `local` and each registered cluster's.
        The metrics read the records by field name (metrics.BindingStats is a protocol)."""
        found = {"local": self.binding.stats()} if self.binding is not None else {}
        for name, cluster in self.clusters.clusters.items():
            if cluster.binding is not None:
                found[name] = cluster.binding.stats()
        return found

    def check_ca(self) -> None:
        """Warns (at most daily) while the CA expires within CA_WARNING: leaves are then cut
        short at the CA's expiry, and after it kubejoin will not start."""
        now = self._clock()
        left = self.ca.not_after.timestamp() - now
        if left < CA_WARNING and now - self._ca_warned >= 86400:
            self._ca_warned = now
            log.warning(
                "the CA expires in %.1f days (%s): certificates end then; replace ca.cert_file and ca.key_file",
                left / 86400,
                self.ca.not_after.isoformat(),
            )

    async def reload(self) -> None:
        """SIGHUP: re-reads the join tokens and the clusters."""
        await self.reload_tokens()
        await self.clusters.reload()

    async def reload_tokens(self) -> Reload:
        """Applies a changed token file."""
        async with self._reloading:  # the watcher and SIGHUP may ask at the same moment
            return await self._reload_tokens()

    async def _reload_tokens(self) -> Reload:
        try:
            tokens = await self.tokens.read_new()
        except ConfigError as exc:
            # /readyz shows it: its answer must not grow with the file (a value quoted from it)
            self.tokens.last_error = cut(str(exc), 1000)
            log.error("join tokens not reloaded, the last good ones stay in force: %s", self.tokens.last_error)
            self.metrics.config_reloads.labels("failure").inc()
            self.metrics.tokens_reload_ok.set(0)
            return Reload.REFUSED
        if tokens is None:
            if not self.tokens.last_error:
                self.metrics.tokens_reload_ok.set(1)
            return Reload.UNCHANGED
        retired = self.keyring.update(tokens)
        self.tokens.tokens = tokens
        self._want_labels()
        self.tokens.last_error = ""
        shown = public_names(tokens)
        self.metrics.tokens_loaded(shown, len(tokens))
        self.metrics.config_reloads.labels("success").inc()
        self.metrics.tokens_reload_ok.set(1)
        hidden = len(tokens) - len(shown)
        others = f" and {hidden} of other join methods (names not shown)" if hidden else ""
        log.info("join tokens reloaded: %s%s", ", ".join(shown) or "none", others)
        for source in retired:
            await source.close()
        return Reload.CHANGED


SERVICE: Final = web.AppKey("service", Service)


# Built once: json.dumps with options builds a new encoder on every call.
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"))
JOIN_ROUTE: Final = "/v1/join"


def _error(error: JoinError) -> web.Response:
    body = _COMPACT_JSON.encode(error_body(error.code, error.message)).encode()
    return web.Response(
        body=body, status=STATUS[error.code], headers=retry_after(error.code), content_type="application/json"
    )


class _Join:
    """One join request in the pipeline (pipeline.Exchange)."""

    __slots__ = ("_request", "_service")

    def __init__(self, service: Service, request: web.Request) -> None:
        self._service = service
        self._request = request

    async def admit(self) -> web.Response | None:
        request = self._request
        # The exact header most clients send, without parsing it; anything else parsed to be sure.
        if request.headers.get("Content-Type") != "application/json" and request.content_type != "application/json":
            return self.refuse(JoinError(JoinReason.UNSUPPORTED_MEDIA_TYPE, "Content-Type must be application/json"))
        return None

    async def answer(self, body: bytes) -> web.Response:
        try:
            parsed = parse_body(body)
        except JoinError as exc:
            return self.refuse(exc)
        try:
            return web.json_response(await self._service.join.join(parsed, self._request.remote))
        except JoinError as exc:  # counted and logged by the join service, as is what follows
            return _error(exc)
        except Exception:
            log.exception("join failed unexpectedly")
            return _error(JoinError(JoinReason.INTERNAL_ERROR, INTERNAL))

    def refuse(self, error: JoinError) -> web.Response:
        """A refusal before the join service saw the body: counted and logged as a join attempt."""
        return _error(self._service.join.refuse(error.code, error.message, self._request.remote))


async def handle_join(request: web.Request) -> web.Response:
    """POST /v1/join. Counts its own HTTP metrics: a middleware costs more per request than a
    refusal of junk should cost in all."""
    started = time.perf_counter()
    service = request.app[SERVICE]
    response = await service.pipeline.run(request, _Join(service, request))
    service.metrics.http_request(JOIN_ROUTE, "POST", str(response.status), time.perf_counter() - started)
    return response


async def handle_healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def handle_readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE]
    if not service.ready:
        reason = "draining" if service.draining else "starting"
        return web.json_response({"status": "not ready", "reason": reason}, status=503)
    body: dict[str, object] = {"status": "ready", "join_tokens": len(service.tokens.tokens)}
    if service.worker is not None:  # which of the workers answered
        body["worker"], body["workers"] = service.worker, service.config.workers
    if service.tokens.last_error:
        body["last_reload_error"] = service.tokens.last_error
    if service.config.clusters or service.config.clusters_dir or service.clusters.clusters:
        body["clusters"] = len(service.clusters.clusters)
    if service.clusters.last_error:  # the last good set of clusters is in force
        body["clusters_last_reload_error"] = service.clusters.last_error
    return web.json_response(body)


def metrics_handler(metrics: Metrics) -> Handler:
    """prometheus_client's own handler: it picks OpenMetrics or text 0.0.4 from Accept with the
    library's encoder choice, and gzips when the scraper sends Accept-Encoding (Prometheus does).
    With workers, this worker publishes its scrape-time statistics first, so the sums are current."""
    scrape = make_aiohttp_handler(metrics.exposed)

    async def handle_metrics(request: web.Request) -> web.StreamResponse:
        metrics.publish()
        return await scrape(request)

    return handle_metrics


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _observed(metrics: Metrics, route: str, handler: Handler) -> Handler:
    """The handler of `route`, counted in the HTTP metrics (the join route counts itself)."""

    async def observed(request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            method = request.method if request.method in _METHODS else "other"
            metrics.http_request(route, method, str(status), time.perf_counter() - started)

    return observed


KUBE_API_PATHS: Final = "/apis/"
_KUBE_MESSAGES: Final = {  # kube-apiserver's own words
    404: "the server could not find the requested resource",
    405: "the server does not allow this method on the requested resource",
}


def _unmatched(metrics: Metrics, allowed: dict[str, str]) -> Handler:
    """Every request no route takes: 405 for a known path (with Allow), else 404; counted. Under
    /apis/ (the Kubernetes API's paths) as a Kubernetes Status, as kube-apiserver answers there:
    a client of the TokenReview API reads that, not text."""

    async def handle_unmatched(request: web.Request) -> web.StreamResponse:
        methods = allowed.get(request.path)
        status = 405 if methods else 404
        method = request.method if request.method in _METHODS else "other"
        metrics.http_request("unmatched", method, str(status), 0.0)
        if request.path.startswith((KUBE_API_PATHS, CLUSTER_PREFIX)):
            return kube_status(status, _KUBE_MESSAGES[status], {"Allow": methods} if methods else None)
        if methods:
            raise web.HTTPMethodNotAllowed(request.method, methods.split(","))
        raise web.HTTPNotFound()

    return handle_unmatched


async def _housekeeping(service: Service, interval: float) -> None:
    """Re-reads a changed token file, writes the join log's summaries, publishes this worker's
    scrape-time statistics for the others' /metrics, and warns of the CA's coming expiry."""
    while True:
        await asyncio.sleep(interval)
        service.audit.flush()
        service.metrics.publish()
        service.check_ca()
        try:
            await service.reload_tokens()
            await service.clusters.reload()  # by content, as the tokens file
        except Exception:  # the watcher must outlive any one bad reload
            log.exception("token reload failed")


async def _close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
    """While draining at SIGTERM, every answer says Connection: close, so a keep-alive client
    sends its next request to another replica instead of into a connection about to close (where
    a join could be processed and its answer lost)."""
    if request.app[SERVICE].draining:
        response.force_close()  # the connection closes after this answer
        response.headers["Connection"] = "close"  # headers are prepared before this hook runs


def create_app(
    config: Config,
    *,
    registry: CollectorRegistry | None = None,
    clock: Callable[[], float] = time.time,
    audit: TextIO | None = None,
    reload_interval: float = 0.5,
    multiprocess_dir: str | None = None,
    worker: int | None = None,
) -> web.Application:
    """Builds the service. Raises ConfigError when the CA or the join tokens cannot be loaded.
    `worker`: this is worker number `worker` of several, sharing metrics through `multiprocess_dir`."""
    metrics = Metrics(registry, multiprocess_dir=multiprocess_dir)
    service = Service(config, metrics, clock, audit, worker)
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE] = service
    app.on_response_prepare.append(_close_while_draining)
    app.router.add_post(JOIN_ROUTE, handle_join)
    allowed = {JOIN_ROUTE: "POST"}
    if service.reviewer is not None:
        app[REVIEWER] = service.reviewer
        app.router.add_post(ROUTE, _observed(metrics, ROUTE_LABEL, handle_token_review))
        allowed.update(dict.fromkeys(REVIEW_PATHS, "POST"))
        app[CLUSTER_REVIEWS] = ClusterReviews(
            config,
            service.clusters,
            metrics=metrics,
            pipeline=service.pipeline,
            audit=service.audit,
            clock=clock,
            objects=service.objects,
        )
        app.router.add_post(CLUSTER_ROUTE, _observed(metrics, CLUSTER_ROUTE_LABEL, handle_cluster_review))
    gets: dict[str, Handler] = {"/healthz": handle_healthz, "/readyz": handle_readyz}
    if config.metrics_listen is None:
        gets["/metrics"] = metrics_handler(metrics)
    for path, handler in gets.items():
        app.router.add_get(path, _observed(metrics, path, handler))
        allowed[path] = "GET,HEAD"
    app.router.add_route("*", "/{tail:.*}", _unmatched(metrics, allowed))
    metrics.watch_in_flight(lambda: service.admission.active)  # bodies still arriving included

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if service.binding is not None:
            service.binding.start()
        service.clusters.start()
        service.keyring.update(service.tokens.tokens)
        if service.reviewer is not None:
            service.reviewer.start()
        watcher = asyncio.ensure_future(_housekeeping(service, reload_interval))
        service.ready = True
        metrics.ready.set(1)
        yield
        service.ready = False
        metrics.ready.set(0)
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        service.audit.flush(final=True)
        await service.keyring.close()
        await service.clusters.close()
        if service.binding is not None:
            await service.binding.close()

    app.cleanup_ctx.append(lifecycle)
    return app


def create_metrics_app(app: web.Application) -> web.Application:
    """A separate application serving only /metrics, for `metrics_listen`."""
    metrics_app = web.Application()
    metrics_app.router.add_get("/metrics", metrics_handler(app[SERVICE].metrics))
    return metrics_app
