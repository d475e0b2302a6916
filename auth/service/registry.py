"""The registered clusters at run time: per cluster its key source and, with `binding.mode:
watch`, its live binding; applied as a whole set, replaced without a restart.

Apply keeps a cluster whose fingerprint did not change (its keys, verified-token caches and watch
cache stay warm), starts the added and changed ones and closes the removed and replaced ones. A
set that does not load is refused whole and the last good set stays (`/readyz` and
`kubejoin_clusters_last_reload_successful` say so)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from metrics import Metrics
from verifier import Identity, OIDCKeySource, StaticKeySource, Verifier, VerifyingKey, parse_jwks
from verifier.binding import BindingCheck
from verifier.k8s.api import KubeAPI, KubeKeySource
from verifier.k8s.binding import LiveBinding
from verifier.labels import NO_LABELS, WantedKeys
from verifier.sources import KeySource, RemoteKeySource
from verifier.texts import cut

from .clusters import ClusterSpec, Reads, load_clusters, unchanged
from .config import Config
from .files import ConfigError
from .tokens import KubernetesRules

log = logging.getLogger("kubejoin.clusters")
MAX_VERIFIERS: Final = 32  # per cluster: one per audience set that reviews name (see keyring)


class PinnedIssuer:
    """A key source whose issuer is the registered one: the API server's discovery may name
    another, and a cluster's tokens are those whose `iss` is exactly what was registered."""

    def __init__(self, inner: RemoteKeySource, issuer: str) -> None:
        self.inner = inner
        self._issuer = issuer

    @property
    def label(self) -> str:
        return self._issuer

    @property
    def issuer(self) -> str:
        return self._issuer

    def cached_key(self, kid: str) -> VerifyingKey | None:
        return self.inner.cached_key(kid)

    async def get_key(self, kid: str) -> VerifyingKey:
        return await self.inner.get_key(kid)


class Cluster:
    """One registered cluster, running: its key source, its binding (with watch) and the
    verifiers over them. Serves the TokenReviewer's `Verifiers` interface for /clusters/NAME."""

    def __init__(
        self,
        spec: ClusterSpec,
        *,
        config: Config,
        metrics: Metrics,
        clock: Callable[[], float],
        wanted: WantedKeys = NO_LABELS,
    ) -> None:
        self.spec = spec
        self._config = config
        self._clock = clock
        self._verifiers: dict[tuple[Any, ...], Verifier] = {}
        self._kept: set[tuple[Any, ...]] = set()  # never evicted: joins' and reviews' defaults
        self.follows: BindingCheck | None = None  # the registry's issuer binding, set by it
        policy: dict[str, Any] = {"clock": clock, "observer": metrics.key_fetch}
        # One API client per cluster (its connection pool and TLS context), for keys and watches.
        api = KubeAPI(kubeconfig=spec.kubeconfig) if spec.kubeconfig is not None else None
        self._remote: RemoteKeySource | None = None
        self.source: KeySource
        if spec.keys == "static_jwks":
            assert spec.jwks is not None
            static = StaticKeySource(parse_jwks(spec.jwks), label=spec.issuer, issuer=spec.issuer)
            metrics.key_fetch(static.label, True, static.key_count, clock())
            self.source = static
        elif spec.keys == "oidc":
            self.source = self._remote = OIDCKeySource(
                spec.issuer, allow_http=spec.insecure_allow_http_issuer, **policy
            )
        else:
            assert api is not None  # the config requires a kubeconfig with keys api_server
            self._remote = KubeKeySource(api, **policy)
            self.source = PinnedIssuer(self._remote, spec.issuer)
        self.binding: LiveBinding | None = None
        if spec.watch:
            assert api is not None  # and with binding watch
            self.binding = LiveBinding(
                api,
                leeway=config.verification.leeway,
                nodes=spec.nodes,
                clock=clock,
                # the config's binding.watch_idle_timeout holds for every cluster's watches
                watch_idle_timeout=config.binding.watch_idle_timeout,
                wanted=wanted,
            )

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        if self._remote is not None:
            self._remote.start()
        if self.binding is not None:
            self.binding.start()

    async def close(self) -> None:
        self._verifiers.clear()
        if self._remote is not None:
            await self._remote.close()
        if self.binding is not None:
            await self.binding.close()

    def verifier(
        self,
        rules: KubernetesRules | None = None,
        *,
        name: str = "",
        audiences: Iterable[str],
        max_ttl: float,
        keep: bool = False,
        bound: bool = True,
    ) -> Verifier:
        """A verifier of this cluster's tokens for these audiences (the Keyring's signature, so a
        TokenReviewer can use a cluster as its keyring). `bound=False`: without the binding;
        `keep`: never pushed out by the audience sets that callers name."""
        wanted = frozenset(audiences)
        key = (wanted, max_ttl, bound)
        verifier = self._verifiers.get(key)
        if verifier is None:
            evictable = [k for k in self._verifiers if k not in self._kept]
            if len(self._verifiers) >= MAX_VERIFIERS and evictable:
                del self._verifiers[evictable[0]]  # the oldest one that no caller asked to keep
            if keep:
                self._kept.add(key)
            verifier = self._verifiers[key] = Verifier(
                self.source,
                wanted,
                leeway=self._config.verification.leeway,
                max_ttl=max_ttl,
                clock=self._clock,
                binding=self.follows if bound else None,
            )
        return verifier

    def binding_for(self, rules: KubernetesRules | None = None, name: str = "") -> BindingCheck | None:
        return self.follows

    def join_verifier(self) -> Verifier:
        """The verifier of join tokens naming this cluster: kubejoin's audience, its lifetime cap."""
        config = self._config
        return self.verifier(audiences=(config.cluster_name,), max_ttl=config.verification.max_token_ttl, keep=True)


class IssuerBinding:
    """The binding follows the token: a verified token whose `iss` is a registered cluster with
    binding watch must pass that cluster's binding, whichever source verified it. Other tokens
    pass: this check can only refuse."""

    def __init__(self, first: BindingCheck | None = None) -> None:
        self.first = first  # the in_cluster binding, for the in_cluster source's verifiers
        self.by_issuer: dict[str, LiveBinding] = {}

    def check_cached(self, identity: Identity) -> bool:
        if self.first is not None and not self.first.check_cached(identity):
            return False
        binding = self.by_issuer.get(identity.issuer)
        return binding is None or binding.check_cached(identity)

    async def check(self, identity: Identity) -> None:
        if self.first is not None:
            await self.first.check(identity)
        binding = self.by_issuer.get(identity.issuer)
        if binding is not None:
            await binding.check(identity)

    def chained(self, first: BindingCheck | None) -> BindingCheck:
        """This check after `first` (sharing the issuer table)."""
        if first is None:
            return self
        chain = IssuerBinding(first)
        chain.by_issuer = self.by_issuer
        return chain


class ClusterRegistry:
    """The set of registered clusters in force. `reload` re-reads the config file's clusters
    (off the event loop) and applies them when they changed; `apply` must run in the loop."""

    def __init__(self, config: Config, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self.clusters: dict[str, Cluster] = {}
        self.generation = 0  # counts applied sets: holders of per-cluster objects re-check on a change
        self.binding = IssuerBinding()
        self.last_error = ""
        self._pending: tuple[ClusterSpec, ...] = config.clusters
        self._reads: Reads = {}  # what the last good read of the files depended on
        self._lock = asyncio.Lock()
        self.wanted = WantedKeys()  # the label keys allow rules read: a cluster added later keeps them too

    @property
    def enabled(self) -> bool:
        """Whether clusters were configured at start (a list or a directory, maybe empty). Only
        then do the other sources' verifiers carry the clusters' bindings, so only then may a
        reload register clusters: a cluster whose binding some verifier skipped would be a hole."""
        return bool(self._config.clusters) or self._config.clusters_dir is not None

    @property
    def specs(self) -> Mapping[str, ClusterSpec]:
        """The clusters in force by name; before start, those the config registers."""
        if self.generation:
            return {name: cluster.spec for name, cluster in self.clusters.items()}
        return {spec.name: spec for spec in self._pending}

    def get(self, name: str) -> Cluster | None:
        return self.clusters.get(name)

    def cluster_of(self, issuer: str) -> str | None:
        """The name of the registered cluster whose tokens carry this `iss`."""
        for cluster in self.clusters.values():
            if cluster.spec.issuer == issuer:
                return cluster.name
        return None

    def start(self) -> None:
        """Applies the config's clusters at start (in the event loop)."""
        retired = self.apply(self._pending)
        assert not retired, "nothing runs before start, so nothing is retired"
        self._ok()

    def apply(self, specs: Iterable[ClusterSpec]) -> list[Cluster]:
        """Makes `specs` the set in force; returns the clusters to close (removed or replaced)."""
        wanted = {spec.name: spec for spec in specs}
        retired = [c for name, c in self.clusters.items() if wanted.get(name) != c.spec]
        kept = {name: c for name, c in self.clusters.items() if wanted.get(name) == c.spec}
        for name, spec in wanted.items():
            if name not in kept:
                cluster = Cluster(
                    spec, config=self._config, metrics=self._metrics, clock=self._clock, wanted=self.wanted
                )
                cluster.follows = self.binding
                cluster.start()
                kept[name] = cluster
        self.clusters = {name: kept[name] for name in wanted}
        self.generation += 1
        # Replaced in place: verifiers hold this object, so they see the new table at once.
        self.binding.by_issuer.clear()
        self.binding.by_issuer.update(
            {c.spec.issuer: c.binding for c in self.clusters.values() if c.binding is not None}
        )
        self._metrics.clusters.set(len(self.clusters))
        return retired

    async def reload(self) -> bool | None:
        """Re-reads the clusters; True when a changed set was applied, None when unchanged,
        False when refused (the last good set stays)."""
        if self._config.config_file is None:
            return None
        async with self._lock:  # the poller and SIGHUP may ask at the same moment
            try:
                specs = await asyncio.to_thread(self._read_changed, self._config.config_file)
                if specs is None:  # every file as at the last read
                    return None
                if specs and not self.enabled:
                    raise ConfigError(
                        f"{self._config.config_file}: clusters: kubejoin started with none; registering the first "
                        "takes a restart (or start with clusters_dir, even empty, to add clusters at run time)"
                    )
            except ConfigError as exc:
                error = cut(str(exc), 1000)  # /readyz shows it: bounded
                if error != self.last_error:
                    log.error("clusters not reloaded, the last good set stays in force: %s", error)
                self.last_error = error
                self._metrics.clusters_reload_ok.set(0)
                return False
            if {s.name: s for s in specs} == {n: c.spec for n, c in self.clusters.items()}:
                self._ok()
                return None
            retired = self.apply(specs)
            names = ", ".join(sorted(self.clusters)) or "none"
            log.info("clusters reloaded: %s (%d stopped or replaced)", names, len(retired))
            self._ok()
            for cluster in retired:
                await cluster.close()
            return True

    def _read_changed(self, config_file: str) -> tuple[ClusterSpec, ...] | None:
        """In a thread: the clusters, unless every file the last good read depended on is
        unchanged (then None). After a refused read every poll reads again until the files load
        (a missing kubeconfig may appear at any time; an edit may be reverted)."""
        if self._reads and unchanged(self._reads):
            return None
        reads: Reads = {}
        self._reads = {}  # if this read is refused, the next poll reads again (and sees a revert)
        specs = load_clusters(config_file, reads)
        self._reads = reads
        return specs

    def _ok(self) -> None:
        self.last_error = ""
        self._metrics.clusters_reload_ok.set(1)

    async def close(self) -> None:
        for cluster in self.apply(()):
            await cluster.close()
