"""What the watch cache keeps of labels (verifier.labels.LabelShape, ObjectMeta.decode, Store):
only the keys allow rules read, packed and shared; nothing for an object with none of them."""

from __future__ import annotations

from typing import Any, Final

import pytest

from verifier import labels as labels_module
from verifier.claims import uid_key
from verifier.k8s.api import ApiError, ObjectMeta
from verifier.k8s.watch import Store
from verifier.labels import ALL_KEYS, EMPTY, LabelKeys, LabelShape, covered, shape_for

UIDS: Final = [f"{n}c3d6de9-6000-41a6-adad-2509159c5b95" for n in range(10)]
POD_LABELS: Final = {"app": "web", "tier": "prod", "team": "payments", "pod-template-hash": "7c9f8d6b5"}


def pod(uid: str, labels: dict[str, Any] | None, name: str = "app-1") -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": "team-a", "uid": uid}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata}


def test_only_the_wanted_keys_are_kept_in_key_order() -> None:
    shape = LabelShape(frozenset({"tier", "team", "zone"}))
    packed = shape.pack(POD_LABELS)
    assert packed == ("payments", "prod", None)  # team, tier, zone: sorted; zone absent
    assert shape.view(packed) == {"team": "payments", "tier": "prod"}


def test_equal_values_share_one_tuple() -> None:
    shape = LabelShape(frozenset({"tier"}))
    first, second = shape.pack({"tier": "prod", "app": "a"}), shape.pack({"tier": "prod", "app": "b"})
    assert first == ("prod",) and first is second
    assert shape.pack({"tier": "dev"}) is not first


def test_an_object_with_none_of_the_keys_keeps_nothing() -> None:
    shape = LabelShape(frozenset({"tier"}))
    assert shape.pack({"app": "web"}) is EMPTY
    assert shape.pack({}) is EMPTY
    assert shape.view(EMPTY) == {}
    assert shape.pack({"tier": ""}) == ("",)  # an empty value is a value


def test_all_keys_keeps_every_label() -> None:
    shape = LabelShape(ALL_KEYS)
    packed = shape.pack(POD_LABELS)
    assert shape.view(packed) == POD_LABELS
    assert packed[0] == "app"  # keys in order, each beside its value


def test_the_sharing_table_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels_module, "SHARED_MAX", 3)
    shape = LabelShape(frozenset({"pod-template-hash"}))
    first = shape.pack({"pod-template-hash": "h0"})
    for index in range(1, 4):  # the fourth distinct value starts the table over
        shape.pack({"pod-template-hash": f"h{index}"})
    assert len(shape._shared) == 1
    again = shape.pack({"pod-template-hash": "h0"})
    assert again == first and again is not first  # forgotten: a new tuple


COVERS: Final[list[tuple[LabelKeys | None, LabelKeys, bool]]] = [
    (None, frozenset(), True),
    (None, frozenset({"tier"}), False),
    (frozenset({"tier", "team"}), frozenset({"tier"}), True),
    (frozenset({"tier"}), frozenset({"tier", "team"}), False),
    (frozenset({"tier"}), ALL_KEYS, False),
    (ALL_KEYS, frozenset({"tier"}), True),
    (ALL_KEYS, ALL_KEYS, True),
    (frozenset({"tier"}), frozenset(), True),
]


@pytest.mark.parametrize(("held", "read", "answers"), COVERS, ids=[f"{held}-holds-{read}" for held, read, _ in COVERS])
def test_what_a_shape_covers(held: LabelKeys | None, read: LabelKeys, answers: bool) -> None:
    assert covered(None if held is None else shape_for(held), read) is answers


def test_no_keys_no_shape() -> None:
    assert shape_for(frozenset()) is None


def test_decode_keeps_only_the_wanted_keys() -> None:
    shape = LabelShape(frozenset({"tier"}))
    meta = ObjectMeta.decode(pod(UIDS[0], POD_LABELS), shape)
    assert shape.view(meta.labels) == {"tier": "prod"}
    assert ObjectMeta.decode(pod(UIDS[0], POD_LABELS)).labels is EMPTY  # no rule reads labels
    assert ObjectMeta.decode(pod(UIDS[0], None), shape).labels is EMPTY
    # values that are not strings (the API server sends none) count as absent, never crash
    assert ObjectMeta.decode(pod(UIDS[0], {"tier": 3}), shape).labels is EMPTY
    assert ObjectMeta.decode(pod(UIDS[0], {"tier": 3, "x": "y"}), LabelShape(ALL_KEYS)).labels == ("x", "y")
    with pytest.raises(ApiError):
        ObjectMeta.decode({"metadata": {"labels": POD_LABELS}}, shape)


def test_store_keeps_labels_only_for_objects_with_a_wanted_key() -> None:
    shape = LabelShape(frozenset({"tier"}))
    store = Store(shape=shape)
    for index, uid in enumerate(UIDS):
        store.put(ObjectMeta.decode(pod(uid, {"tier": "prod"} if index < 3 else {"app": "x"}, f"app-{index}"), shape))
    assert store.count == 10 and len(store.labels) == 3
    assert store.labels_of(uid_key(UIDS[0])) == {"tier": "prod"}
    assert store.labels_of(uid_key(UIDS[5])) == {}
    store.put(ObjectMeta.decode(pod(UIDS[0], {"app": "x"}, "app-0"), shape))  # label removed
    assert len(store.labels) == 2 and store.labels_of(uid_key(UIDS[0])) == {}
    store.remove(ObjectMeta.decode(pod(UIDS[1], None, "app-1")))
    assert len(store.labels) == 1


def test_a_relist_swaps_labels_and_shape_together() -> None:
    old, new = LabelShape(frozenset({"tier"})), LabelShape(frozenset({"team", "tier"}))
    store = Store(shape=old)
    store.put(ObjectMeta.decode(pod(UIDS[0], POD_LABELS), old))
    snapshot = store.snapshot(new)
    snapshot.add(ObjectMeta.decode(pod(UIDS[0], POD_LABELS), new))
    assert store.labels_of(uid_key(UIDS[0])) == {"tier": "prod"}  # not before the list completes
    store.replace(snapshot)
    assert store.shape is new
    assert store.labels_of(uid_key(UIDS[0])) == {"team": "payments", "tier": "prod"}


def test_by_name_follows_the_uid_that_holds_the_name() -> None:
    shape = LabelShape(frozenset({"team"}))
    store = Store(shape=shape, by_name=True)
    first = ObjectMeta.decode({"metadata": {"name": "team-a", "uid": UIDS[0], "labels": {"team": "a"}}}, shape)
    second = ObjectMeta.decode({"metadata": {"name": "team-a", "uid": UIDS[1]}}, shape)
    store.put(first)
    assert store.named == {"team-a": (UIDS[0], ("a",))}
    store.put(second)  # replaced: the old one's late DELETED must not drop the new one
    store.remove(first)
    assert store.named == {"team-a": (UIDS[1], EMPTY)}
    store.remove(second)
    assert store.named == {}
