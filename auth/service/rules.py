"""The conditions an allow rule may put on the cluster (issue 19): labels of the token's pod, its
namespace and its node, and a CEL expression, judged from the watch cache, never from a request per
join. A refusal says which condition failed first, bounded: it goes into the answer and the join log."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final

from verifier.labels import ALL_KEYS, AllKeys, LabelKeys, ObjectView, WantedKeys

from .expression import Expression, ExpressionError, compile_expression, evaluate
from .expression_keys import Variable

__all__ = [
    "ALL_KEYS",
    "AllKeys",
    "Expression",
    "ExpressionError",
    "LabelKeys",
    "ObjectView",
    "RuleConditions",
    "WantedKeys",
    "bounded",
    "compile_expression",
    "explain",
    "judge",
    "judge_expression",
    "judge_labels",
    "wanted_label_keys",
]

NAMESPACE_NAME_LABEL: Final = "kubernetes.io/metadata.name"
MAX_VALUE_CHARS: Final = 63  # a Kubernetes label value's own limit; a longer one is cut
MAX_EXPLANATION_CHARS: Final = 2000  # all of explain()'s lines together
_EMPTY: Final[Mapping[str, str]] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class RuleConditions:
    """Every pair of each labels mapping must match, and the expression, if any, must hold."""

    pod_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    namespace_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    node_labels: Mapping[str, str] = field(default_factory=lambda: _EMPTY)
    expression: Expression | None = None
    # the label keys this rule reads (wanted_label_keys of it alone), for each join that judges it
    keys: WantedKeys = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen all the way down: a caller's dict changed later must not change a loaded rule.
        for name in ("pod_labels", "namespace_labels", "node_labels"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))
        object.__setattr__(self, "keys", wanted_label_keys(self))

    @property
    def reads(self) -> frozenset[Variable]:
        """The kinds of object this rule reads: non-empty means it needs the cluster's binding."""
        pairs: tuple[tuple[Variable, Mapping[str, str]], ...] = (
            ("pod", self.pod_labels),
            ("namespace", self.namespace_labels),
            ("node", self.node_labels),
        )
        labelled = frozenset(kind for kind, wanted in pairs if wanted)
        return labelled | (self.expression.reads if self.expression else frozenset())


def wanted_label_keys(*conditions: RuleConditions) -> WantedKeys:
    """The label keys that the given rules name, their expressions' literal keys included."""
    merged: dict[Variable, LabelKeys] = {"pod": frozenset(), "namespace": frozenset(), "node": frozenset()}

    def add(kind: Variable, keys: LabelKeys) -> None:
        have = merged[kind]
        merged[kind] = ALL_KEYS if isinstance(have, AllKeys) or isinstance(keys, AllKeys) else have | keys

    for rule in conditions:
        add("pod", frozenset(rule.pod_labels))
        add("namespace", frozenset(rule.namespace_labels))
        add("node", frozenset(rule.node_labels))
        if rule.expression is not None:
            for kind, keys in rule.expression.label_keys.items():
                add(kind, keys)
            if "namespace" in rule.expression.reads and not rule.expression.label_keys.get("namespace"):
                # Namespaces are watched only while some key of theirs is wanted; an expression
                # reading only namespaceObject.name or .uid needs them watched all the same. This
                # label is the API server's own, on every namespace, equal to its name.
                add("namespace", frozenset({NAMESPACE_NAME_LABEL}))
    return WantedKeys(merged["pod"], merged["namespace"], merged["node"])


def judge(
    conditions: RuleConditions,
    claims: Mapping[str, object],
    pod: ObjectView | None,
    namespace: ObjectView | None,
    node: ObjectView | None,
) -> str | None:
    """None when every condition holds, else the first that fails, in the order labels of the pod,
    the namespace, the node, then the expression. Never raises."""
    failed = judge_labels(conditions, pod, namespace, node)
    if failed is not None or conditions.expression is None:
        return failed
    return judge_expression(conditions.expression, claims, pod, namespace, node)


def judge_labels(
    conditions: RuleConditions, pod: ObjectView | None, namespace: ObjectView | None, node: ObjectView | None
) -> str | None:
    """judge()'s first half: the first labels mapping that fails, or None. Apart so that a caller
    decodes the claims only when an expression is reached."""
    for kind, wanted, seen in (
        ("pod", conditions.pod_labels, pod),
        ("namespace", conditions.namespace_labels, namespace),
        ("node", conditions.node_labels, node),
    ):
        if wanted and (failed := _labels(kind, wanted, seen)):
            return failed
    return None


def judge_expression(
    expression: Expression,
    claims: Mapping[str, object],
    pod: ObjectView | None,
    namespace: ObjectView | None,
    node: ObjectView | None,
) -> str | None:
    """judge()'s second half: None when the expression holds, else why not. Never raises."""
    objects: dict[str, object] = {}
    reads = expression.reads
    for name, kind, seen in (("pod", "pod", pod), ("namespaceObject", "namespace", namespace), ("node", "node", node)):
        # Bound only if read (each one costs the binding a conversion); unbound, reading it fails
        # with "no node known for this token".
        if seen is not None and kind in reads:
            objects[name] = {"name": seen.name, "uid": seen.uid, "labels": dict(seen.labels)}
    return evaluate(expression, claims, objects)


def explain(
    rules: Sequence[RuleConditions],
    claims: Mapping[str, object],
    pod: ObjectView | None,
    namespace: ObjectView | None,
    node: ObjectView | None,
) -> list[str]:
    """`rule N: ...` (N from 1, as a person counts the file's rules) for every rule that refuses,
    bounded as bounded() says."""
    return bounded(
        [
            f"rule {number}: {failed}"
            for number, rule in enumerate(rules, start=1)
            if (failed := judge(rule, claims, pod, namespace, node)) is not None
        ]
    )


def bounded(refusals: Sequence[str]) -> list[str]:
    """The first refusal lines, at most MAX_EXPLANATION_CHARS in all; the rest counted, not listed."""
    lines: list[str] = []
    used = 0
    for line in refusals:
        if used + len(line) > MAX_EXPLANATION_CHARS:
            lines.append(f"and {len(refusals) - len(lines)} more refusing rules")
            break
        lines.append(line)
        used += len(line)
    return lines


def _labels(kind: str, wanted: Mapping[str, str], seen: ObjectView | None) -> str | None:
    if seen is None:
        return f"no {kind} known for this token"
    for key in sorted(wanted):  # sorted: the same refusal every time, whatever the file's order
        have = seen.labels.get(key)
        if have is None:
            return f"{kind} has no label {key}"
        if have != wanted[key]:
            return f"{kind} label {key} is {_quoted(have)}, not {_quoted(wanted[key])}"
    return None


def _quoted(value: str) -> str:
    # json.dumps: the value comes from the cluster; a quote or a newline in it stays escaped.
    cut = value if len(value) <= MAX_VALUE_CHARS else value[: MAX_VALUE_CHARS - 1] + "…"
    return json.dumps(cut, ensure_ascii=False)
