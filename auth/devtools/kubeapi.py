"""A fake Kubernetes API server for the demo, the tests and the benchmarks: not for production.

It serves what kubejoin and kubectl ask of a real one, in the API server's own shapes: the
ServiceAccount issuer's discovery document and JWKS (from a LocalIssuer), API discovery (`/api`,
`/api/v1`, `/apis`, `/version`), and pods, service accounts, nodes and namespaces, with labels:
list (paged with `limit` and `continue`), watch (ADDED, MODIFIED, DELETED, BOOKMARK, from a
resourceVersion, an ERROR event with 410 Expired when that resourceVersion is older than the
history kept) and get, each as full objects, as PartialObjectMetadata(List) or as a Table when the
Accept header asks for it, a PATCH of metadata.labels (what `kubectl label` sends), and `/readyz`.
Every request needs the bearer token. Tests change the objects and their labels, compact the
history, forbid a resource (RBAC missing), take the whole API down, make watches go silent or end
after one bookmark, slow lists down, and count the requests made. A fake run as a process of its own
(`python -m auth.devtools.kubeapi`) takes the same switches at `POST /fake/settings` (a JSON
object, e.g. `{"silent_watches": true}`), for measurements from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from aiohttp import web

from .issuer import DISCOVERY_PATH, JWKS_PATH, LocalIssuer

KINDS: Final = {
    "pods": ("Pod", True),
    "serviceaccounts": ("ServiceAccount", True),
    "nodes": ("Node", False),
    "namespaces": ("Namespace", False),
}
SHORT_NAMES: Final = {"pods": ["po"], "serviceaccounts": ["sa"], "nodes": ["no"], "namespaces": ["ns"]}
# What PATCH understands (kubectl label sends a merge patch); both read alike for metadata.labels.
PATCH_TYPES: Final = ("application/merge-patch+json", "application/strategic-merge-patch+json")
HISTORY: Final = 100_000  # watch events kept; a watch from before the oldest gets 410
_TABLE_COLUMNS: Final = [
    {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0},
    {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0},
]


def _rfc3339(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_found(resource: str, name: str) -> web.Response:
    return web.json_response(_status(404, "NotFound", f'{resource} "{name}" not found'), status=404)


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


@dataclass(eq=False)  # by identity: kept in a set
class _Watcher:
    resource: str
    namespace: str | None
    queue: asyncio.Queue[tuple[int, str, dict[str, Any]] | None] = field(default_factory=asyncio.Queue)


class FakeKubeAPI:
    """The objects and the HTTP face of one fake cluster."""

    def __init__(self, issuer: LocalIssuer, *, token: str | None = None, bookmark_every: float = 1.0) -> None:
        self.issuer = issuer
        self.token = token
        self.bookmark_every = bookmark_every
        self.objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = {resource: {} for resource in KINDS}
        self.version = 1
        self.history: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, type, resource, object)
        self.oldest = 1  # a watch from a resourceVersion below this is answered 410
        self.requests: Counter[tuple[str, str]] = Counter()  # (verb, resource)
        self.forbidden: set[str] = set()  # resources whose requests get 403, as without RBAC
        self.forbidden_verbs: set[tuple[str, str]] = set()  # (verb, resource) pairs that get 403
        self.empty_watches = False  # watches answer 200 with no events and end at once
        self.bookmark_then_end = False  # watches send one bookmark and end
        self.silent_watches = False  # open watches deliver nothing (no event, no bookmark) and stay open
        self.list_delay = 0.0  # seconds each list page waits before it is answered
        self.unavailable = False  # every API request gets 503 and open watches end
        self.closing = False  # shutting down: watches end, also those opened on a kept-alive connection
        self._watchers: set[_Watcher] = set()
        self.held: list[tuple[_Watcher, tuple[int, str, dict[str, Any]]]] | None = None
        self.get_gate: asyncio.Event | None = None  # when set here, GET answers wait until it is set
        self._snapshots: dict[int, list[dict[str, Any]]] = {}

    # -- changing the cluster -------------------------------------------------------------
    def _emit(self, kind: str, resource: str, obj: dict[str, Any]) -> None:
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        snapshot = json.loads(json.dumps(obj))
        self.history.append((self.version, kind, resource, snapshot))
        if len(self.history) > HISTORY:
            del self.history[: len(self.history) - HISTORY]
            self.oldest = self.history[0][0]
        for watcher in self._watchers:
            if watcher.resource == resource and watcher.namespace in (None, obj["metadata"].get("namespace")):
                if self.held is not None:
                    self.held.append((watcher, (self.version, kind, snapshot)))
                else:
                    watcher.queue.put_nowait((self.version, kind, snapshot))

    def hold(self) -> None:
        """Watches stop delivering events (a lagging watch) until release()."""
        self.held = []

    def release(self) -> None:
        held, self.held = self.held or [], None
        for watcher, item in held:
            watcher.queue.put_nowait(item)

    def add(
        self,
        resource: str,
        namespace: str,
        name: str,
        *,
        uid: str | None = None,
        labels: dict[str, str] | None = None,
        **spec: Any,
    ) -> str:
        """Creates (or replaces, with a new uid) an object; returns its uid."""
        kind, namespaced = KINDS[resource]
        uid = uid or str(uuid.uuid4())
        metadata: dict[str, Any] = {"name": name, "uid": uid, "creationTimestamp": _rfc3339(time.time())}
        if namespaced:
            metadata["namespace"] = namespace
        if labels:
            metadata["labels"] = dict(labels)
        obj: dict[str, Any] = {"apiVersion": "v1", "kind": kind, "metadata": metadata}
        if resource == "pods":
            obj["spec"] = {"serviceAccountName": spec.get("service_account", "default"), "nodeName": spec.get("node")}
            obj["status"] = {"phase": "Running"}
        key = (namespace if namespaced else "", name)
        if key in self.objects[resource]:
            self.delete(resource, namespace, name)
        self.objects[resource][key] = obj
        self._emit("ADDED", resource, obj)
        return uid

    def uid(self, resource: str, namespace: str, name: str) -> str:
        return str(self.objects[resource][(namespace if KINDS[resource][1] else "", name)]["metadata"]["uid"])

    def add_pod(
        self,
        namespace: str,
        name: str,
        *,
        service_account: str = "default",
        node: str = "node-1",
        labels: dict[str, str] | None = None,
    ) -> str:
        """A pod, with its namespace, service account and node created first if they do not exist
        yet."""
        if ("", namespace) not in self.objects["namespaces"]:
            self.add_namespace(namespace)
        if (namespace, service_account) not in self.objects["serviceaccounts"]:
            self.add("serviceaccounts", namespace, service_account)
        if ("", node) not in self.objects["nodes"]:
            self.add("nodes", "", node)
        return self.add("pods", namespace, name, service_account=service_account, node=node, labels=labels)

    def add_namespace(self, name: str, *, labels: dict[str, str] | None = None) -> str:
        """A namespace, with the label the API server gives every one (kubernetes.io/metadata.name)."""
        return self.add("namespaces", "", name, labels={"kubernetes.io/metadata.name": name, **(labels or {})})

    def label(self, resource: str, namespace: str, name: str, labels: dict[str, str | None]) -> None:
        """Sets labels (None removes one), as `kubectl label` does: a MODIFIED event follows."""
        obj = self.objects[resource][(namespace if KINDS[resource][1] else "", name)]
        held = obj["metadata"].setdefault("labels", {})
        for key, value in labels.items():
            if value is None:
                held.pop(key, None)
            else:
                held[key] = value
        if not held:
            del obj["metadata"]["labels"]
        self._emit("MODIFIED", resource, obj)

    def mint(self, namespace: str, pod: str, **options: Any) -> str:
        """A token bound to a pod of this cluster and to its service account and node, with their
        uids, as the kubelet's TokenRequest gets it from kube-apiserver."""
        spec = self.objects["pods"][(namespace, pod)]["spec"]
        account, node = spec["serviceAccountName"], spec["nodeName"]
        claims = self.issuer.claims(namespace, account, pod=pod, node=node, **options)
        bound = claims["kubernetes.io"]
        bound["serviceaccount"]["uid"] = self.uid("serviceaccounts", namespace, account)
        bound["pod"]["uid"] = self.uid("pods", namespace, pod)
        if node is not None:
            bound["node"]["uid"] = self.uid("nodes", "", node)
        return self.issuer.sign(claims)

    def terminate(self, resource: str, namespace: str, name: str, *, at: float) -> None:
        """Sets deletionTimestamp (graceful deletion under way), as `kubectl delete` first does."""
        obj = self.objects[resource][(namespace if KINDS[resource][1] else "", name)]
        obj["metadata"]["deletionTimestamp"] = _rfc3339(at)
        self._emit("MODIFIED", resource, obj)

    def delete(self, resource: str, namespace: str, name: str) -> None:
        obj = self.objects[resource].pop((namespace if KINDS[resource][1] else "", name))
        self._emit("DELETED", resource, obj)

    def compact(self) -> None:
        """Forgets the watch history, as etcd compaction does: older resourceVersions get 410."""
        self.history.clear()
        self.oldest = self.version + 1

    @property
    def watching(self) -> int:
        """Watch streams open now."""
        return len(self._watchers)

    def end_watches(self) -> None:
        for watcher in list(self._watchers):
            watcher.queue.put_nowait(None)

    def send_watch_event(self, resource: str, kind: str, obj: dict[str, Any]) -> None:
        """Sends one raw event on every open watch of resource (e.g. an ERROR a client must survive)."""
        for watcher in list(self._watchers):
            if watcher.resource == resource:
                watcher.queue.put_nowait((self.version, kind, obj))

    # -- serving ----------------------------------------------------------------------------
    def _refusal(self, request: web.Request, verb: str, resource: str) -> web.Response | None:
        self.requests[verb, resource] += 1
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        if self.unavailable:
            return web.json_response(_status(503, "ServiceUnavailable", "the server is unavailable"), status=503)
        if resource in self.forbidden or (verb, resource) in self.forbidden_verbs:
            message = (
                f'{resource} is forbidden: User "system:serviceaccount:kubejoin:kubejoin" cannot {verb} '
                f'resource "{resource}" in API group "" at the cluster scope'
            )
            return web.json_response(_status(403, "Forbidden", message), status=403)
        return None

    @staticmethod
    def _shape(request: web.Request) -> str:
        accept = request.headers.get("Accept", "")
        first = accept.split(",")[0]
        if "as=Table" in first:
            return "table"
        if "as=PartialObjectMetadata" in first:
            return "meta"
        return "full"

    @staticmethod
    def _metadata_only(obj: dict[str, Any]) -> dict[str, Any]:
        return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}

    def _table(self, items: list[dict[str, Any]], version: str) -> dict[str, Any]:
        now = time.time()
        rows = []
        for obj in items:
            created = datetime.datetime.fromisoformat(obj["metadata"]["creationTimestamp"]).timestamp()
            rows.append(
                {"cells": [obj["metadata"]["name"], f"{int(now - created)}s"], "object": self._metadata_only(obj)}
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": version},
            "columnDefinitions": _TABLE_COLUMNS,
            "rows": rows,
        }

    def _render(self, shape: str, obj: dict[str, Any]) -> dict[str, Any]:
        if shape == "meta":
            return self._metadata_only(obj)
        if shape == "table":
            return self._table([obj], obj["metadata"]["resourceVersion"])
        return obj

    def _selected(self, resource: str, namespace: str | None) -> list[dict[str, Any]]:
        return [obj for (ns, _), obj in sorted(self.objects[resource].items()) if namespace in (None, ns)]

    async def _settings(self, request: web.Request) -> web.Response:
        """POST /fake/settings: switches for a fake in a process of its own (not an API path), and
        two actions: `end_watches` (true) and `big_event_bytes` (a MODIFIED event of the first pod
        with an annotation that long, on every pod watch; the stored pod is unchanged). Answers
        the switches and the requests counted so far."""
        if self.token is not None and request.headers.get("Authorization") != f"Bearer {self.token}":
            return web.json_response(_status(401, "Unauthorized", "Unauthorized"), status=401)
        changes = await request.json()
        known = {"silent_watches", "bookmark_then_end", "empty_watches", "unavailable", "list_delay", "bookmark_every"}
        actions = {"end_watches", "big_event_bytes"}
        if not isinstance(changes, dict) or not set(changes) <= known | actions:
            return web.json_response(_status(400, "BadRequest", f"any of {sorted(known | actions)}"), status=400)
        for name in known & set(changes):
            setattr(self, name, changes[name])
        if changes.get("unavailable") or changes.get("end_watches"):
            self.end_watches()
        if changes.get("big_event_bytes") and self.objects["pods"]:
            pod = json.loads(json.dumps(next(iter(self.objects["pods"].values()))))
            pod["metadata"]["annotations"] = {"big": "x" * int(changes["big_event_bytes"])}
            self.send_watch_event("pods", "MODIFIED", pod)
        answer: dict[str, Any] = {name: getattr(self, name) for name in sorted(known)}
        answer["requests"] = {f"{verb} {resource}": count for (verb, resource), count in sorted(self.requests.items())}
        return web.json_response(answer)

    async def _readyz(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, "get", "readyz")
        if refused is not None:
            return refused
        return web.Response(text="ok")

    async def _collection(self, request: web.Request) -> web.StreamResponse:
        resource = request.match_info["resource"]
        namespace = request.match_info.get("namespace")
        if resource not in KINDS or (namespace is not None and not KINDS[resource][1]):
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"), status=404
            )
        if request.query.get("watch") in ("1", "true"):
            return await self._watch(request, resource, namespace)
        refused = self._refusal(request, "list", resource)
        if refused is not None:
            return refused
        if self.list_delay:
            await asyncio.sleep(self.list_delay)
        limit = int(request.query.get("limit", "0") or 0)
        token = request.query.get("continue")
        if token:
            version, start = json.loads(base64.urlsafe_b64decode(token))
            items = self._snapshots.get(version)
            if items is None:
                return web.json_response(_status(410, "Expired", "the continue token has expired"), status=410)
        else:
            version, start, items = self.version, 0, self._selected(resource, namespace)
        end = start + limit if limit else len(items)
        page = items[start:end]
        metadata: dict[str, Any] = {"resourceVersion": str(version)}
        if end < len(items):
            self._snapshots[version] = items
            while len(self._snapshots) > 4:
                del self._snapshots[next(iter(self._snapshots))]
            metadata["continue"] = base64.urlsafe_b64encode(json.dumps([version, end]).encode()).decode()
        shape = self._shape(request)
        if shape == "table":
            body = self._table(page, str(version))
        elif shape == "meta":
            body = {
                "kind": "PartialObjectMetadataList",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": metadata,
                "items": [self._metadata_only(obj) for obj in page],
            }
        else:
            body = {"kind": KINDS[resource][0] + "List", "apiVersion": "v1", "metadata": metadata, "items": page}
        return web.json_response(body)

    def _addressed(self, request: web.Request, verb: str) -> tuple[str, str, str, dict[str, Any] | None] | web.Response:
        """The object a request names (resource, namespace, name, the object or None), or the
        answer when the resource is unknown or the request refused."""
        resource, name = request.match_info["resource"], request.match_info["name"]
        namespace = request.match_info.get("namespace", "")
        if resource not in KINDS:
            return web.json_response(
                _status(404, "NotFound", "the server could not find the requested resource"), status=404
            )
        refused = self._refusal(request, verb, resource)
        if refused is not None:
            return refused
        return resource, namespace, name, self.objects[resource].get((namespace, name))

    async def _object(self, request: web.Request) -> web.Response:
        addressed = self._addressed(request, "get")
        if isinstance(addressed, web.Response):
            return addressed
        resource, _, name, obj = addressed
        if self.get_gate is not None:  # the answer is read, and in flight until the gate opens
            await self.get_gate.wait()
        if obj is None:
            return _not_found(resource, name)
        return web.json_response(self._render(self._shape(request), obj))

    async def _patch_object(self, request: web.Request) -> web.Response:
        """PATCH of metadata.labels only (a merge patch, or a strategic one, which reads the same
        for a map of strings): a null removes a key. Anything else is refused with 422, so a
        test cannot believe the fake changed what it does not keep."""
        addressed = self._addressed(request, "patch")
        if isinstance(addressed, web.Response):
            return addressed
        resource, namespace, name, obj = addressed
        if request.content_type not in PATCH_TYPES:
            message = f"the fake API server accepts {' or '.join(PATCH_TYPES)}, not {request.content_type}"
            return web.json_response(_status(415, "UnsupportedMediaType", message), status=415)
        if obj is None:
            return _not_found(resource, name)
        try:
            patch = json.loads(await request.read())
        except ValueError:
            return web.json_response(_status(400, "BadRequest", "the patch is not JSON"), status=400)
        labels = patch.get("metadata", {}).get("labels", {}) if isinstance(patch, dict) else None
        if (
            not isinstance(patch, dict)
            or set(patch) - {"metadata"}
            or not isinstance(patch.get("metadata", {}), dict)
            or set(patch.get("metadata", {})) - {"labels", "resourceVersion"}
            or not isinstance(labels, dict)
            or not all(isinstance(value, str | None) for value in labels.values())
        ):
            message = "the fake API server patches metadata.labels only (strings, or null to remove)"
            return web.json_response(_status(422, "Invalid", message), status=422)
        expected = patch.get("metadata", {}).get("resourceVersion")
        if expected is not None and expected != obj["metadata"]["resourceVersion"]:
            message = f'Operation cannot be fulfilled on {resource} "{name}": the object has been modified'
            return web.json_response(_status(409, "Conflict", message), status=409)
        self.label(resource, namespace, name, labels)
        return web.json_response(obj)

    async def _delete_object(self, request: web.Request) -> web.Response:
        """DELETE: removes the object at once (no grace period) and answers it, as the API server
        does for an immediate deletion."""
        addressed = self._addressed(request, "delete")
        if isinstance(addressed, web.Response):
            return addressed
        resource, namespace, name, obj = addressed
        if obj is None:
            return _not_found(resource, name)
        self.delete(resource, namespace, name)
        return web.json_response(obj)

    def _backlog(self, resource: str, namespace: str | None, since: int) -> Iterator[tuple[int, str, dict[str, Any]]]:
        for version, kind, of, obj in self.history:
            if version > since and of == resource and namespace in (None, obj["metadata"].get("namespace")):
                yield version, kind, obj

    async def _watch(self, request: web.Request, resource: str, namespace: str | None) -> web.StreamResponse:
        refused = self._refusal(request, "watch", resource)
        if refused is not None:
            return refused
        if self.empty_watches:
            return web.Response(status=200, content_type="application/json", body=b"")
        shape = self._shape(request)
        bookmarks = request.query.get("allowWatchBookmarks") in ("1", "true")
        timeout = float(request.query.get("timeoutSeconds", "1800") or 1800)
        since_text = request.query.get("resourceVersion", "")
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)

        async def send(kind: str, obj: dict[str, Any]) -> None:
            if not self.silent_watches:  # a blackholed connection: it stays open, nothing arrives
                await response.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")

        def bookmark() -> dict[str, Any]:
            metadata = {"resourceVersion": str(self.version)}
            return {"kind": KINDS[resource][0], "apiVersion": "v1", "metadata": metadata}

        watcher = _Watcher(resource, namespace)
        self._watchers.add(watcher)
        try:
            if since_text in ("", "0"):  # "any": the current state as ADDED events first
                for obj in self._selected(resource, namespace):
                    await send("ADDED", self._render(shape, obj))
            else:
                since = int(since_text)
                if since < self.oldest - 1:
                    message = f"too old resource version: {since} ({self.oldest - 1})"
                    await send("ERROR", _status(410, "Expired", message))
                    return response
                for _, kind, obj in list(self._backlog(resource, namespace, since)):
                    await send(kind, self._render(shape, obj))
            if self.bookmark_then_end:
                await send("BOOKMARK", bookmark())
                return response
            deadline = time.monotonic() + timeout
            while (left := deadline - time.monotonic()) > 0 and not self.closing:
                try:
                    async with asyncio.timeout(min(left, self.bookmark_every)):
                        item = await watcher.queue.get()
                except TimeoutError:
                    if bookmarks:
                        await send("BOOKMARK", bookmark())
                    continue
                if item is None:
                    break
                await send(item[1], item[2] if item[1] == "ERROR" else self._render(shape, item[2]))
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.discard(watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    async def _discovery(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, "discover", "")
        if refused is not None:
            return refused
        path = request.path
        if path == "/version":
            body: dict[str, Any] = {
                "major": "1",
                "minor": "32",
                "gitVersion": "v1.32.0-kubejoin-fake",
                "platform": "linux/amd64",
            }
        elif path == "/api":
            body = {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}
        elif path == "/apis":
            body = {"kind": "APIGroupList", "apiVersion": "v1", "groups": []}
        else:
            body = {
                "kind": "APIResourceList",
                "groupVersion": "v1",
                "resources": [
                    {
                        "name": resource,
                        "singularName": kind.lower(),
                        "namespaced": namespaced,
                        "kind": kind,
                        "verbs": ["get", "list", "watch", "patch", "delete"],
                        "shortNames": SHORT_NAMES[resource],
                    }
                    for resource, (kind, namespaced) in KINDS.items()
                ],
            }
        return web.json_response(body)

    async def _issuer_document(self, request: web.Request) -> web.Response:
        refused = self._refusal(request, "get", "keys")
        if refused is not None:
            return refused
        if request.path == DISCOVERY_PATH:
            return web.Response(body=self.issuer.discovery_document(), content_type="application/json")
        response = web.Response(body=self.issuer.jwks_document(), content_type="application/jwk-set+json")
        response.headers["Cache-Control"] = self.issuer.cache_control
        return response

    async def _on_shutdown(self, app: web.Application) -> None:
        # A client may still open a watch on a kept-alive connection after this; the flag ends it
        # within bookmark_every, where it would otherwise hold the shutdown for 60 s.
        self.closing = True
        self.end_watches()

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(DISCOVERY_PATH, self._issuer_document)
        app.router.add_get(JWKS_PATH, self._issuer_document)
        for path in ("/version", "/api", "/apis", "/api/v1"):
            app.router.add_get(path, self._discovery)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_post("/fake/settings", self._settings)
        app.router.add_get("/api/v1/{resource}", self._collection)
        app.router.add_get("/api/v1/namespaces/{namespace}/{resource}", self._collection)
        app.router.add_get("/api/v1/namespaces/{namespace}/{resource}/{name}", self._object)
        app.router.add_get("/api/v1/{resource}/{name}", self._object)
        app.router.add_delete("/api/v1/namespaces/{namespace}/{resource}/{name}", self._delete_object)
        app.router.add_delete("/api/v1/{resource}/{name}", self._delete_object)
        app.router.add_patch("/api/v1/namespaces/{namespace}/{resource}/{name}", self._patch_object)
        app.router.add_patch("/api/v1/{resource}/{name}", self._patch_object)
        app.on_shutdown.append(self._on_shutdown)
        return app


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> None:
    """A kubeconfig for the fake server, as kubectl and `in_cluster.kubeconfig` read it."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "fake", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": "fake", "user": {"token": token}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        "current-context": "fake",
    }
    path.write_text(json.dumps(config))


async def _serve(arguments: argparse.Namespace) -> None:
    """For the benchmarks: a fake cluster with many pods, in a process of its own."""
    from .devtls import make_loopback_tls

    directory = Path(arguments.dir)
    tls = make_loopback_tls(directory)
    issuer = LocalIssuer(arguments.issuer)
    token = issuer.mint("kubejoin", "kubejoin", audiences=["https://kubernetes.default.svc"], lifetime=86400)
    api = FakeKubeAPI(issuer, token=token)
    for index in range(arguments.pods):
        api.add_pod(f"team-{index % 100}", f"app-{index}", service_account="app", node=f"node-{index % 50}")
    (directory / "token").write_text(token)
    with (directory / "pod-tokens").open("w") as handle:  # tokens of the first pods, for joins
        for index in range(min(arguments.mint, arguments.pods)):
            handle.write(
                api.mint(f"team-{index % 100}", f"app-{index}", audiences=[arguments.audience], lifetime=3600) + "\n"
            )
    runner = web.AppRunner(api.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=tls.server_context())
    await site.start()
    port = runner.addresses[0][1]
    print(json.dumps({"server": f"https://127.0.0.1:{port}", "ca_file": str(tls.ca_file)}), flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--pods", type=int, default=1000)
    parser.add_argument("--dir", required=True, help="where to write the TLS files and the tokens")
    parser.add_argument("--mint", type=int, default=0, help="write tokens of this many pods to DIR/pod-tokens")
    parser.add_argument("--audience", default="example.teleport.sh")
    parser.add_argument("--issuer", default="https://kubernetes.default.svc.cluster.local", help="its tokens' iss")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
