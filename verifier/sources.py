"""Key sources: the one place that answers "which public key has this kid".

`StaticKeySource` holds a JWKS given up front. `OIDCKeySource` and `InClusterKeySource` fetch one
over HTTP and share the cache policy of `RemoteKeySource`:

- keys live for the response's `Cache-Control: max-age`, clamped to [1 min, 1 h]; a background
  task refreshes them at three quarters of that, so a join never waits on the network;
- an unknown kid causes a refresh, shared by all requests that want one at the same moment, and at
  most once per `unknown_kid_interval` (a flood of made-up kids must not flood the issuer);
- a failed fetch keeps the last good keys (stale-if-error); without any keys ever fetched the
  answer is `keys_unavailable`;
- every fetch is bounded in time (5 s) and size (1 MiB), and redirects are not followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any, Final, Protocol

import aiohttp

from .errors import KeySourceError, Reason, VerificationError
from .jose import parse_json_object
from .keys import KeySet, VerifyingKey, keep_unchanged, parse_jwks
from .texts import cut, listing

log = logging.getLogger("kubejoin.keys")

MIN_TTL: Final = 60.0
MAX_TTL: Final = 3600.0
DEFAULT_TTL: Final = 300.0  # when the issuer sends no max-age
UNKNOWN_KID_INTERVAL: Final = 10.0
FETCH_TIMEOUT: Final = 5.0
MAX_RESPONSE_BYTES: Final = 1024 * 1024
MAX_RETRY_DELAY: Final = 60.0
_MAX_AGE: Final = re.compile(r"(?:^|,)\s*max-age\s*=\s*\"?(\d+)\"?\s*(?:,|$)", re.IGNORECASE)

# Called after every fetch: (source label, succeeded, number of keys now held, clock time).
FetchObserver = Callable[[str, bool, int, float], None]


class KeySource(Protocol):
    """Answers which public key has a kid, and which `iss` tokens of these keys must carry."""

    @property
    def label(self) -> str:
        """A bounded name for logs and metrics: the issuer URL, or `static:<name>`."""

    @property
    def issuer(self) -> str | None:
        """The `iss` that tokens must carry, or None when the source does not fix one."""

    def cached_key(self, kid: str) -> VerifyingKey | None:
        """The key held now for kid, without any I/O."""

    async def get_key(self, kid: str) -> VerifyingKey:
        """The key for kid, refreshing if policy allows; raises VerificationError
        (`unknown_key` or `keys_unavailable`)."""


def _unknown(kid: str, label: str) -> VerificationError:
    return VerificationError(Reason.UNKNOWN_KEY, f"no key with kid {kid[:64]!r} in the key set of {label}")


class StaticKeySource:
    """A fixed JWKS, e.g. a join token's `static_jwks` or `kubejoin verify --jwks`."""

    def __init__(self, keys: KeySet, *, label: str, issuer: str | None = None) -> None:
        if not keys.keys:
            raise KeySourceError(f"the JWKS has no usable signing key: {listing(keys.skipped)}")
        self._keys = keys
        self._label = label
        self._issuer = issuer

    @property
    def label(self) -> str:
        return self._label

    @property
    def issuer(self) -> str | None:
        return self._issuer

    @property
    def key_count(self) -> int:
        return len(self._keys.keys)

    def cached_key(self, kid: str) -> VerifyingKey | None:
        return self._keys.keys.get(kid)

    async def get_key(self, kid: str) -> VerifyingKey:
        key = self._keys.keys.get(kid)
        if key is None:
            raise _unknown(kid, self._label)
        return key


def max_age_of(cache_control: str | None) -> float | None:
    """The max-age of a Cache-Control header in seconds, if it has one."""
    if not cache_control:
        return None
    if "no-store" in cache_control.lower() or "no-cache" in cache_control.lower():
        return 0.0
    match = _MAX_AGE.search(cache_control)
    return float(match.group(1)) if match else None


class RemoteKeySource:
    """The cache policy shared by the sources that fetch keys. Subclasses implement `_fetch`."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = FETCH_TIMEOUT,
        min_ttl: float = MIN_TTL,
        max_ttl: float = MAX_TTL,
        unknown_kid_interval: float = UNKNOWN_KID_INTERVAL,
        observer: FetchObserver | None = None,
    ) -> None:
        self._clock = clock
        self._timeout = timeout
        self._min_ttl = min_ttl
        self._max_ttl = max_ttl
        self._unknown_kid_interval = unknown_kid_interval
        self._observer = observer
        self._keys: KeySet | None = None
        self._issuer: str | None = None
        self._fetched_at = -math.inf
        self._ttl = 0.0
        self._last_attempt = -math.inf
        self._failures = 0
        self.last_error = ""
        self.fetch_count = 0
        self._inflight: asyncio.Future[bool] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._refresher: asyncio.Task[None] | None = None

    # -- what the verifier asks -------------------------------------------------------------
    @property
    def label(self) -> str:
        raise NotImplementedError

    @property
    def issuer(self) -> str | None:
        return self._issuer

    @property
    def key_count(self) -> int:
        return len(self._keys.keys) if self._keys else 0

    def cached_key(self, kid: str) -> VerifyingKey | None:
        return self._keys.keys.get(kid) if self._keys is not None else None

    async def get_key(self, kid: str) -> VerifyingKey:
        if self._keys is None or kid not in self._keys.keys:
            # Join a fetch under way; else fetch at most once a second while no keys were ever
            # fetched (a dead issuer), and once per interval for an unknown kid (maybe a new key).
            interval = 1.0 if self._keys is None else self._unknown_kid_interval
            if self._inflight is not None or self._clock() - self._last_attempt >= interval:
                await self.refresh()
        keys = self._keys
        if keys is None:
            raise VerificationError(
                Reason.KEYS_UNAVAILABLE,
                f"no keys could be fetched yet for {self.label}: {self.last_error or 'not tried'}",
            )
        key = keys.keys.get(kid)
        if key is None:
            raise _unknown(kid, self.label)
        return key

    # -- refreshing -------------------------------------------------------------------------
    async def refresh(self) -> bool:
        """Fetches the keys once for every caller waiting at this moment. True on success."""
        if self._inflight is None:
            self._last_attempt = self._clock()
            future = asyncio.ensure_future(self._refresh_once())
            self._inflight = future
            future.add_done_callback(self._clear_inflight)
        # shield: a cancelled join must not cancel the fetch that other joins wait on.
        return await asyncio.shield(self._inflight)

    def _clear_inflight(self, _: object) -> None:
        self._inflight = None

    async def _refresh_once(self) -> bool:
        self.fetch_count += 1
        try:
            async with asyncio.timeout(self._timeout):
                keys, issuer, max_age = await self._fetch()
            if not keys.keys:
                raise KeySourceError(f"the JWKS has no usable signing key: {listing(keys.skipped)}")
        except Exception as exc:  # any failure keeps the last good keys
            self._failures += 1
            self.last_error = cut(_describe(exc, self._timeout), 300)  # it reaches answers: keys_unavailable
            log.warning("key fetch for %s failed: %s", self.label, self.last_error)
            self._notify(False)
            return False
        if keys.skipped:
            log.info("key set of %s: skipped %s", issuer, listing(keys.skipped))
        self._keys, self._issuer = keep_unchanged(keys, self._keys), issuer
        self._ttl = min(max(DEFAULT_TTL if max_age is None else max_age, self._min_ttl), self._max_ttl)
        self._fetched_at = self._clock()
        self._failures = 0
        self.last_error = ""
        self._notify(True)
        return True

    def _notify(self, ok: bool) -> None:
        if self._observer is not None:
            self._observer(self.label, ok, self.key_count, self._clock())

    def seconds_until_due(self) -> float:
        """How long the background refresher waits before the next fetch."""
        if self._failures:
            due = self._last_attempt + min(2.0 ** (self._failures - 1), MAX_RETRY_DELAY)
        else:
            due = self._fetched_at + 0.75 * self._ttl
        return max(0.0, due - self._clock())

    async def refresh_if_due(self) -> None:
        if self.seconds_until_due() <= 0:
            await self.refresh()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(self.seconds_until_due())
            await self.refresh()

    def start(self) -> None:
        """Starts the background refresher (the first fetch happens at once)."""
        if self._refresher is None:
            self._refresher = asyncio.ensure_future(self._refresh_forever())

    async def close(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._refresher
            self._refresher = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- fetching ---------------------------------------------------------------------------
    async def _fetch(self) -> tuple[KeySet, str, float | None]:
        raise NotImplementedError

    async def _get(
        self, url: str, *, headers: dict[str, str] | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> tuple[bytes, float | None]:
        """GETs url; returns the body (at most 1 MiB) and the response's max-age."""
        if self._session is None:
            self._session = aiohttp.ClientSession()
        kwargs: dict[str, Any] = {"headers": headers or {}, "allow_redirects": False}
        if ssl_context is not None:
            kwargs["ssl"] = ssl_context
        async with self._session.get(url, **kwargs) as response:
            if response.status != 200:
                raise KeySourceError(f"GET {url} answered {response.status}")
            if (response.content_length or 0) > MAX_RESPONSE_BYTES:
                raise KeySourceError(f"GET {url}: response larger than {MAX_RESPONSE_BYTES} bytes")
            body = await read_limited(response.content, MAX_RESPONSE_BYTES)
            if body is None:
                raise KeySourceError(f"GET {url}: response larger than {MAX_RESPONSE_BYTES} bytes")
            return body, max_age_of(response.headers.get("Cache-Control"))


async def read_limited(content: aiohttp.StreamReader, limit: int) -> bytes | None:
    """The whole body of a response, or None once it is longer than `limit` bytes (the caller
    says so in its own error). The one bounded reader of answers from issuers and API servers."""
    body = bytearray()
    async for chunk in content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


def _describe(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(exc, KeySourceError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _discovery_document(body: bytes) -> dict[str, Any]:
    try:
        return parse_json_object(body, "discovery document")
    except VerificationError as exc:
        raise KeySourceError(exc.message) from None


def _string_field(document: dict[str, Any], name: str) -> str:
    value = document.get(name)
    if not isinstance(value, str) or not value:
        raise KeySourceError(f"discovery document has no {name}")
    return value


def url_scheme_allowed(url: str, *, allow_http: bool) -> bool:
    """The one scheme rule for issuers, key set URLs and API servers: https://, or http:// only
    where the configuration explicitly allows it."""
    return url.startswith("https://") or (allow_http and url.startswith("http://"))


def check_url_scheme(url: str, *, allow_http: bool, what: str) -> None:
    if url_scheme_allowed(url, allow_http=allow_http):
        return
    raise KeySourceError(
        f"{what} {url!r} must be https://" + ("" if allow_http else " (http:// only with insecure_allow_http_issuer)")
    )


def _read_text(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def _ssl_context(ca_file: str | None) -> ssl.SSLContext | None:
    return ssl.create_default_context(cafile=ca_file) if ca_file else None


class OIDCKeySource(RemoteKeySource):
    """Keys of an OIDC issuer: discovery at ISSUER/.well-known/openid-configuration, whose `issuer`
    must equal the configured one exactly, then the key set at its `jwks_uri`."""

    def __init__(self, issuer: str, *, allow_http: bool = False, ca_file: str | None = None, **policy: Any) -> None:
        check_url_scheme(issuer, allow_http=allow_http, what="issuer")
        super().__init__(**policy)
        self._configured_issuer = issuer
        self._issuer = issuer
        self._allow_http = allow_http
        self._ssl = _ssl_context(ca_file)

    @property
    def label(self) -> str:
        return self._configured_issuer

    async def _fetch(self) -> tuple[KeySet, str, float | None]:
        url = self._configured_issuer.rstrip("/") + "/.well-known/openid-configuration"
        body, _ = await self._get(url, ssl_context=self._ssl)
        document = _discovery_document(body)
        issuer = _string_field(document, "issuer")
        if issuer != self._configured_issuer:
            raise KeySourceError(
                f"discovery document names issuer {issuer[:200]!r}, expected {self._configured_issuer!r}"
            )
        jwks_uri = _string_field(document, "jwks_uri")
        check_url_scheme(jwks_uri, allow_http=self._allow_http, what="jwks_uri")
        jwks, max_age = await self._get(jwks_uri, ssl_context=self._ssl)
        return parse_jwks(jwks), issuer, max_age


class InClusterKeySource(RemoteKeySource):
    """Keys of the cluster this process runs in, read from its API server with the pod's own
    token (needs `system:service-account-issuer-discovery`). The token and CA files are re-read
    when they change, because kubelet rotates the token."""

    def __init__(self, api_server: str, *, token_file: str, ca_file: str | None, **policy: Any) -> None:
        check_url_scheme(api_server, allow_http=False, what="api_server")
        super().__init__(**policy)
        self._api_server = api_server.rstrip("/")
        self._token_file = token_file
        self._ca_file = ca_file
        self._ca_stamp: tuple[int, int] | None = None
        self._ssl: ssl.SSLContext | None = None

    @property
    def label(self) -> str:
        return self._issuer or self._api_server

    def _current_ssl(self) -> ssl.SSLContext | None:
        if not self._ca_file:
            return None
        stat = os.stat(self._ca_file)
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._ca_stamp:
            self._ssl, self._ca_stamp = _ssl_context(self._ca_file), stamp
        return self._ssl

    async def _fetch(self) -> tuple[KeySet, str, float | None]:
        bearer = (await asyncio.to_thread(_read_text, self._token_file)).strip()
        headers = {"Authorization": f"Bearer {bearer}"}
        context = self._current_ssl()
        body, _ = await self._get(
            self._api_server + "/.well-known/openid-configuration", headers=headers, ssl_context=context
        )
        issuer = _string_field(_discovery_document(body), "issuer")
        # The discovery document's jwks_uri is the public address; inside the cluster the API
        # server serves the same key set itself.
        jwks, max_age = await self._get(self._api_server + "/openid/v1/jwks", headers=headers, ssl_context=context)
        return parse_jwks(jwks), issuer, max_age
