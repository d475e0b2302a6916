"""The verifier: decides whether a ServiceAccount token is valid, pod-bound and from a trusted
cluster, and says exactly why not. The only way to get claims out of a token is `verify`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from .binding import BindingCheck
from .claims import INCOMPLETE, Claims, decode_claims, usual_claims
from .errors import Reason, VerificationError
from .identity import Identity
from .jose import HeaderMemo, parse_compact, read_claims
from .sources import KeySource
from .texts import clip, one_of

DEFAULT_LEEWAY: Final = 10.0
DEFAULT_MAX_TTL: Final = 1800.0
DEFAULT_CACHE_SIZE: Final = 16384
_new: Final = tuple.__new__


class _VerifiedTokens:
    """The verified-token cache: token -> (serial, payload, kid) of a token whose signature
    verified, least recently used evicted first. A hit skips what costs (base64, the header, the
    signature: about four fifths of a verification) and judges the claims again, against the
    clock and issuer of now, from the payload (a few microseconds).

    Shaped for the garbage collector: plain dicts of strings and ints only, which the collector
    never tracks, so a full collection does not walk the cache however many entries it holds (an
    OrderedDict of tuples cost 5 ms per gen-2 collection at 100,000 entries, touching every
    entry; tuples alone are not enough, since the dict holding them is tracked again with each new
    one). An entry is one string: the serial, the payload, the kid, NUL between them (neither a
    serial nor a payload that passed the strict JSON reader holds a NUL; a kid may, so it comes
    last). Recency is a sequence number per token; the eviction order lives in a dict from number
    to token, so evicting the oldest costs O(1) where a dict's own order would be scanned past
    every hole left at its front."""

    __slots__ = ("_entries", "_next", "_oldest", "_order", "_seq", "get", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._entries: dict[str, str] = {}
        # the entry of a token, or None: the dict's own get (a C call on every verification)
        self.get: Callable[[str], str | None] = self._entries.get
        self._seq: dict[str, int] = {}  # token -> its place in the order
        self._order: dict[int, str] = {}  # place -> token; the oldest has the smallest number
        self._next = 0
        self._oldest = 0

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def fields(entry: str) -> list[str]:
        """[serial, payload, kid] of an entry that get() found."""
        return entry.split("\x00", 2)

    def touch(self, token: str) -> None:
        """Makes the token the most recently used."""
        place = self._next
        self._next = place + 1
        del self._order[self._seq[token]]
        self._order[place] = token
        self._seq[token] = place

    def put(self, token: str, serial: int, payload: str, kid: str) -> None:
        entries = self._entries
        if token in entries:  # verified twice at once (the binding check awaits): keep one
            self.discard(token)
        place = self._next
        self._next = place + 1
        entries[token] = f"{serial}\x00{payload}\x00{kid}"
        self._seq[token] = place
        self._order[place] = token
        if len(entries) > self.size:
            self._evict()

    def _evict(self) -> None:
        while len(self._entries) > self.size:
            oldest = self._order.pop(self._oldest, None)
            self._oldest += 1
            if oldest is not None:
                del self._entries[oldest], self._seq[oldest]

    def discard(self, token: str) -> None:
        del self._entries[token], self._order[self._seq.pop(token)]


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
            entry = cache.get(token)
            if entry is not None:
                serial, verified_payload, verified_kid = cache.fields(entry)
                # Trusted only while the key that verified it is still the one held for its kid
                # (keep_unchanged keeps the object, and so the serial, of an unchanged key).
                held = self.source.cached_key(verified_kid)
                if held is not None and str(held.serial) == serial:
                    # the claims judged as now: the clock, and the issuer (in_cluster learns it
                    # from discovery, which can change)
                    identity = self._check_claims(read_claims(verified_payload, usual_claims))
                    cache.touch(token)
                    self.cache_hits += 1
                    if self.binding is not None:
                        await self._check_binding(self.binding, identity)
                    return identity
                cache.discard(token)
            self.cache_misses += 1
        alg, kid, claims, payload, signing_input, signature, segment, known = parse_compact(
            token, self._headers, usual_claims
        )
        if kid is None:
            raise VerificationError(Reason.UNKNOWN_KEY, "token header has no kid")
        key = self.source.cached_key(kid) or await self.source.get_key(kid)
        if key.alg != alg:
            raise VerificationError(
                Reason.UNSUPPORTED_ALGORITHM,
                f"alg {alg} does not fit key {key.kid[:64]!r} ({key.description}); expected {key.alg}",
            )
        if not key.verify(signing_input, signature):
            raise VerificationError(Reason.BAD_SIGNATURE, f"signature does not verify with key {key.kid[:64]!r}")
        if not known:
            self._headers.remember(segment, (alg, kid))
        identity = self._check_claims(claims)
        if self.binding is not None:
            await self._check_binding(self.binding, identity)
        if cache is not None:
            cache.put(token, key.serial, payload, key.kid)
        return identity

    @staticmethod
    async def _check_binding(binding: BindingCheck, identity: Identity) -> None:
        if not binding.check_cached(identity):
            await binding.check(identity)

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
            raise VerificationError(Reason.INVALID_ISSUER, f"expected issuer {expected!r}, got {clip(iss)}")
        if audiences is None:
            raise VerificationError(Reason.MISSING_CLAIM, "claim 'aud' is required")
        if self._audiences.isdisjoint(audiences):
            wanted = one_of(self._audiences, "audience", "audiences")
            raise VerificationError(Reason.INVALID_AUDIENCE, f"expected {wanted}, got {clip(list(audiences))}")
        if exp is None or iat is None:
            raise VerificationError(Reason.MISSING_CLAIM, f"claim {'exp' if exp is None else 'iat'!r} is required")
        now, leeway = self._clock(), self._leeway
        if now > exp + leeway:
            raise VerificationError(Reason.TOKEN_EXPIRED, f"token expired at {exp}; now is {int(now)}")
        if nbf is not None and now < nbf - leeway:
            raise VerificationError(Reason.TOKEN_NOT_YET_VALID, f"token is valid from {nbf}; now is {int(now)}")
        if iat > now + leeway:
            raise VerificationError(Reason.TOKEN_ISSUED_IN_FUTURE, f"token issued at {iat}, after now ({int(now)})")
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
            raise VerificationError(Reason.SUBJECT_MISMATCH, f"sub is {clip(sub)}, expected {expected_sub!r}")
        # tuple.__new__: the Identity its constructor makes, without the Python frame around it
        return _new(Identity, (namespace, account, pod, node, iss, audiences, jti, iat, exp, nbf, warn_after))
