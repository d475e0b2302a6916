"""The labels of cluster objects that allow rules read (issue 19), as the binding's watch cache
hands them over. Only records and markers: the binding (verifier.k8s) fills them, the rules
(auth.service.rules) judge them, and neither needs to import the other."""

from __future__ import annotations

import enum
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
