"""Whether a join token's allow rules let a service account's pod in (issue 19): the account first,
then the labels of its pod, namespace and node, then the expression. A refusal says, rule by rule,
the first condition that failed.

What costs is done only when needed: the cluster's objects are looked up once, and only when a rule
that matched the account has conditions; the claims are decoded once, and only when an expression
runs. Rules with no conditions cost what `any(rule.matches(...))` does."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Final, NamedTuple, Protocol

from verifier import Identity
from verifier.jose import verified_claims
from verifier.labels import LabelKind, ObjectView, WantedKeys

from .rules import RuleConditions, bounded, judge_expression, judge_labels, wanted_label_keys
from .tokens import AllowRule, JoinToken

__all__ = ["ClusterRead", "Objects", "claims_reader", "decide", "reads", "rules_reading_cluster", "wanted"]

_NONE_KNOWN: Final[tuple[None, None, None]] = (None, None, None)
_CEL_NAMES: Final[Mapping[LabelKind, str]] = {"pod": "pod", "namespace": "namespaceObject", "node": "node"}


class Objects(Protocol):
    """What the join supplies: the token's pod, namespace and node as the binding's cache knows
    them (None for one it does not know, or of a kind not asked for), with the label keys `keys`
    (those the rules judged read). Memory lookups; may raise verifier.errors.BindingRefusal, which
    decide() lets through, and must when the cache does not keep every key of `keys`."""

    def __call__(
        self, kinds: frozenset[LabelKind], keys: WantedKeys, /
    ) -> tuple[ObjectView | None, ObjectView | None, ObjectView | None]: ...


class ClusterRead(NamedTuple):
    """A rule that reads the cluster: its token's name, its number (from 1) and what it reads."""

    token: str
    rule: int
    kinds: frozenset[LabelKind]


def decide(
    rules: Sequence[AllowRule],
    namespace: str,
    name: str,
    claims: Callable[[], Mapping[str, object]],
    objects: Objects,
    *,
    unknown: str | None = None,
) -> list[str] | None:
    """None when some rule allows the service account `namespace:name`; else one line per rule,
    `rule N: <its first failed condition>`, bounded as rules.bounded() says.

    `unknown`, for a caller that cannot read the cluster at all (the command line without a
    kubeconfig): `objects` is not called, and a condition that reads the cluster is said to be
    unknown, with this hint, rather than failed."""
    conditional = False
    for rule in rules:
        if rule.matches(namespace, name):
            if rule.conditions is None:
                return None
            conditional = True
    if not conditional:
        return bounded([_account_refused(number, rule, namespace, name) for number, rule in enumerate(rules, 1)])
    matching = [rule for rule in rules if rule.matches(namespace, name)]
    kinds = reads(matching)
    # the keys these rules read, not those the binding was last told of: a reload during this
    # join's verification may have made the cache drop some (a key read as absent passes `!has`)
    pod, namespace_object, node = objects(kinds, _keys(matching)) if kinds and unknown is None else _NONE_KNOWN
    decoded = _Once(claims)
    lines: list[str] = []
    for number, rule in enumerate(rules, 1):
        if rule.conditions is None or not rule.matches(namespace, name):
            lines.append(_account_refused(number, rule, namespace, name))
            continue
        failed = (
            _unknown(rule.conditions, unknown)
            if unknown is not None
            else judge_labels(rule.conditions, pod, namespace_object, node)
        )
        if failed is None and rule.conditions.expression is not None:
            failed = judge_expression(rule.conditions.expression, decoded(), pod, namespace_object, node)
        if failed is None:
            return None
        lines.append(f"rule {number}: {failed}")
    return bounded(lines)


def reads(rules: Iterable[AllowRule]) -> frozenset[LabelKind]:
    """The kinds of object the rules read: non-empty means they need the cluster's binding."""
    kinds: frozenset[LabelKind] = frozenset()
    for rule in rules:
        if rule.conditions is not None:
            kinds |= rule.conditions.reads
    return kinds


def wanted(tokens: Iterable[JoinToken], more: Iterable[AllowRule] = ()) -> WantedKeys:
    """The label keys the binding's cache must keep for these tokens' rules and `more` rules
    (token_review.reviewers)."""
    extra = [rule.conditions for rule in more if rule.conditions is not None]
    return wanted_label_keys(*_conditions(tokens), *extra)


def rules_reading_cluster(tokens: Mapping[str, JoinToken]) -> list[ClusterRead]:
    """Every rule that reads the cluster, by token name and rule number: a tokens file with any
    needs the binding of the cluster its tokens come from, and is refused without one."""
    found: list[ClusterRead] = []
    for token_name, token in tokens.items():
        if token.kubernetes is None:
            continue  # no rules: and its name, a secret, is never listed
        for number, rule in enumerate(token.kubernetes.allow, 1):
            if kinds := reads((rule,)):
                found.append(ClusterRead(token_name, number, kinds))
    return found


def _keys(rules: Iterable[AllowRule]) -> WantedKeys:
    """The label keys these rules read (one rule's are computed when it loads)."""
    conditions = [rule.conditions for rule in rules if rule.conditions is not None]
    return conditions[0].keys if len(conditions) == 1 else wanted_label_keys(*conditions)


def _conditions(tokens: Iterable[JoinToken]) -> list[RuleConditions]:
    return [
        rule.conditions
        for token in tokens
        if token.kubernetes is not None
        for rule in token.kubernetes.allow
        if rule.conditions is not None
    ]


def _account_refused(number: int, rule: AllowRule, namespace: str, name: str) -> str:
    return f"rule {number}: service account {namespace}:{name} is not {rule}"


def _unknown(conditions: RuleConditions, hint: str) -> str | None:
    """The first condition that reads the cluster, said to be unknown; None when the labels are
    none and the expression reads only the claims (it can then run)."""
    for kind, labels in (
        ("pod", conditions.pod_labels),
        ("namespace", conditions.namespace_labels),
        ("node", conditions.node_labels),
    ):
        if labels:
            return f"{kind} labels unknown ({hint})"
    expression = conditions.expression
    if expression is not None and expression.reads:
        names = ", ".join(_CEL_NAMES[kind] for kind in ("pod", "namespace", "node") if kind in expression.reads)
        return f"expression reads {names}, unknown ({hint})"
    return None


# Claims the verified Identity holds exactly as the payload has them (strings the verifier compared:
# sub is checked equal to the account's username): an expression that reads only these gets them
# without decoding the payload again, which costs about 6 µs (bench/rules.py).
IDENTITY_CLAIMS: Final = frozenset({"iss", "sub", "jti"})


def claims_reader(rules: Sequence[AllowRule], identity: Identity, token: str) -> Callable[[], Mapping[str, object]]:
    """What decide() calls for the claims of a verified `token`: from the identity when every
    expression of the rules names only IDENTITY_CLAIMS, else the decoded payload."""

    def read() -> Mapping[str, object]:
        for rule in rules:
            expression = rule.conditions.expression if rule.conditions is not None else None
            if expression is not None and not (
                isinstance(expression.claim_keys, frozenset) and expression.claim_keys <= IDENTITY_CLAIMS
            ):
                return verified_claims(token)
        claims: dict[str, object] = {"iss": identity.issuer, "sub": identity.username}
        if identity.jti is not None:
            claims["jti"] = identity.jti
        return claims

    return read


class _Once:
    """The claims, decoded at the first call only."""

    __slots__ = ("_decode", "_value")

    def __init__(self, decode: Callable[[], Mapping[str, object]]) -> None:
        self._decode = decode
        self._value: Mapping[str, object] | None = None

    def __call__(self) -> Mapping[str, object]:
        if self._value is None:
            self._value = self._decode()
        return self._value
