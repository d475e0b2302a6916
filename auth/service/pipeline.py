"""The one request pipeline of every endpoint that takes a body (joins and TokenReviews):
admission, a bounded body read, and the refusals these end in.

In this order, for every request:
1. `admission.begin()`: from here the drain at SIGTERM waits for it;
2. the endpoint's own checks before any body is read (the join's Content-Type, the review's
   caller): `Exchange.admit`;
3. one of its address's few reading places (else 429 `overloaded`), then the body: at most
   MAX_BODY bytes (else 413), within `limits.request_timeout` (else 408), and a client that leaves
   or breaks the framing mid-body is a `bad_request`, not an error of ours;
4. one of the `max_in_flight` slots, taken only now that there is work to do (else 429);
5. the endpoint's answer to the body: `Exchange.answer`.

An endpoint supplies one `Exchange` per request: its checks, its answer, and how a refusal of the
pipeline (a JoinError with the contract's code: the reason label of joins and reviews alike) is
shown and counted (a join's `{"error": ...}`, a review's Kubernetes `Status`). A
request cancelled on the way (at shutdown, after the drain) has no outcome: it is neither counted
nor logged as a refusal.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final, Protocol

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from verifier.errors import Reason

from .admission import Admission
from .errors import JoinError, JoinReason

log = logging.getLogger("kubejoin.server")
MAX_BODY: Final = 64 * 1024  # bytes of a request body, for every endpoint (CONTRACT.md)
# Retry-After, in seconds: a reading place or a slot frees within a request's time; keys or the
# cluster are retried in the background about this often while unreachable.
RETRY_OVERLOADED: Final = "1"
RETRY_UNAVAILABLE: Final = "5"
RETRY_LATER: Final = frozenset({Reason.KEYS_UNAVAILABLE, Reason.BINDING_UNAVAILABLE})  # 503s worth a retry
INTERNAL: Final = "internal error; the service log has the details"
_TOO_LARGE: Final = f"the body is limited to {MAX_BODY} bytes"


def retry_after(code: str) -> dict[str, str] | None:
    """The Retry-After header of a refusal with this code, if it has one."""
    if code == JoinReason.OVERLOADED:
        return {"Retry-After": RETRY_OVERLOADED}
    if code in RETRY_LATER:
        return {"Retry-After": RETRY_UNAVAILABLE}
    return None


class Exchange(Protocol):
    """One request, as its endpoint serves it."""

    async def admit(self) -> web.Response | None:
        """Checks made before the body is read: a response refuses the request (the exchange has
        counted and logged it); None lets it go on."""

    async def answer(self, body: bytes) -> web.Response:
        """The answer to the whole body, the endpoint's own refusals included (counted and logged).
        Raises only for what nobody expected: the pipeline answers that with `internal_error`."""

    def refuse(self, error: JoinError) -> web.Response:
        """Counts and logs a refusal of the pipeline (`overloaded`, `payload_too_large`,
        `request_timeout`, `bad_request`, `internal_error`) and answers it."""


class Pipeline:
    """Runs every request of the endpoints that take a body through the same steps."""

    def __init__(self, admission: Admission, *, request_timeout: float) -> None:
        self.admission = admission
        self._request_timeout = request_timeout

    async def run(self, request: web.Request, exchange: Exchange) -> web.Response:
        admission = self.admission
        admission.begin()
        try:
            refused = await exchange.admit()
            if refused is not None:
                return refused
            address = request.remote or ""
            if not admission.start_reading(address):
                message = "too many requests from this address are still sending their body; retry shortly"
                return _overloaded(exchange, message)
            try:
                body = await self._read(request)
            except JoinError as exc:
                return exchange.refuse(exc)
            finally:
                admission.done_reading(address)
            if not admission.take_slot():
                return _overloaded(exchange, "too many requests in flight; retry shortly")
            try:
                return await exchange.answer(body)
            finally:
                admission.release_slot()
        except Exception:  # not a cancellation (a BaseException): that is no error of ours
            log.exception("%s %s failed unexpectedly", request.method, request.path)
            return exchange.refuse(JoinError(JoinReason.INTERNAL_ERROR, INTERNAL))
        finally:
            admission.end()

    async def _read(self, request: web.Request) -> bytes:
        """The whole body, or JoinError saying why not."""
        if (request.content_length or 0) > MAX_BODY:
            raise JoinError(JoinReason.PAYLOAD_TOO_LARGE, _TOO_LARGE)
        try:
            if request.content.is_eof():  # the whole body is here already: no timer needed
                return await request.read()
            async with asyncio.timeout(self._request_timeout):
                return await request.read()
        except TimeoutError:
            raise JoinError(JoinReason.REQUEST_TIMEOUT, "the request body did not arrive in time") from None
        except web.HTTPRequestEntityTooLarge:  # a chunked body beyond the application's client_max_size
            raise JoinError(JoinReason.PAYLOAD_TOO_LARGE, _TOO_LARGE) from None
        except (ConnectionError, HttpProcessingError):
            # The client left, or broke the framing, before the whole body arrived: its refusal,
            # not a server error, and nothing worth a traceback.
            message = "the connection closed before the whole body arrived"
            raise JoinError(JoinReason.BAD_REQUEST, message) from None


def _overloaded(exchange: Exchange, message: str) -> web.Response:
    response = exchange.refuse(JoinError(JoinReason.OVERLOADED, message))
    response.force_close()  # the body may not have been read: the connection cannot carry another request
    return response
