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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import aiohttp

from ..errors import KeySourceError
from ..jose import load_strict_json
from ..keys import KeySet, parse_jwks
from ..sources import MAX_RESPONSE_BYTES, RemoteKeySource, max_age_of, read_limited

# The API server's metadata-only representations (meta.k8s.io/v1), with full objects as fallback.
META_LIST_ACCEPT: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
META_ACCEPT: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"
REQUEST_TIMEOUT: Final = 5.0
LIST_PAGE: Final = 500  # client-go's reflector pages its lists the same way


@dataclass(frozen=True, slots=True)
class Kind:
    """A resource the binding watches."""

    name: str  # the metrics label: pod, serviceaccount, node
    resource: str  # the API's plural: pods, serviceaccounts, nodes
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
KINDS: Final = (SERVICE_ACCOUNT, POD, NODE)


class ApiError(Exception):
    """A request to the API server failed: `status` is the HTTP status, 0 when none came back."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class ObjectMeta(NamedTuple):
    """What the binding needs of an object: decoded from its metadata, the rest ignored."""

    namespace: str
    name: str
    uid: str
    deleted_at: float | None  # deletionTimestamp as unix seconds

    @classmethod
    def decode(cls, value: object) -> ObjectMeta:
        """Decodes an object (PartialObjectMetadata or a full object); raises ApiError if it has no
        name and uid, which the API server never sends."""
        meta = value.get("metadata") if isinstance(value, dict) else None
        if not isinstance(meta, dict):
            raise ApiError(0, "object without metadata in the API server's answer")
        name, uid, namespace = meta.get("name"), meta.get("uid"), meta.get("namespace", "")
        if not (isinstance(name, str) and name and isinstance(uid, str) and uid and isinstance(namespace, str)):
            raise ApiError(0, "object without name or uid in the API server's answer")
        deleted = meta.get("deletionTimestamp")
        # Namespaces repeat across thousands of objects: one string each, not one per object.
        return cls(sys.intern(namespace), name, uid, _timestamp(deleted) if deleted is not None else None)


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
    ) -> None:
        if (kubeconfig is None) == (api_server is None):
            raise ValueError("give either api_server or kubeconfig")
        self._api_server = api_server.rstrip("/") if api_server else None
        self._ca_file = ca_file
        self._token_file = token_file
        self._kubeconfig = kubeconfig
        self.timeout = timeout
        self._api: Any = None  # kubernetes_asyncio.client.ApiClient
        self._building: asyncio.Lock | None = None

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
                await load_kube_config(config_file=self._kubeconfig, client_configuration=configuration)
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
        self, path: str, *, query: list[tuple[str, str]] | None = None, accept: str, read_timeout: float | None = None
    ) -> aiohttp.ClientResponse:
        """Starts a GET and returns the streaming response (2xx only); raises ApiError."""
        timeout = aiohttp.ClientTimeout(
            total=None if read_timeout else self.timeout, sock_connect=self.timeout, sock_read=read_timeout
        )
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
        except OSError as exc:  # the token file is unreadable, the connection refused, ...
            raise ApiError(0, f"GET {path}: {exc}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, f"GET {path}: {type(exc).__name__}: {exc}") from None
        if 200 <= response.status < 300:
            return response  # type: ignore[no-any-return]
        try:
            body = await response.content.read(64 * 1024)
        finally:
            response.release()
        raise ApiError(response.status, f"GET {path} answered {response.status}: {_status_message(body)}")

    async def read(self, path: str, *, query: list[tuple[str, str]] | None = None, accept: str) -> bytes:
        """The whole body of a GET, at most MAX_RESPONSE_BYTES * 64 (a list page); raises ApiError."""
        response = await self.open(path, query=query, accept=accept)
        try:
            async with asyncio.timeout(self.timeout * 6):
                body = await read_limited(response.content, MAX_RESPONSE_BYTES * 64)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, f"GET {path}: reading the answer failed: {type(exc).__name__}") from None
        finally:
            response.release()
        if body is None:
            raise ApiError(0, f"GET {path}: answer too large")
        return body

    async def list_page(self, kind: Kind, continue_token: str | None) -> tuple[list[ObjectMeta], str, str | None]:
        """One page of a list: its objects, the list's resourceVersion, the continue token."""
        query = [("limit", str(LIST_PAGE))]
        if continue_token:
            query.append(("continue", continue_token))
        document = _json(await self.read(kind.collection, query=query, accept=META_LIST_ACCEPT))
        items, meta = document.get("items"), document.get("metadata")
        if not isinstance(items, list) or not isinstance(meta, dict):
            raise ApiError(0, f"GET {kind.collection}: not a list")
        version = meta.get("resourceVersion")
        if not isinstance(version, str) or not version:
            raise ApiError(0, f"GET {kind.collection}: list without resourceVersion")
        following = meta.get("continue") or None
        return [ObjectMeta.decode(item) for item in items], version, following

    async def get(self, kind: Kind, namespace: str, name: str) -> ObjectMeta | None:
        """The object, or None when the API server says 404."""
        try:
            body = await self.read(kind.object_path(namespace, name), accept=META_ACCEPT)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return ObjectMeta.decode(_json(body))

    async def watch(self, kind: Kind, resource_version: str, timeout_seconds: int) -> AsyncIterator[WatchEvent]:
        """Events after resource_version until the server ends the watch (after timeout_seconds).
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
            return await self.open(kind.collection, query=query, accept=META_ACCEPT, read_timeout=timeout_seconds + 30)

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
                    yield WatchEvent(kind_of, ObjectMeta.decode(event.get("raw_object")), version)
        except ApiException as exc:
            raise ApiError(exc.status or 0, f"watch of {kind.resource}: {exc.reason}") from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ApiError(0, f"watch of {kind.resource}: {type(exc).__name__}: {exc}") from None
        finally:
            await watcher.close()

    async def close(self) -> None:
        if self._api is not None:
            await self._api.close()
            self._api = None


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
