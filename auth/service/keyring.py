"""One verifier per key source, shared by every join token that names the same source: all
`in_cluster` tokens share one, `oidc` tokens share one per issuer, `static_jwks` tokens have their
own. Sources no longer named by any token are closed when the tokens change."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from metrics import CacheStats, Metrics
from verifier import InClusterKeySource, OIDCKeySource, StaticKeySource, Verifier, parse_jwks
from verifier.sources import RemoteKeySource

from .config import Config
from .tokens import JoinToken

SourceKey = tuple[Any, ...]


def source_key(token: JoinToken) -> SourceKey:
    rules = token.kubernetes
    assert rules is not None
    if rules.type == "oidc":
        return ("oidc", rules.oidc_issuer, rules.insecure_allow_http_issuer)
    if rules.type == "static_jwks":
        return ("static", token.name, rules.static_jwks, rules.static_issuer)
    return ("in_cluster",)


class Keyring:
    """The verifiers of the join tokens in force, one per key source: tokens naming the same
    source share one verifier, so a cluster's keys are fetched and cached once however many tokens
    trust it. On a token reload, sources still named are kept (with their warm caches) and the
    others are handed back to be closed."""

    def __init__(self, config: Config, metrics: Metrics, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._metrics = metrics
        self._clock = clock
        self._verifiers: dict[SourceKey, Verifier] = {}
        self._by_token: dict[str, Verifier] = {}
        self._retired_hits = 0
        self._retired_misses = 0
        metrics.watch_cache(self.cache_stats)

    def verifier_for(self, token_name: str) -> Verifier | None:
        return self._by_token.get(token_name)

    def _build(self, key: SourceKey, token: JoinToken) -> Verifier:
        rules = token.kubernetes
        assert rules is not None
        policy: dict[str, Any] = {"clock": self._clock, "observer": self._metrics.key_fetch}
        source: StaticKeySource | RemoteKeySource
        if key[0] == "static":
            assert rules.static_jwks is not None
            source = StaticKeySource(
                parse_jwks(rules.static_jwks), label=f"static:{token.name}", issuer=rules.static_issuer
            )
            self._metrics.key_fetch(source.label, True, source.key_count, self._clock())
        elif key[0] == "oidc":
            assert rules.oidc_issuer is not None
            source = OIDCKeySource(rules.oidc_issuer, allow_http=rules.insecure_allow_http_issuer, **policy)
        else:
            cluster = self._config.in_cluster
            assert cluster is not None
            source = InClusterKeySource(
                cluster.api_server, token_file=cluster.token_file, ca_file=cluster.ca_file, **policy
            )
        if isinstance(source, RemoteKeySource):
            source.start()
        verification = self._config.verification
        return Verifier(
            source,
            [self._config.cluster_name],
            leeway=verification.leeway,
            max_ttl=verification.max_token_ttl,
            clock=self._clock,
        )

    def update(self, tokens: Mapping[str, JoinToken]) -> list[RemoteKeySource]:
        """Builds verifiers for new sources and returns the sources no token names any more, for
        the caller to close. Must run in the event loop (remote sources start refreshing)."""
        wanted: dict[SourceKey, JoinToken] = {}
        by_token: dict[str, SourceKey] = {}
        for token in tokens.values():
            if token.kubernetes is not None:
                key = source_key(token)
                wanted.setdefault(key, token)
                by_token[token.name] = key
        for key, token in wanted.items():
            if key not in self._verifiers:
                self._verifiers[key] = self._build(key, token)
        self._by_token = {name: self._verifiers[key] for name, key in by_token.items()}
        retired: list[RemoteKeySource] = []
        for key in [k for k in self._verifiers if k not in wanted]:
            verifier = self._verifiers.pop(key)
            self._retired_hits += verifier.cache_hits
            self._retired_misses += verifier.cache_misses
            if isinstance(verifier.source, RemoteKeySource):
                retired.append(verifier.source)
        return retired

    async def close(self) -> None:
        for source in self.update({}):
            await source.close()

    def cache_stats(self) -> CacheStats:
        verifiers = list(self._verifiers.values())
        return CacheStats(
            hits=self._retired_hits + sum(v.cache_hits for v in verifiers),
            misses=self._retired_misses + sum(v.cache_misses for v in verifiers),
            entries=sum(v.cache_entries for v in verifiers),
        )
