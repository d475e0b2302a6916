"""One key source per place keys come from, shared by every verifier that names it: all
`in_cluster` tokens share one, `oidc` tokens share one per issuer, `static_jwks` tokens have their
own. Join tokens of one source share one verifier; other users (the TokenReview endpoint) get
verifiers of their own audiences and lifetime over the same source through `verifier`. Verifiers of
the `in_cluster` source carry the live binding check when `binding.mode` is watch. A source no
longer named by anyone stops refreshing when the tokens change, but the join tokens' verifier over
it (keys and verified tokens) is kept for RETAIN seconds: a token removed by mistake and restored a
moment later works at once, without the issuer."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from metrics import CacheStats, Metrics
from verifier import InClusterKeySource, OIDCKeySource, StaticKeySource, Verifier, parse_jwks
from verifier.binding import BindingCheck
from verifier.k8s.api import KubeAPI, KubeKeySource
from verifier.sources import KeySource, RemoteKeySource

from .config import Config, InCluster
from .files import ConfigError
from .tokens import JoinToken, KubernetesRules


@dataclass(frozen=True)
class StaticSource:
    """A join token's own key set (each token its own, even with the same keys)."""

    token: str
    jwks: str
    issuer: str | None


@dataclass(frozen=True)
class OidcSource:
    issuer: str
    allow_http: bool


@dataclass(frozen=True)
class InClusterSource:
    """This cluster's API server (config `in_cluster`): one for all tokens naming it."""


SourceKey = StaticSource | OidcSource | InClusterSource
IN_CLUSTER: Final = InClusterSource()
# verifier() keeps the most recently asked for of these (TokenReview: one per audience set that
# reviews name). Callers name few sets; the bound keeps one that names many from growing memory:
# each verifier has its own verified-token cache.
MAX_AUDIENCE_VERIFIERS: Final = 32
RETAIN: Final = 600.0


def source_key(rules: KubernetesRules, name: str) -> SourceKey:
    """The key source that `rules` (of join token `name`) names. Raises ConfigError for rules
    whose type lacks its settings (the tokens parser never makes them)."""
    if rules.type == "oidc":
        if rules.oidc_issuer is None:
            raise ConfigError(f"join token {name!r}: type oidc without oidc.issuer")
        return OidcSource(rules.oidc_issuer, rules.insecure_allow_http_issuer)
    if rules.type == "static_jwks":
        if rules.static_jwks is None:
            raise ConfigError(f"join token {name!r}: type static_jwks without static_jwks.jwks")
        return StaticSource(name, rules.static_jwks, rules.static_issuer)
    return IN_CLUSTER


class _Retired(NamedTuple):
    verifier: Verifier
    since: float  # when no join token named its source any more


_Combination = tuple[SourceKey, frozenset[str], float, bool]  # a source, audiences, max_ttl, bound: verifier()'s key


def kube_api(cluster: InCluster) -> KubeAPI:
    """The cluster's API server as the binding and a kubeconfig key source reach it."""
    if cluster.kubeconfig is not None:
        return KubeAPI(kubeconfig=cluster.kubeconfig)
    return KubeAPI(api_server=cluster.api_server, ca_file=cluster.ca_file, token_file=cluster.token_file)


class Keyring:
    """The verifiers of the join tokens in force, one per key source: tokens naming the same
    source share one verifier, so a cluster's keys are fetched and cached once however many tokens
    trust it. On a token reload, sources still named are kept (with their warm caches) and the
    others are handed back to be closed. `verifier()` gives other users (the TokenReview endpoint)
    verifiers of their own audiences over the same sources."""

    def __init__(
        self,
        config: Config,
        metrics: Metrics,
        *,
        clock: Callable[[], float] = time.time,
        binding: BindingCheck | None = None,
        follows: Callable[[BindingCheck | None], BindingCheck] | None = None,
    ) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        # `follows` wraps a source's own binding (in_cluster: the local one) with the registered
        # clusters' bindings, chosen by the token's issuer (CONTRACT.md: the binding follows the token).
        self._binding = binding
        self._follows = follows
        self._sources: dict[SourceKey, KeySource] = {}
        self._verifiers: dict[SourceKey, Verifier] = {}  # the join tokens' verifier of each source
        self._by_token: dict[str, Verifier] = {}
        self._others: OrderedDict[_Combination, Verifier] = OrderedDict()  # verifier(), most recent last
        self._kept: dict[_Combination, Verifier] = {}  # verifier(keep=True)
        self._held: set[SourceKey] = set()  # sources that verifier() was asked for: open until close()
        self._retired: dict[SourceKey, _Retired] = {}  # verifiers no token names any more
        self._retired_hits = 0
        self._retired_misses = 0
        metrics.watch_cache(self.cache_stats)

    def verifier_for(self, token_name: str) -> Verifier | None:
        return self._by_token.get(token_name)

    def verifier(
        self,
        rules: KubernetesRules,
        *,
        name: str,
        audiences: Iterable[str],
        max_ttl: float,
        keep: bool = False,
        bound: bool = True,
    ) -> Verifier:
        """A verifier over the key source that `rules` names (shared with the join tokens that
        name it), for these audiences and this lifetime cap; with the binding check when the
        source is in_cluster. The same arguments give the same verifier while it is among the
        MAX_AUDIENCE_VERIFIERS most recently asked for; the source stays open until close(). Must
        run in the event loop (a new remote source starts refreshing). `keep`: never pushed out
        (the TokenReview endpoint's default audiences: callers must not evict it by naming others).
        `bound=False`: without the binding check, for a caller that makes checks of its own first
        and then applies `binding_for` itself."""
        wanted = audiences if isinstance(audiences, frozenset) else frozenset(audiences)
        key = source_key(rules, name)
        combination = (key, wanted, max_ttl, bound)
        kept = self._kept.get(combination)
        if kept is not None:
            return kept
        if keep:
            self._held.add(key)
            kept = self._kept[combination] = self._verifier(key, self._source(key), wanted, max_ttl, bound)
            return kept
        verifier = self._others.get(combination)
        if verifier is not None:
            self._others.move_to_end(combination)
            return verifier
        self._held.add(key)
        verifier = self._others[combination] = self._verifier(key, self._source(key), wanted, max_ttl, bound)
        while len(self._others) > MAX_AUDIENCE_VERIFIERS:
            self._retire_stats(self._others.popitem(last=False)[1])
        return verifier

    def binding_for(self, rules: KubernetesRules, name: str) -> BindingCheck | None:
        """The binding check that the verifiers of this source carry, if any."""
        return self._binding_of(source_key(rules, name))

    def _binding_of(self, key: SourceKey) -> BindingCheck | None:
        own = self._binding if key == IN_CLUSTER else None
        return self._follows(own) if self._follows is not None else own

    def _source(self, key: SourceKey) -> KeySource:
        source = self._sources.get(key)
        if source is not None:
            return source
        if isinstance(key, StaticSource):
            static = StaticKeySource(parse_jwks(key.jwks), label=f"static:{key.token}", issuer=key.issuer)
            self._metrics.key_fetch(static.label, True, static.key_count, self._clock())
            source = static
        else:
            remote = self._remote(key)
            remote.start()
            source = remote
        self._sources[key] = source
        return source

    def _remote(self, key: OidcSource | InClusterSource) -> RemoteKeySource:
        policy: dict[str, Any] = {"clock": self._clock, "observer": self._metrics.key_fetch}
        if isinstance(key, OidcSource):
            return OIDCKeySource(key.issuer, allow_http=key.allow_http, **policy)
        cluster = self._config.in_cluster
        if cluster is None:
            raise ConfigError("a join token of type in_cluster needs the config's in_cluster settings")
        if cluster.kubeconfig is not None:
            return KubeKeySource(kube_api(cluster), **policy)
        return InClusterKeySource(cluster.api_server, token_file=cluster.token_file, ca_file=cluster.ca_file, **policy)

    def _verifier(
        self, key: SourceKey, source: KeySource, audiences: Iterable[str], max_ttl: float, bound: bool = True
    ) -> Verifier:
        return Verifier(
            source,
            audiences,
            leeway=self._config.verification.leeway,
            max_ttl=max_ttl,
            clock=self._clock,
            binding=self._binding_of(key) if bound else None,
        )

    def update(self, tokens: Mapping[str, JoinToken]) -> list[RemoteKeySource]:
        """Builds verifiers for new sources (or takes back retired ones) and returns the sources
        no one names any more, for the caller to close (they stop refreshing; a retired verifier
        keeps their keys). Must run in the event loop (remote sources start refreshing)."""
        by_token = {
            token.name: source_key(token.kubernetes, token.name)
            for token in tokens.values()
            if token.kubernetes is not None and token.kubernetes.type != "cluster"  # the registry's
        }
        wanted = dict.fromkeys(by_token.values())  # a set, in the tokens' order
        now = self._clock()
        for key in wanted:
            if key in self._verifiers:
                continue
            kept = self._retired.pop(key, None)
            if kept is not None and self._sources.get(key, kept.verifier.source) is kept.verifier.source:
                self._verifiers[key] = self._revive(key, kept.verifier)
                continue
            source = self._source(key)
            self._verifiers[key] = self._verifier(
                key, source, [self._config.cluster_name], self._config.verification.max_token_ttl
            )
        self._by_token = {name: self._verifiers[key] for name, key in by_token.items()}
        for key in [k for k in self._verifiers if k not in wanted]:
            verifier = self._verifiers.pop(key)
            self._retire_stats(verifier)
            self._retired[key] = _Retired(verifier, now)
        for key in [k for k, retired in self._retired.items() if now - retired.since > RETAIN]:
            del self._retired[key]
        in_use = set(wanted) | self._held
        retired: list[RemoteKeySource] = []
        for key in [k for k in self._sources if k not in in_use]:
            source = self._sources.pop(key)
            if isinstance(source, RemoteKeySource):
                retired.append(source)
        return retired

    def _revive(self, key: SourceKey, verifier: Verifier) -> Verifier:
        """Takes back a retired verifier with its keys and cache; its source refreshes again."""
        self._retired_hits -= verifier.cache_hits
        self._retired_misses -= verifier.cache_misses
        if key not in self._sources:
            self._sources[key] = verifier.source
            if isinstance(verifier.source, RemoteKeySource):
                verifier.source.start()
        return verifier

    def _retire_stats(self, verifier: Verifier) -> None:
        self._retired_hits += verifier.cache_hits
        self._retired_misses += verifier.cache_misses

    async def close(self) -> None:
        for verifier in [*self._others.values(), *self._kept.values()]:
            self._retire_stats(verifier)
        self._others.clear()
        self._kept.clear()
        self._held.clear()
        for source in self.update({}):
            await source.close()
        self._retired.clear()

    def cache_stats(self) -> CacheStats:
        verifiers = [*self._verifiers.values(), *self._others.values(), *self._kept.values()]
        return CacheStats(
            hits=self._retired_hits + sum(v.cache_hits for v in verifiers),
            misses=self._retired_misses + sum(v.cache_misses for v in verifiers),
            entries=sum(v.cache_entries for v in verifiers),
        )
