"""The pod, namespace and node a ServiceAccount token names, with their labels, read once from the
API server for `kubejoin tokens explain` (the service reads them from its watch cache instead).
Metadata only: labels are all that allow rules read, and PartialObjectMetadata carries them."""

from __future__ import annotations

from typing import Final, NamedTuple

from verifier.k8s.api import NAMESPACE, NODE, POD, Kind, KubeAPI
from verifier.labels import ALL_KEYS, LabelKind, LabelShape, ObjectView

_KINDS: Final[dict[LabelKind, Kind]] = {"pod": POD, "namespace": NAMESPACE, "node": NODE}
_EVERY_LABEL: Final = LabelShape(ALL_KEYS)  # a rule's keys are a subset: keep them all, judge once


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
    # the binding's own GET and decoder: labels that are not strings count as absent there too
    meta = await api.get(_KINDS[item.kind], item.namespace, item.name, _EVERY_LABEL)
    if meta is None:
        return Found(None, f"{shown}: not found in the cluster")
    view = ObjectView(meta.name, meta.uid, _EVERY_LABEL.view(meta.labels))
    if item.uid is not None and view.uid != item.uid:
        # The binding refuses such a token (a later object of the same name): say so, and judge
        # the labels anyway, since that is what the question was.
        return Found(view, f"{shown}: the cluster's has uid {view.uid}, the token names {item.uid} (a later one?)")
    return Found(view, None)
