"""The verifier: decides whether a ServiceAccount token is valid, pod-bound and from a trusted
cluster, and says exactly why not. The only way to get claims out of a token is `verify`."""

from __future__ import annotations

import marshal
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from .binding import BindingCheck
from .claims import INCOMPLETE, Claims, decode_claims, usual_claims
from .errors import Reason, VerificationError
from .identity import Identity, ObjectRef
from .jose import HeaderMemo, parse_compact
from .sources import KeySource

DEFAULT_LEEWAY: Final = 10.0
DEFAULT_MAX_TTL: Final = 1800.0
DEFAULT_CACHE_SIZE: Final = 16384


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


class _VerifiedTokens:
    """The verified-token cache: token -> what a hit needs, least recently used evicted first.

    Shaped for the garbage collector. Everything here lives in plain dicts of strings, bytes and
    ints, which the collector never tracks: a full collection does not walk the cache however
    many entries it holds (an OrderedDict of tuples cost 5 ms per gen-2 collection at 100,000
    entries, touching every entry; tuple entries alone are not enough, since the dict holding them
    is tracked again with each new one). An entry is therefore one bytes object, the marshal of a
    flat tuple made here from a verified token (never from input): the identity's fields, each
    ObjectRef spread out, then the kid and serial of the key that verified the token and the
    times between which _check_times passes. Recency is a sequence number per token; the eviction
    order lives in a dict from number to token, so evicting the oldest costs O(1) where a dict's
    own order would be scanned past every hole left at its front."""

    __slots__ = ("_entries", "_next", "_oldest", "_order", "_seq", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[str, bytes] = {}
        self._seq: dict[str, int] = {}  # token -> its place in the order
        self._order: dict[int, str] = {}  # place -> token; the oldest has the smallest number
        self._next = 0
        self._oldest = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, token: str) -> tuple[Any, ...] | None:
        entry = self._entries.get(token)
        # S302: these bytes are only ever made by put(), from a verified token, never from input
        return None if entry is None else marshal.loads(entry)  # noqa: S302

    def touch(self, token: str) -> None:
        """Makes the token the most recently used."""
        place = self._next
        self._next = place + 1
        del self._order[self._seq[token]]
        self._order[place] = token
        self._seq[token] = place

    def put(self, token: str, identity: Identity, kid: str, serial: int, earliest: float, latest: float) -> None:
        node = identity.node or _NO_NODE
        record = (identity[0], *identity[1], *identity[2], *node, *identity[4:], kid, serial, earliest, latest)
        if token in self._entries:
            self.discard(token)
        place = self._next
        self._next = place + 1
        self._entries[token] = marshal.dumps(record, 2)  # version 2: no back references, the fastest
        self._seq[token] = place
        self._order[place] = token
        while len(self._entries) > self.size:
            oldest = self._order.pop(self._oldest, None)
            self._oldest += 1
            if oldest is not None:
                del self._entries[oldest], self._seq[oldest]

    def discard(self, token: str) -> None:
        del self._entries[token], self._order[self._seq.pop(token)]


_NO_NODE: Final = (None, None, None)
_new: Final = tuple.__new__  # NamedTuple's __new__ is a Python function around this one
# Where things are in a cache record (see _VerifiedTokens).
_ISSUER, _IAT, _EXP, _NBF = 10, 13, 14, 15
_KID, _SERIAL, _EARLIEST, _LATEST = 17, 18, 19, 20


def _identity(record: tuple[Any, ...]) -> Identity:
    """The Identity of a cache record, built with tuple.__new__: the same NamedTuples their
    constructors make, in half the time."""
    return _new(
        Identity,
        (
            record[0],
            _new(ObjectRef, record[1:4]),
            _new(ObjectRef, record[4:7]),
            None if record[7] is None else _new(ObjectRef, record[7:10]),
            *record[10:17],
        ),
    )


class Verifier:
    """Verifies tokens against one key source and one audience policy.

    Checks run cheapest first: size, structure, header, algorithm allow-list, kid, signature, then
    claims. A verified token is remembered (bounded LRU) so a repeated join costs a dictionary
    lookup; a remembered token is re-checked against the clock and is forgotten as soon as its key
    leaves the key set. The headers of tokens whose signature verified are remembered too
    (HeaderMemo), so that a known header is not parsed again.

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
        # cachetools' LRUCache, before, ran about two microseconds of Python per miss and kept
        # tuples holding the key object: a full collection walked every entry.
        self._cache = _VerifiedTokens(cache_size) if cache_size > 0 else None
        self._headers = HeaderMemo()
        self.cache_hits = 0
        self.cache_misses = 0

    @property
    def cache_entries(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def verify(self, token: str) -> Identity:
        """Returns the identity of a valid token or raises VerificationError with the reason."""
        cache = self._cache
        if cache is not None:
            record = cache.get(token)
            if record is not None:
                # Trusted only while the key that verified it is still the one held for its kid
                # (keep_unchanged keeps the object, and so the serial, of an unchanged key), and its
                # issuer still the one required (in_cluster learns the issuer from discovery,
                # which can change).
                held = self.source.cached_key(record[_KID])
                expected = self.source.issuer
                if (
                    held is not None
                    and held.serial == record[_SERIAL]
                    and (expected is None or record[_ISSUER] == expected)
                ):
                    if record[_EARLIEST] <= self._clock() <= record[_LATEST]:
                        cache.touch(token)
                        self.cache_hits += 1
                        identity = _identity(record)
                        if self.binding is not None:
                            await self._check_binding(self.binding, identity)
                        return identity
                    self._check_times(record[_EXP], record[_NBF], record[_IAT])
                cache.discard(token)
            self.cache_misses += 1
        parsed = parse_compact(token, self._headers, usual_claims)
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
        self._headers.remember(parsed.header_segment, (parsed.alg, parsed.kid))
        identity = self._check_claims(parsed.claims)
        if self.binding is not None:
            await self._check_binding(self.binding, identity)
        if cache is not None:
            # the times at which _check_times would pass, so that a hit costs two comparisons
            nbf = identity.not_before
            earliest = max(identity.issued_at, identity.issued_at if nbf is None else nbf) - self._leeway
            cache.put(token, identity, key.kid, key.serial, earliest, identity.expires_at + self._leeway)
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

    def _check_claims(self, raw: dict[str, Any] | Claims) -> Identity:
        """Decodes the claims (unless usual_claims did already), then judges them in
        kube-apiserver's order of concern. Runs for every token verified: the claims are unpacked
        once rather than read field by field (a third of this function's time)."""
        claims = raw if raw.__class__ is Claims else decode_claims(raw)  # type: ignore[arg-type]
        iss, sub, audiences, exp, iat, nbf, jti, kube, legacy = claims
        if kube is None and legacy:
            raise VerificationError(
                Reason.LEGACY_TOKEN, "legacy secret-based ServiceAccount token; use a projected (bound) token"
            )
        if iss is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'iss' is required")
        expected = self.source.issuer
        if expected is not None and iss != expected:
            raise VerificationError(Reason.INVALID_ISSUER, f"expected issuer {expected!r}, got {_short(iss)}")
        if audiences is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'aud' is required")
        if self._audiences.isdisjoint(audiences):
            wanted = " or ".join(sorted(map(repr, self._audiences)))
            raise VerificationError(
                Reason.INVALID_AUDIENCE, f"expected audience {wanted}, got {_short(list(audiences))}"
            )
        if exp is None or iat is None:
            raise VerificationError(Reason.MISSING_CLAIM, f"claim {'exp' if exp is None else 'iat'!r} is required")
        self._check_times(exp, nbf, iat)
        if self._max_ttl and exp - iat > self._max_ttl:
            raise VerificationError(
                Reason.TOKEN_TTL_TOO_LONG,
                f"token lifetime is {exp - iat} s; at most {self._max_ttl:g} s is accepted",
            )
        if kube is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'kubernetes.io' is required")
        namespace, account, pod, node, secret, warn_after = kube
        if namespace is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim kubernetes.io.namespace is required")
        if account is None or account is INCOMPLETE:
            raise VerificationError(
                Reason.MISSING_CLAIM, "claim kubernetes.io.serviceaccount must have a name and a uid"
            )
        if pod is None:
            bound_to = "a secret" if secret else "no object"
            raise VerificationError(
                Reason.NOT_POD_BOUND, f"token is bound to {bound_to}, not a pod; mount a projected token"
            )
        if pod is INCOMPLETE:
            raise VerificationError(Reason.NOT_POD_BOUND, "claim kubernetes.io.pod must have a name and a uid")
        if node is INCOMPLETE:
            raise VerificationError(Reason.MISSING_CLAIM, "claim kubernetes.io.node must have a name and a uid")
        expected_sub = f"system:serviceaccount:{namespace}:{account.name}"
        if sub is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'sub' is required")
        if sub != expected_sub:
            raise VerificationError(Reason.SUBJECT_MISMATCH, f"sub is {_short(sub)}, expected {expected_sub!r}")
        # positional, in Identity's field order (keywords cost twice as much)
        return Identity(namespace, account, pod, node, iss, audiences, jti, iat, exp, nbf, warn_after)
