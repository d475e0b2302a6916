"""The cluster's API server, reached through kubernetes_asyncio.

kubernetes_asyncio does the API machinery: configuration from a kubeconfig file (server, CA, client
certificates, tokens, exec plugins) or from in-cluster settings, the aiohttp session with the API
server's CA, the bearer header on every request (through its `refresh_api_key_hook`, which we point
at the token file so kubelet's rotated token is read for every request), and watch streams (lines,
resourceVersion tracking, BOOKMARK events, ERROR events turned into `ApiException`, 410 included).

What it cannot express is the metadata-only form of its typed methods: they overwrite the `Accept`
header. So requests go through its generic `ApiClient.call_api` with our `Accept`, and the answers
are decoded here (`ObjectMeta`), never into its generated models (100,000 V1Pod objects would cost
seconds and hundreds of MB). Full objects are understood too: only `metadata` is read.

kubernetes_asyncio is imported at the first request, not with this module: importing it costs
about 100 ms and 35 MB (its generated models), which `binding.mode: off` and `kubejoin verify`
should not pay.
"""

from __future__ import annotations

import asyncio
import datetime
import sys
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import aiohttp
from aiohttp.http_exceptions import LineTooLong

from ..errors import KeySourceError
from ..jose import load_strict_json
from ..keys import KeySet, parse_jwks
from ..labels import EMPTY, LabelShape, Packed
from ..sources import MAX_RESPONSE_BYTES, RemoteKeySource, max_age_of, read_limited

# The API server's metadata-only representations (meta.k8s.io/v1), with full objects as fallback.
META_LIST_ACCEPT: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
META_ACCEPT: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
# A GET of one object (a join may be waiting on it), discovery, the JWKS, and any connection.
REQUEST_TIMEOUT: Final = 5.0
# One page of a list, headers and body: 500 objects can take an API server under load longer
# than one object does. kube-apiserver gives up on a request itself after 60 s (--request-timeout).
PAGE_TIMEOUT: Final = 60.0
LIST_PAGE: Final = 500  # client-go's reflector pages its lists the same way


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource the binding watches."""

    name: str  # the metrics label: pod, serviceaccount, node, namespace
    resource: str  # the API's plural: pods, serviceaccounts, nodes, namespaces
    namespaced: bool

    @property
    def collection(self) -> str:
        return f"/api/v1/{self.resource}"

    def object_path(self, namespace: str, name: str) -> str:
        if self.namespaced:
            return f"/api/v1/namespaces/{namespace}/{self.resource}/{name}"
        return f"/api/v1/{self.resource}/{name}"


POD: Final = Kind("pod", "pods", True)
SERVICE_ACCOUNT: Final = Kind("serviceaccount", "serviceaccounts", True)
NODE: Final = Kind("node", "nodes", False)
# Watched only while some allow rule reads namespace labels (binding.LiveBinding.want).
NAMESPACE: Final = Kind("namespace", "namespaces", False)
KINDS: Final = (SERVICE_ACCOUNT, POD, NODE)  # the kinds every binding watches (nodes unless nodes: false)


class ApiError(Exception):
    """A request to the API server failed: `status` is the HTTP status, 0 when none came back.
    `unreachable` when the server could not be reached or said it cannot serve (no connection,
    a timeout, a connection cut, 502, 503, 504): retrying is worth it as soon as it answers again.
    An answer it gave on purpose (403, 410, 429, a bad body) is not that."""

    def __init__(self, status: int, message: str, *, unreachable: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.unreachable = unreachable or status in (502, 503, 504)


class ObjectMeta(NamedTuple):
    """What the binding needs of an object: decoded from its metadata, the rest ignored."""

    namespace: str
    name: str
    uid: str
    deleted_at: float | None  # deletionTimestamp as unix seconds
    labels: Packed = EMPTY  # only the keys of the shape it was decoded with

    @classmethod
    def decode(cls, value: object, labels: LabelShape | None = None) -> ObjectMeta:
        """Decodes an object (PartialObjectMetadata or a full object), keeping only the label keys
        `labels` names (none without it); raises ApiError if it has no name and uid, which the API
        server never sends."""
        meta = value.get("metadata") if isinstance(value, dict) else None
        if not isinstance(meta, dict):
            raise ApiError(0, "object without metadata in the API server's answer")
        name, uid, namespace = meta.get("name"), meta.get("uid"), meta.get("namespace", "")
        if not (isinstance(name, str) and name and isinstance(uid, str) and uid and isinstance(namespace, str)):
            raise ApiError(0, "object without name or uid in the API server's answer")
        deleted = meta.get("deletionTimestamp")
        found = meta.get("labels") if labels is not None else None
        packed = labels.pack(found) if labels is not None and isinstance(found, dict) and found else EMPTY
        # Namespaces repeat across thousands of objects: one string each, not one per object.
        return cls(sys.intern(namespace), name, uid, _timestamp(deleted) if deleted is not None else None, packed)


def _timestamp(value: object) -> float:
    if not isinstance(value, str):
        raise ApiError(0, "deletionTimestamp is not a string")
    try:
        return datetime.datetime.fromisoformat(value).timestamp()
    except ValueError:
        raise ApiError(0, f"deletionTimestamp {value[:40]!r} is not RFC 3339") from None


class WatchEvent(NamedTuple):
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: ObjectMeta | None  # None for BOOKMARK
    resource_version: str


def _read_token(path: str) -> str:
    with open(path, encoding="utf-8") as handle:
        return handle.read().strip()


class KubeAPI:
    """One API server, from in-cluster settings (server, CA file, token file) or a kubeconfig.

    Nothing happens at construction; the client is built at the first request, in the event loop.
    """

    def __init__(
        self,
        *,
        api_server: str | None = None,
        ca_file: str | None = None,
        token_file: str | None = None,
        kubeconfig: str | None = None,
        timeout: float = REQUEST_TIMEOUT,
        page_timeout: float = PAGE_TIMEOUT,
    ) -> None:
        if (kubeconfig is None) == (api_server is None):
            raise ValueError("give either api_server or kubeconfig")
        self._api_server = api_server.rstrip("/") if api_server else None
        self._ca_file = ca_file
        self._token_file = token_file
        self._kubeconfig = kubeconfig
        self.timeout = timeout
        self.page_timeout = page_timeout
        self._api: Any = None  # kubernetes_asyncio.client.ApiClient
        self._building: asyncio.Lock | None = None
        self._probe: asyncio.Future[bool] | None = None
        self._probed_at = 0.0

    @property
    def label(self) -> str:
        return self._api_server or f"kubeconfig:{self._kubeconfig}"

    async def _client(self) -> Any:
        if self._api is not None:
            return self._api
        if self._building is None:
            self._building = asyncio.Lock()
        async with self._building:
            if self._api is None:
                from kubernetes_asyncio.client import ApiClient

                api = ApiClient(await self._configuration())
                api.user_agent = "kubejoin"
                self._api = api
        return self._api

    async def _configuration(self) -> Any:
        from kubernetes_asyncio.client import Configuration

        configuration = Configuration()
        if self._kubeconfig is not None:
            from kubernetes_asyncio.config import load_kube_config

            try:
                # persist_config=False: kubejoin never writes the kubeconfig (an auth provider's
                # refreshed token written back would change a registered cluster's fingerprint
                # and so replace the cluster; the file may also be a read-only Secret mount)
                await load_kube_config(
                    config_file=self._kubeconfig, client_configuration=configuration, persist_config=False
                )
            except Exception as exc:  # the library raises ConfigException, OSError, yaml errors
                raise ApiError(0, f"kubeconfig {self._kubeconfig}: {exc}") from None
            return configuration
        configuration.host = self._api_server
        configuration.ssl_ca_cert = self._ca_file
        if self._token_file:
            token_file = self._token_file

            async def read_token(config: Any, *_: object) -> None:
                # kubelet rotates the projected token: read it for every request, as client-go does
                config.api_key["BearerToken"] = await asyncio.to_thread(_read_token, token_file)

            configuration.api_key_prefix["BearerToken"] = "Bearer"
            configuration.api_key["BearerToken"] = ""
            configuration.refresh_api_key_hook = read_token
        return configuration

    async def open(
        self,
        path: str,
        *,
        query: list[tuple[str, str]] | None = None,
        accept: str,
        total: float | None = None,
        read_timeout: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Starts a GET and returns the streaming response (2xx only); raises ApiError.

        `total` bounds the whole answer, body included (default: `timeout`); a stream (a watch)
        gives `read_timeout` instead, the longest silence between two reads."""
        if read_timeout is None and total is None:
            total = self.timeout
        timeout = aiohttp.ClientTimeout(total=total, sock_connect=self.timeout, sock_read=read_timeout)
        try:
            client = await self._client()
            response = await client.call_api(
                path,
                "GET",
                query_params=query or [],
                header_params={"Accept": accept},
                auth_settings=["BearerToken"],
                _preload_content=False,
                _return_http_data_only=True,
                _request_timeout=timeout,
            )
        except ApiError:
            raise
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            # OSError: the token file unreadable, the connection refused, ...
            raise _failed(f"GET {path}", exc, timeout) from None
        if 200 <= response.status < 300:
            return response  # type: ignore[no-any-return]
        try:
            body = await response.content.read(64 * 1024)
        finally:
            response.release()
        raise ApiError(response.status, f"GET {path} answered {response.status}: {_status_message(body)}")

    async def read(
        self, path: str, *, query: list[tuple[str, str]] | None = None, accept: str, total: float | None = None
    ) -> bytes:
        """The whole body of a GET, at most MAX_RESPONSE_BYTES * 64 (a list page), within `total`
        seconds (default: `timeout`), body included; raises ApiError."""
        timeout = aiohttp.ClientTimeout(total=total or self.timeout, sock_connect=self.timeout)
        response = await self.open(path, query=query, accept=accept, total=timeout.total)
        try:
            # aiohttp's total timeout runs on through the body: no timeout of our own here
            body = await read_limited(response.content, MAX_RESPONSE_BYTES * 64)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(f"GET {path}: reading the answer", exc, timeout) from None
        finally:
            response.release()
        if body is None:
            raise ApiError(0, f"GET {path}: answer too large")
        return body

    async def ready(self, *, shared_within: float = 0.0) -> bool:
        """Whether the API server says it can serve (GET /readyz answers 2xx; kube-apiserver lets
        every caller ask). Callers share a probe in flight, and one that started less than
        `shared_within` seconds ago: the reflectors of one API server waiting out a backoff ask
        at the same ticks, and one request answers them all."""
        loop = asyncio.get_running_loop()
        probe = self._probe
        if probe is None or (probe.done() and loop.time() - self._probed_at >= shared_within):
            self._probed_at = loop.time()
            probe = self._probe = asyncio.ensure_future(self._probe_once())
        return await asyncio.shield(probe)

    async def _probe_once(self) -> bool:
        try:
            response = await self.open("/readyz", accept="text/plain")
        except ApiError:
            return False
        response.release()
        return True

    async def list_page(
        self, kind: Kind, continue_token: str | None, labels: LabelShape | None = None
    ) -> tuple[list[ObjectMeta], str, str | None]:
        """One page of a list: its objects (with the label keys `labels` keeps), the list's
        resourceVersion, the continue token."""
        query = [("limit", str(LIST_PAGE))]
        if continue_token:
            query.append(("continue", continue_token))
        # each page within its own time: a list of 100,000 objects is 200 requests
        document = _json(
            await self.read(kind.collection, query=query, accept=META_LIST_ACCEPT, total=self.page_timeout)
        )
        items, meta = document.get("items"), document.get("metadata")
        if not isinstance(items, list) or not isinstance(meta, dict):
            raise ApiError(0, f"GET {kind.collection}: not a list")
        version = meta.get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise ApiError(0, f"GET {kind.collection}: list without resourceVersion")
        following = meta.get("continue") or None
        return [ObjectMeta.decode(item, labels) for item in items], version, following

    async def get(self, kind: Kind, namespace: str, name: str, labels: LabelShape | None = None) -> ObjectMeta | None:
        """The object (with the label keys `labels` keeps), or None when the API server says 404."""
        try:
            body = await self.read(kind.object_path(namespace, name), accept=META_ACCEPT)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectMeta.decode(_json(body), labels)

    async def watch(
        self,
        kind: Kind,
        resource_version: str,
        timeout_seconds: int,
        *,
        labels: LabelShape | None = None,
        opened: Callable[[], None] | None = None,
    ) -> AsyncGenerator[WatchEvent, None]:
        """Events after resource_version until the server ends the watch (after timeout_seconds),
        objects with the label keys `labels` keeps. Calls `opened` once the API server has
        accepted the watch (its answer's headers came).
        Raises ApiError; status 410 when resource_version is too old (relist)."""
        from kubernetes_asyncio.client.exceptions import ApiException
        from kubernetes_asyncio.watch import Watch

        async def start(*, resource_version: str, timeout_seconds: int, **_: object) -> aiohttp.ClientResponse:
            """Opens the watch stream for kubernetes_asyncio's Watch."""
            query = [
                ("watch", "1"),
                ("resourceVersion", resource_version),
                ("allowWatchBookmarks", "true"),
                ("timeoutSeconds", str(timeout_seconds)),
            ]
            # the server ends the stream after timeout_seconds; silence beyond that is a dead peer
            # (the reflector's idle timeout, shorter, is what normally notices one)
            response = await self.open(
                kind.collection, query=query, accept=META_ACCEPT, read_timeout=timeout_seconds + 30
            )
            if opened is not None:
                opened()
            return response

        watcher = Watch()  # `start` names no return type: events stay dicts, never models
        try:
            stream = watcher.stream(start, resource_version=resource_version, timeout_seconds=timeout_seconds)
            async for event in stream:
                if not isinstance(event, dict):
                    raise ApiError(0, f"watch of {kind.resource}: a line that is not a JSON event")
                kind_of = str(event.get("type"))
                version = str(watcher.resource_version)
                if kind_of == "BOOKMARK":
                    yield WatchEvent(kind_of, None, version)
                elif kind_of in ("ADDED", "MODIFIED", "DELETED"):
                    yield WatchEvent(kind_of, ObjectMeta.decode(event.get("raw_object"), labels), version)
        except ApiError:  # from `start`, or an object without metadata
            raise
        except ApiException as exc:
            raise ApiError(exc.status or 0, f"watch of {kind.resource}: {exc.reason}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _failed(
                f"watch of {kind.resource}", exc, aiohttp.ClientTimeout(sock_read=timeout_seconds + 30)
            ) from None
        except LineTooLong as exc:  # aiohttp's line limit: twice kubernetes_asyncio's read_bufsize
            limit = exc.args[1] if len(exc.args) > 1 else "its limit of"
            raise ApiError(
                0,
                f"watch of {kind.resource}: an event line longer than {limit} bytes (objects the API "
                "server stores are at most about 1.5 MiB); relisting instead",
            ) from None
        except Exception as exc:  # kubernetes_asyncio raises bare Exception, KeyError, ... for events it cannot read
            raise ApiError(
                0, f"watch of {kind.resource}: an event the client library could not read ({_brief(exc)})"
            ) from None
        finally:
            await watcher.close()

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._api is not None:
            await self._api.close()
            self._api = None


def _failed(what: str, exc: BaseException, timeout: aiohttp.ClientTimeout) -> ApiError:
    """A request that got no (whole) answer, said in words: a TimeoutError's own text is empty."""
    if isinstance(exc, aiohttp.ConnectionTimeoutError):
        said = f"no connection within {timeout.sock_connect:g} s"
    elif isinstance(exc, aiohttp.SocketTimeoutError):
        said = f"nothing received for {timeout.sock_read:g} s"
    elif isinstance(exc, TimeoutError):
        said = f"no complete answer within {timeout.total:g} s" if timeout.total else "timed out"
    else:
        said = _brief(exc)
    return ApiError(0, f"{what}: {said}", unreachable=True)


def _brief(exc: BaseException) -> str:
    """An exception's type and the start of its text (a library may put a whole event in it)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text[:200]}{'...' if len(text) > 200 else ''}" if text else type(exc).__name__


def _json(body: bytes) -> dict[str, Any]:
    try:
        value = load_strict_json(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(0, "the API server's answer is not JSON") from None
    if not isinstance(value, dict):
        raise ApiError(0, "the API server's answer is not a JSON object")
    return value


def _status_message(body: bytes) -> str:
    """The message of a Kubernetes Status answer, else the start of the body."""
    try:
        value = load_strict_json(body)
        if isinstance(value, dict) and isinstance(value.get("message"), str):
            return str(value["message"])[:300]
    except (ValueError, UnicodeDecodeError):
        pass
    return body[:200].decode("utf-8", "replace")


class KubeKeySource(RemoteKeySource):
    """The cluster's keys read through a KubeAPI: for `in_cluster.kubeconfig`, where the server,
    CA and credentials come from a kubeconfig file instead of the pod's own files."""

    def __init__(self, api: KubeAPI, **policy: Any) -> None:
        super().__init__(**policy)
        self._api = api

    @property
    def label(self) -> str:
        return self._issuer or self._api.label

    async def close(self) -> None:
        await super().close()
        await self._api.close()

    async def _fetch(self) -> tuple[KeySet, str, float | None]:
        try:
            discovery = _json(await self._api.read("/.well-known/openid-configuration", accept="application/json"))
            issuer = discovery.get("issuer")
            if not isinstance(issuer, str) or not issuer:
                raise KeySourceError("discovery document has no issuer")
            response = await self._api.open("/openid/v1/jwks", accept="application/jwk-set+json, application/json")
            try:
                max_age = max_age_of(response.headers.get("Cache-Control"))
                jwks = await read_limited(response.content, MAX_RESPONSE_BYTES)
            finally:
                response.release()
        except ApiError as exc:
            raise KeySourceError(str(exc)) from None
        if jwks is None:
            raise KeySourceError(f"the JWKS is larger than {MAX_RESPONSE_BYTES} bytes")
        return parse_jwks(jwks), issuer, max_age
