"""The verifier: decides whether a ServiceAccount token is valid, pod-bound and from a trusted
cluster, and says exactly why not. The only way to get claims out of a token is `verify`."""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable
from typing import Any, Final, NamedTuple

from cachetools import LRUCache

from .errors import Reason, VerificationError
from .jose import HeaderMemo, parse_compact
from .keys import VerifyingKey
from .sources import KeySource

DEFAULT_LEEWAY: Final = 10.0
DEFAULT_MAX_TTL: Final = 1800.0
DEFAULT_CACHE_SIZE: Final = 16384
_LEGACY_PREFIX: Final = "kubernetes.io/serviceaccount/"


class ObjectRef(NamedTuple):
    name: str
    uid: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "uid": self.uid}


class Identity(NamedTuple):
    """Who a verified token speaks for. Immutable (a tuple: cheap to build on the hot path)."""

    namespace: str
    service_account: ObjectRef
    pod: ObjectRef
    node: ObjectRef | None
    issuer: str
    audiences: tuple[str, ...]
    jti: str | None
    issued_at: int
    expires_at: int
    not_before: int | None

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account.name}"

    def to_json(self) -> dict[str, Any]:
        return {
            "username": self.username,
            "namespace": self.namespace,
            "service_account": self.service_account.to_json(),
            "pod": self.pod.to_json(),
            "node": self.node.to_json() if self.node else None,
            "issuer": self.issuer,
            "audiences": list(self.audiences),
            "jti": self.jti,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
        }


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


_ABSENT: Final = object()


def _number(claims: dict[str, Any], name: str, *, required: bool) -> int | None:
    value = claims.get(name, _ABSENT)
    if value is _ABSENT:
        if required:
            raise VerificationError(Reason.MISSING_CLAIM, f"claim {name!r} is required")
        return None
    # null is not absent; bool is an int to Python; 1e400 parses as infinity
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VerificationError(Reason.MALFORMED_TOKEN, f"claim {name!r} must be a finite number of seconds")
    return int(value)


# Kubernetes object names, as the API server enforces them (DNS-1123 label for namespaces,
# subdomain for the rest), and uids. A signed token with anything else comes from an issuer we
# should not believe: these names end up in allow-rule matches and in certificate SANs.
_NAMESPACE: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_NAME: Final = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")
_UID: Final = re.compile(r"[A-Za-z0-9-]{1,64}")


def _ref(parent: dict[str, Any], field: str, path: str, code: Reason) -> ObjectRef:
    value = parent.get(field)
    name = value.get("name") if isinstance(value, dict) else None
    uid = value.get("uid") if isinstance(value, dict) else None
    if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
        raise VerificationError(code, f"claim {path}.{field} must have a name and a uid")
    if not _NAME.fullmatch(name) or not _UID.fullmatch(uid):
        raise VerificationError(Reason.MALFORMED_TOKEN, f"claim {path}.{field} is not a Kubernetes name and uid")
    return ObjectRef(name, uid)


def _audiences(claims: dict[str, Any]) -> tuple[str, ...]:
    aud = claims.get("aud")
    if aud is None:
        raise VerificationError(Reason.MISSING_CLAIM, "claim 'aud' is required")
    if isinstance(aud, str):
        return (aud,)
    if isinstance(aud, list) and aud and all(isinstance(item, str) for item in aud):
        return tuple(aud)
    raise VerificationError(Reason.MALFORMED_TOKEN, "claim 'aud' must be a string or a list of strings")


class Verifier:
    """Verifies tokens against one key source and one audience policy.

    Checks run cheapest first: size, structure, header, algorithm allow-list, kid, signature, then
    claims. A verified token is remembered (bounded LRU) so a repeated join costs a dictionary
    lookup; a remembered token is re-checked against the clock and is forgotten as soon as its key
    leaves the key set.
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
    ) -> None:
        self.source = source
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
        if self._cache is not None:
            # the times at which _check_times would pass, so that a hit costs two comparisons
            earliest = max(identity.issued_at, identity.not_before or identity.issued_at) - self._leeway
            self._cache[token] = (identity, key, earliest, identity.expires_at + self._leeway)
        return identity

    def _check_times(self, exp: int, nbf: int | None, iat: int) -> None:
        now = self._clock()
        if now > exp + self._leeway:
            raise VerificationError(Reason.TOKEN_EXPIRED, f"token expired at {exp}; now is {int(now)}")
        if nbf is not None and now < nbf - self._leeway:
            raise VerificationError(Reason.TOKEN_NOT_YET_VALID, f"token is valid from {nbf}; now is {int(now)}")
        if iat > now + self._leeway:
            raise VerificationError(Reason.TOKEN_ISSUED_IN_FUTURE, f"token issued at {iat}, after now ({int(now)})")

    def _check_claims(self, claims: dict[str, Any]) -> Identity:
        binding = claims.get("kubernetes.io")
        if binding is None and any(name.startswith(_LEGACY_PREFIX) for name in claims):
            raise VerificationError(
                Reason.LEGACY_TOKEN, "legacy secret-based ServiceAccount token; use a projected (bound) token"
            )
        iss = claims.get("iss")
        if not isinstance(iss, str):
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'iss' is required")
        expected = self.source.issuer
        if expected is not None and iss != expected:
            raise VerificationError(Reason.INVALID_ISSUER, f"expected issuer {expected!r}, got {_short(iss)}")
        audiences = _audiences(claims)
        if self._audiences.isdisjoint(audiences):
            raise VerificationError(
                Reason.INVALID_AUDIENCE,
                f"expected audience {' or '.join(sorted(map(repr, self._audiences)))}, got {_short(list(audiences))}",
            )
        exp = _number(claims, "exp", required=True)
        iat = _number(claims, "iat", required=True)
        nbf = _number(claims, "nbf", required=False)
        assert exp is not None and iat is not None
        self._check_times(exp, nbf, iat)
        if exp - iat > self._max_ttl:
            raise VerificationError(
                Reason.TOKEN_TTL_TOO_LONG,
                f"token lifetime is {exp - iat} s; at most {self._max_ttl:g} s is accepted",
            )
        return self._check_binding(claims, binding, iss, audiences, exp, iat, nbf)

    def _check_binding(
        self,
        claims: dict[str, Any],
        binding: object,
        iss: str,
        audiences: tuple[str, ...],
        exp: int,
        iat: int,
        nbf: int | None,
    ) -> Identity:
        if not isinstance(binding, dict):
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'kubernetes.io' is required")
        namespace = binding.get("namespace")
        if not isinstance(namespace, str) or not namespace:
            raise VerificationError(Reason.MISSING_CLAIM, "claim kubernetes.io.namespace is required")
        if not _NAMESPACE.fullmatch(namespace):
            raise VerificationError(
                Reason.MALFORMED_TOKEN, "claim kubernetes.io.namespace is not a Kubernetes namespace"
            )
        service_account = _ref(binding, "serviceaccount", "kubernetes.io", Reason.MISSING_CLAIM)
        if "pod" not in binding:
            bound_to = "a secret" if "secret" in binding else "no object"
            raise VerificationError(
                Reason.NOT_POD_BOUND, f"token is bound to {bound_to}, not a pod; mount a projected token"
            )
        pod = _ref(binding, "pod", "kubernetes.io", Reason.NOT_POD_BOUND)
        node = _ref(binding, "node", "kubernetes.io", Reason.MISSING_CLAIM) if "node" in binding else None
        expected_sub = f"system:serviceaccount:{namespace}:{service_account.name}"
        sub = claims.get("sub")
        if not isinstance(sub, str):
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'sub' is required")
        if sub != expected_sub:
            raise VerificationError(Reason.SUBJECT_MISMATCH, f"sub is {_short(sub)}, expected {expected_sub!r}")
        jti = claims.get("jti", _ABSENT)
        if jti is _ABSENT:
            jti = None
        elif not isinstance(jti, str):
            raise VerificationError(Reason.MALFORMED_TOKEN, "claim 'jti' must be a string")
        return Identity(
            namespace=namespace,
            service_account=service_account,
            pod=pod,
            node=node,
            issuer=iss,
            audiences=audiences,
            jti=jti,
            issued_at=iat,
            expires_at=exp,
            not_before=nbf,
        )
