"""The labels of cluster objects that allow rules read (issue 19), as the binding's watch cache
hands them over: the records and markers, and the packing the cache keeps labels in. The binding
(verifier.k8s) fills them, the rules (auth.service.rules) judge them, and neither needs to import
the other."""

from __future__ import annotations

import enum
import sys
from collections.abc import Mapping
from typing import Final, Literal, NamedTuple

LabelKind = Literal["pod", "namespace", "node"]


class AllKeys(enum.Enum):
    """The marker "keep every label key of this kind"."""

    ALL = "all keys"


ALL_KEYS: Final = AllKeys.ALL
LabelKeys = frozenset[str] | Literal[AllKeys.ALL]


class ObjectView(NamedTuple):
    """What the watch cache keeps of a pod, namespace or node: only the label keys some rule names."""

    name: str
    uid: str
    labels: Mapping[str, str]


class WantedKeys(NamedTuple):
    """Per kind, the label keys the cache must keep, or ALL_KEYS; empty: that kind's labels are
    not read (and namespaces are then not watched at all)."""

    pod: LabelKeys = frozenset()
    namespace: LabelKeys = frozenset()
    node: LabelKeys = frozenset()


NO_LABELS: Final = WantedKeys()  # no rule reads labels: namespaces unwatched, no label kept


# An object's kept labels, packed: for chosen keys, one value per key in the shape's order, None
# where the object lacks the key (a label value may be ""); for every key, key and value in turn,
# by key. EMPTY for an object with none of the kept keys, which the store then keeps nothing for.
Packed = tuple[str | None, ...]
EMPTY: Final[Packed] = ()
SHARED_MAX: Final = 4096  # distinct tuples remembered for sharing before starting over


class LabelShape:
    """The label keys a watch cache keeps for one kind of object, and the packing of an object's
    labels into the tuple kept for it (measured in bench/labels.py: ten labels as a dict cost
    about 1.5 kB a pod; the values of two keys as a tuple shared by every pod with the same values
    cost a pointer). Tuples of strings are also left alone by the collector."""

    def __init__(self, keys: LabelKeys) -> None:
        self.wanted = keys
        self.keys: tuple[str, ...] | None = None if keys is ALL_KEYS else tuple(sorted(keys))
        # Equal tuples share one object: pods of one workload have the same values. Bounded, so
        # that churning values (a rule naming pod-template-hash) cannot grow it without end.
        self._shared: dict[Packed, Packed] = {}

    @property
    def every(self) -> bool:
        return self.keys is None

    def covers(self, keys: LabelKeys) -> bool:
        """Whether what this shape keeps answers a rule reading `keys`."""
        if self.keys is None or not keys:
            return True
        return keys is not ALL_KEYS and keys <= set(self.keys)

    def pack(self, labels: Mapping[str, object]) -> Packed:
        """The tuple to keep for an object with these labels (values that are not strings, which
        the API server never sends, count as absent)."""
        if self.keys is None:
            packed: Packed = tuple(
                part
                for key in sorted(labels)
                if isinstance(value := labels[key], str)
                # keys repeat across every object: one string each, not one per object
                for part in (sys.intern(key), value)
            )
        else:
            packed = tuple(value if isinstance(value := labels.get(key), str) else None for key in self.keys)
            if not any(value is not None for value in packed):
                return EMPTY
        if not packed:
            return EMPTY
        shared = self._shared.get(packed)
        if shared is not None:
            return shared
        if len(self._shared) >= SHARED_MAX:
            self._shared.clear()
        self._shared[packed] = packed
        return packed

    def view(self, packed: Packed) -> dict[str, str]:
        """The labels a packed tuple keeps, as a mapping (only the kept keys)."""
        if not packed:
            return {}
        if self.keys is None:
            return {str(packed[i]): str(packed[i + 1]) for i in range(0, len(packed), 2)}
        return {key: value for key, value in zip(self.keys, packed, strict=True) if value is not None}


def shape_for(keys: LabelKeys) -> LabelShape | None:
    """The shape that keeps `keys`; None when no key is read (labels are then not decoded at all)."""
    return LabelShape(keys) if keys else None


def covered(shape: LabelShape | None, keys: LabelKeys) -> bool:
    """Whether a store holding `shape` (None: no labels) can answer a rule reading `keys`."""
    return not keys if shape is None else shape.covers(keys)
