"""The pod, namespace and node a ServiceAccount token names, with their labels, read once from the
API server for `kubejoin tokens explain` (the service reads them from its watch cache instead).
Metadata only: labels are all that allow rules read, and PartialObjectMetadata carries them."""

from __future__ import annotations

from typing import Final, NamedTuple

from verifier.jose import load_strict_json
from verifier.k8s.api import META_ACCEPT, ApiError, KubeAPI
from verifier.labels import LabelKind, ObjectView

_PATHS: Final[dict[LabelKind, str]] = {
    "pod": "/api/v1/namespaces/{namespace}/pods/{name}",
    "namespace": "/api/v1/namespaces/{name}",
    "node": "/api/v1/nodes/{name}",
}


class Wanted(NamedTuple):
    """An object the token names: its kind, namespace (pods only), name and the uid in the token."""

    kind: LabelKind
    namespace: str
    name: str
    uid: str | None  # None for the namespace, whose uid no token carries


class Found(NamedTuple):
    """What the cluster said of one object: its view, or None with a note why."""

    view: ObjectView | None
    note: str | None


async def read_objects(kubeconfig: str, wanted: list[Wanted]) -> dict[LabelKind, Found]:
    """Each wanted object as the API server has it now; one not found (404) is None, with a note.
    Raises ApiError for anything else (no kubeconfig, no answer, 403)."""
    api = KubeAPI(kubeconfig=kubeconfig)
    try:
        return {item.kind: await _read(api, item) for item in wanted}
    finally:
        await api.close()


async def _read(api: KubeAPI, item: Wanted) -> Found:
    shown = f"{item.kind} {item.namespace}/{item.name}" if item.kind == "pod" else f"{item.kind} {item.name}"
    try:
        body = await api.read(_PATHS[item.kind].format(namespace=item.namespace, name=item.name), accept=META_ACCEPT)
    except ApiError as exc:
        if exc.status == 404:
            return Found(None, f"{shown}: not found in the cluster")
        raise
    view = decode_view(body, shown)
    if item.uid is not None and view.uid != item.uid:
        # The binding refuses such a token (a later object of the same name): say so, and judge
        # the labels anyway, since that is what the question was.
        return Found(view, f"{shown}: the cluster's has uid {view.uid}, the token names {item.uid} (a later one?)")
    return Found(view, None)


def decode_view(body: bytes, shown: str) -> ObjectView:
    """An object's name, uid and labels from the API server's JSON; raises ApiError if it has none
    or its labels are not strings."""
    try:
        document = load_strict_json(body)
    except (ValueError, UnicodeDecodeError):
        raise ApiError(0, f"{shown}: the API server's answer is not JSON") from None
    meta = document.get("metadata") if isinstance(document, dict) else None
    if not isinstance(meta, dict):
        raise ApiError(0, f"{shown}: the API server's answer has no metadata")
    name, uid, labels = meta.get("name"), meta.get("uid"), meta.get("labels") or {}
    if not isinstance(name, str) or not isinstance(uid, str):
        raise ApiError(0, f"{shown}: the API server's answer has no name or uid")
    if not isinstance(labels, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in labels.items()):
        raise ApiError(0, f"{shown}: labels in the API server's answer are not strings")
    return ObjectView(name, uid, labels)
