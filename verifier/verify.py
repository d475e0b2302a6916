"""The verifier: decides whether a ServiceAccount token is valid, pod-bound and from a trusted
cluster, and says exactly why not. The only way to get claims out of a token is `verify`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from cachetools import LRUCache

from .binding import BindingCheck
from .claims import INCOMPLETE, decode_claims
from .errors import Reason, VerificationError
from .identity import Identity
from .jose import HeaderMemo, parse_compact
from .keys import VerifyingKey
from .sources import KeySource
from .texts import clip, one_of

DEFAULT_LEEWAY: Final = 10.0
DEFAULT_MAX_TTL: Final = 1800.0
DEFAULT_CACHE_SIZE: Final = 16384


class Verifier:
    """Verifies tokens against one key source and one audience policy.

    Checks run cheapest first: size, structure, header, algorithm allow-list, kid, signature, then
    claims. A verified token is remembered (bounded LRU) so a repeated join costs a dictionary
    lookup; a remembered token is re-checked against the clock and is forgotten as soon as its key
    leaves the key set.

    `max_ttl` caps exp - iat; 0 means no cap (kubelet's year-long tokens), which is only safe
    together with a live binding check.

    `binding`, when given, runs after every successful verification, cache hits included: a
    remembered token is refused as soon as its pod or service account is gone. On a hit it is
    normally a few dictionary lookups (`check_cached`), with no await.
    """

    def __init__(
        self,
        source: KeySource,
        audiences: Iterable[str],
        *,
        leeway: float = DEFAULT_LEEWAY,
        max_ttl: float = DEFAULT_MAX_TTL,
        clock: Callable[[], float] = time.time,
        cache_size: int = DEFAULT_CACHE_SIZE,
        binding: BindingCheck | None = None,
    ) -> None:
        self.source = source
        self.binding = binding
        self._audiences = frozenset(audiences)
        if not self._audiences:
            raise ValueError("at least one audience is required")
        self._leeway = leeway
        self._max_ttl = max_ttl
        self._clock = clock
        self._cache: LRUCache[str, tuple[Identity, VerifyingKey, float, float]] | None = (
            LRUCache(maxsize=cache_size) if cache_size > 0 else None
        )
        self._headers: HeaderMemo = {}
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def cache_entries(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def verify(self, token: str) -> Identity:
        """Returns the identity of a valid token or raises VerificationError with the reason."""
        if self._cache is not None:
            cached = self._cache.get(token)
            if cached is not None:
                identity, key, earliest, latest = cached
                # Trusted only while its key is still in the key set and its issuer still the one
                # required (in_cluster learns the issuer from discovery, which can change).
                expected = self.source.issuer
                if self.source.cached_key(key.kid) is key and (expected is None or identity.issuer == expected):
                    if earliest <= self._clock() <= latest:
                        self.cache_hits += 1
                        if self.binding is not None:
                            await self._check_binding(self.binding, identity)
                        return identity
                    self._check_times(identity.expires_at, identity.not_before, identity.issued_at)
                del self._cache[token]
            self.cache_misses += 1
        parsed = parse_compact(token, self._headers)
        if parsed.kid is None:
            raise VerificationError(Reason.UNKNOWN_KEY, "token header has no kid")
        key = self.source.cached_key(parsed.kid) or await self.source.get_key(parsed.kid)
        if key.alg != parsed.alg:
            raise VerificationError(
                Reason.UNSUPPORTED_ALGORITHM,
                f"alg {parsed.alg} does not fit key {key.kid[:64]!r} ({key.description}); expected {key.alg}",
            )
        if not key.verify(parsed.signing_input, parsed.signature):
            raise VerificationError(Reason.BAD_SIGNATURE, f"signature does not verify with key {key.kid[:64]!r}")
        identity = self._check_claims(parsed.claims)
        if self.binding is not None:
            await self._check_binding(self.binding, identity)
        if self._cache is not None:
            # the times at which _check_times would pass, so that a hit costs two comparisons
            earliest = max(identity.issued_at, identity.not_before or identity.issued_at) - self._leeway
            self._cache[token] = (identity, key, earliest, identity.expires_at + self._leeway)
        return identity

    @staticmethod
    async def _check_binding(binding: BindingCheck, identity: Identity) -> None:
        if not binding.check_cached(identity):
            await binding.check(identity)

    def _check_times(self, exp: int, nbf: int | None, iat: int) -> None:
        now = self._clock()
        if now > exp + self._leeway:
            raise VerificationError(Reason.TOKEN_EXPIRED, f"token expired at {exp}; now is {int(now)}")
        if nbf is not None and now < nbf - self._leeway:
            raise VerificationError(Reason.TOKEN_NOT_YET_VALID, f"token is valid from {nbf}; now is {int(now)}")
        if iat > now + self._leeway:
            raise VerificationError(Reason.TOKEN_ISSUED_IN_FUTURE, f"token issued at {iat}, after now ({int(now)})")

    def _check_claims(self, raw: dict[str, Any]) -> Identity:
        """Decodes the claims, then judges them in kube-apiserver's order of concern."""
        claims = decode_claims(raw)
        kube = claims.kubernetes
        if kube is None and claims.legacy:
            raise VerificationError(
                Reason.LEGACY_TOKEN, "legacy secret-based ServiceAccount token; use a projected (bound) token"
            )
        if claims.iss is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'iss' is required")
        expected = self.source.issuer
        if expected is not None and claims.iss != expected:
            raise VerificationError(Reason.INVALID_ISSUER, f"expected issuer {expected!r}, got {clip(claims.iss)}")
        if claims.audiences is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'aud' is required")
        if self._audiences.isdisjoint(claims.audiences):
            wanted = one_of(self._audiences, "audience", "audiences")
            raise VerificationError(Reason.INVALID_AUDIENCE, f"expected {wanted}, got {clip(list(claims.audiences))}")
        exp, iat = claims.exp, claims.iat
        if exp is None or iat is None:
            raise VerificationError(Reason.MISSING_CLAIM, f"claim {'exp' if exp is None else 'iat'!r} is required")
        self._check_times(exp, claims.nbf, iat)
        if self._max_ttl and exp - iat > self._max_ttl:
            raise VerificationError(
                Reason.TOKEN_TTL_TOO_LONG,
                f"token lifetime is {exp - iat} s; at most {self._max_ttl:g} s is accepted",
            )
        if kube is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'kubernetes.io' is required")
        if kube.namespace is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim kubernetes.io.namespace is required")
        if kube.service_account is None or kube.service_account is INCOMPLETE:
            raise VerificationError(
                Reason.MISSING_CLAIM, "claim kubernetes.io.serviceaccount must have a name and a uid"
            )
        if kube.pod is None:
            bound_to = "a secret" if kube.secret else "no object"
            raise VerificationError(
                Reason.NOT_POD_BOUND, f"token is bound to {bound_to}, not a pod; mount a projected token"
            )
        if kube.pod is INCOMPLETE:
            raise VerificationError(Reason.NOT_POD_BOUND, "claim kubernetes.io.pod must have a name and a uid")
        if kube.node is INCOMPLETE:
            raise VerificationError(Reason.MISSING_CLAIM, "claim kubernetes.io.node must have a name and a uid")
        expected_sub = f"system:serviceaccount:{kube.namespace}:{kube.service_account.name}"
        if claims.sub is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'sub' is required")
        if claims.sub != expected_sub:
            raise VerificationError(Reason.SUBJECT_MISMATCH, f"sub is {clip(claims.sub)}, expected {expected_sub!r}")
        return Identity(
            namespace=kube.namespace,
            service_account=kube.service_account,
            pod=kube.pod,
            node=kube.node,
            issuer=claims.iss,
            audiences=claims.audiences,
            jti=claims.jti,
            issued_at=iat,
            expires_at=exp,
            not_before=claims.nbf,
            warn_after=kube.warn_after,
        )
