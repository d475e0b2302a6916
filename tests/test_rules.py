"""Label and CEL conditions of allow rules (auth/service/rules.py): exact refusals, compile and
run-time errors, bounds, and the label keys the watch cache must keep."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import pytest

from auth.service.expression import MAX_COMPREHENSIONS, MAX_EXPRESSION_CHARS
from auth.service.rules import (
    ALL_KEYS,
    MAX_EXPLANATION_CHARS,
    ExpressionError,
    ObjectView,
    RuleConditions,
    WantedKeys,
    compile_expression,
    explain,
    judge,
    wanted_label_keys,
)

CLAIMS: Mapping[str, object] = {
    "sub": "system:serviceaccount:pay:agent",
    "aud": ["kubejoin"],
    "kubernetes.io": {"namespace": "pay", "pod": {"name": "agent-1", "uid": "p1"}},
}
POD = ObjectView("agent-1", "p1", {"tier": "dev", "app": "agent"})
NAMESPACE = ObjectView("pay", "n1", {"team": "payments"})
NODE = ObjectView("node-a", "d1", {"kubernetes.io/os": "linux"})
JOIN = 'claims.sub.endsWith(":agent") && namespaceObject.labels["team"] == "payments"'


def rule(expression: str | None = None, **labels: Mapping[str, str]) -> RuleConditions:
    return RuleConditions(**labels, expression=compile_expression(expression) if expression else None)


def describe(conditions: RuleConditions) -> str:
    """A test id: the rule's labels and expression."""
    parts = [
        f"{kind}={dict(labels)}"
        for kind, labels in (
            ("pod", conditions.pod_labels),
            ("namespace", conditions.namespace_labels),
            ("node", conditions.node_labels),
        )
        if labels
    ]
    return " ".join(parts + ([conditions.expression.text] if conditions.expression else [])) or "no-conditions"


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (rule(), None),
        (rule(pod_labels={"app": "agent"}), None),
        (rule(pod_labels={"tier": "prod"}), 'pod label tier is "dev", not "prod"'),
        (rule(pod_labels={"zone": "a"}), "pod has no label zone"),
        # The first failure in key order, whatever the rule's order.
        (rule(pod_labels={"tier": "prod", "app": "web"}), 'pod label app is "agent", not "web"'),
        (rule(namespace_labels={"team": "search"}), 'namespace label team is "payments", not "search"'),
        (rule(namespace_labels={"tier": "prod"}), "namespace has no label tier"),
        (rule(node_labels={"kubernetes.io/os": "windows"}), 'node label kubernetes.io/os is "linux", not "windows"'),
        (rule(node_labels={"kubernetes.io/os": "linux"}), None),
        # Pod labels first, then the namespace's, the node's, the expression.
        (rule("false", pod_labels={"tier": "prod"}, node_labels={"x": "y"}), 'pod label tier is "dev", not "prod"'),
        (rule("false", node_labels={"x": "y"}), "node has no label x"),
        (rule(JOIN), None),
        (rule('claims.sub.endsWith(":web")'), "expression is false"),
        (rule('pod.labels.tier == "dev" && pod.name == "agent-1"'), None),
        (rule('"kubejoin" in claims.aud'), None),
        (rule('namespaceObject.labels["tier"] == "prod"'), "expression failed: no such key 'tier'"),
        (rule('claims["kubernetes.io"].node.name == "a"'), "expression failed: no such key 'node'"),
        (rule("int(claims.sub) == 1"), "expression failed: cannot convert string to int"),
        (rule("claims.sub"), "expression gives string, not a bool"),
    ],
    ids=lambda v: describe(v) if isinstance(v, RuleConditions) else str(v),
)
def test_judge_names_the_first_failed_condition(conditions: RuleConditions, expected: str | None) -> None:
    assert judge(conditions, CLAIMS, POD, NAMESPACE, NODE) == expected


@pytest.mark.parametrize(
    ("conditions", "expected"),
    [
        (rule(pod_labels={"tier": "dev"}), "no pod known for this token"),
        (rule(namespace_labels={"team": "payments"}), "no namespace known for this token"),
        (rule(node_labels={"a": "b"}), "no node known for this token"),
        (rule('node.labels["a"] == "b"'), "expression failed: no node known for this token"),
        (rule('claims.sub != ""'), None),  # reads no object: judged without them
    ],
    ids=["pod", "namespace", "node", "expression-node", "claims-only"],
)
def test_an_unknown_object_refuses_a_rule_that_reads_it(conditions: RuleConditions, expected: str | None) -> None:
    assert judge(conditions, CLAIMS, None, None, None) == expected


def test_values_from_the_cluster_are_quoted_escaped_and_cut() -> None:
    pod = ObjectView("p", "u", {"tier": 'a"b\nc' + "x" * 100})
    failed = judge(rule(pod_labels={"tier": "prod"}), CLAIMS, pod, None, None)
    assert failed == 'pod label tier is "a\\"b\\nc' + "x" * 57 + '…", not "prod"'


def test_labels_are_frozen_at_construction() -> None:
    labels = {"tier": "dev"}
    conditions = RuleConditions(pod_labels=labels)
    labels["tier"] = "prod"
    assert conditions.pod_labels == {"tier": "dev"}
    assert isinstance(conditions.pod_labels, MappingProxyType)


def test_claims_and_labels_may_be_any_mapping() -> None:
    claims = MappingProxyType({"sub": "x:agent", "groups": ("a", "b")})
    pod = ObjectView("p", "u", MappingProxyType({"tier": "prod"}))
    conditions = rule('claims.sub.endsWith(":agent") && "b" in claims.groups && pod.labels.tier == "prod"')
    assert judge(conditions, claims, pod, None, None) is None


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"sub": 2**70}, "expression failed: Integer value"),  # beyond CEL's int: refused, not raised
        ({"sub": object()}, "expression failed: Non-CEL value type"),
        ({"sub": 1}, "expression failed: No matching overloads"),
    ],
    ids=["huge-int", "foreign-object", "wrong-type"],
)
def test_a_run_time_error_refuses_and_never_raises(claims: Mapping[str, object], expected: str) -> None:
    failed = judge(rule('claims.sub.endsWith(":agent")'), claims, None, None, None)
    assert failed is not None and failed.startswith(expected)
    assert len(failed) <= len("expression failed: ") + 120


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("claims.sub +", "expression at 1:13: Syntax error: mismatched input '<EOF>' expecting"),
        ('1 + "a" == 2', "expression at 1:3: found no matching overload for '_+_' applied to '(int, string)'"),
        ('namespace.labels["a"] == "b"', "expression at 1:1: reserved identifier: namespace"),
        ('team == "a"', "expression at 1:1: undeclared reference to 'team'"),
        ("1 + 1", "expression gives int, not a bool"),
        ("x" * (MAX_EXPRESSION_CHARS + 1), f"expression is {MAX_EXPRESSION_CHARS + 1} characters; at most"),
        (
            "claims.aud.exists(a, claims.aud.exists(b, a == b))",
            f"expression has 2 comprehensions (all, exists, exists_one); at most {MAX_COMPREHENSIONS}",
        ),
        ("claims.aud.map(a, a).size() > 0", "expression uses map: too costly on long lists"),
        ("// a ''' quote\nclaims.aud.map(a, a).size() > 0 // '''", "expression uses map: too costly on long lists"),
        ('claims.aud.filter(a, a != "").size() > 0', "expression uses filter: too costly on long lists"),
        (
            'claims.aud.exists(a, a.matches("^x")) || claims.sub.matches("y")',
            "expression uses matches() with a comprehension: too costly",
        ),
    ],
    ids=[
        "syntax",
        "type",
        "reserved",
        "undeclared",
        "not-bool",
        "too-long",
        "nested-comprehension",
        "map",
        "map-after-a-comment",
        "filter",
        "matches-in-comprehension",
    ],
)
def test_compile_errors_are_refused_at_load(text: str, expected: str) -> None:
    with pytest.raises(ExpressionError) as caught:
        compile_expression(text)
    assert str(caught.value).startswith(expected)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    "text",
    ['claims.aud.exists(a, a == "kubejoin")', 'claims.aud.all(a, a != "")', 'claims.sub.matches("^system:")'],
)
def test_one_predicate_comprehension_or_matches_is_accepted(text: str) -> None:
    assert judge(rule(text), CLAIMS, None, None, None) is None


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([rule(pod_labels={"team": "x"})], WantedKeys(frozenset({"team"}))),
        (
            [rule(JOIN, pod_labels={"tier": "a"}, node_labels={"kubernetes.io/os": "linux"})],
            WantedKeys(frozenset({"tier"}), frozenset({"team"}), frozenset({"kubernetes.io/os"})),
        ),
        (
            [rule('pod.labels.app == "a" && has(pod.labels.zone) && "app.kubernetes.io/name" in pod.labels')],
            WantedKeys(frozenset({"app", "zone", "app.kubernetes.io/name"})),
        ),
        ([rule('pod.labels["x"] == "pod.labels[y]"')], WantedKeys(frozenset({"x"}))),
        ([rule('pod.name == "a" && node.uid != ""')], WantedKeys()),
        ([rule('claims.node == "x"')], WantedKeys()),
        # Keys it cannot name: every key of that kind, for that kind only.
        ([rule('pod.labels[claims.sub] == "x"', namespace_labels={"a": "b"})], WantedKeys(ALL_KEYS, frozenset({"a"}))),
        ([rule('node.labels.exists(k, k.startsWith("x"))')], WantedKeys(node=ALL_KEYS)),
        ([rule("pod.labels.size() > 0")], WantedKeys(ALL_KEYS)),
        ([rule('[pod][0].labels["x"] == "y"')], WantedKeys(ALL_KEYS)),
        ([rule('"a\\"b" in pod.labels')], WantedKeys(ALL_KEYS)),
        # Merged over rules; ALL_KEYS absorbs the rest.
        (
            [
                rule(pod_labels={"a": "1"}),
                rule(pod_labels={"b": "2"}),
                rule('namespaceObject.labels[claims.sub] == "x"'),
            ],
            WantedKeys(frozenset({"a", "b"}), ALL_KEYS),
        ),
        ([rule(pod_labels={"a": "1"}), rule('pod.labels.exists(k, k == "b")')], WantedKeys(ALL_KEYS)),
    ],
    ids=[
        "labels",
        "labels-and-expression",
        "select-has-in",
        "string-lookalike",
        "name-uid-only",
        "claims-field-named-node",
        "computed-key",
        "comprehension-over-labels",
        "size",
        "object-passed-whole",
        "escaped-key",
        "merged",
        "all-absorbs",
    ],
)
def test_wanted_label_keys(rules: list[RuleConditions], expected: WantedKeys) -> None:
    assert wanted_label_keys(*rules) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (JOIN, frozenset({"sub"})),
        (
            'claims["kubernetes.io"].pod.name == "a" && has(claims.email) && "groups" in claims',
            {"kubernetes.io", "email", "groups"},
        ),
        ('pod.name == "a"', frozenset()),
        ('claims.exists(k, k == "sub")', ALL_KEYS),
        ('claims[claims.sub] == "a"', ALL_KEYS),
    ],
    ids=["select", "index-has-in", "no-claims", "comprehension", "computed"],
)
def test_only_the_claims_an_expression_names_are_converted(text: str, expected: object) -> None:
    assert compile_expression(text).claim_keys == expected


@pytest.mark.parametrize(
    ("text", "claim_keys", "label_keys"),
    [
        # `in` binds looser than `+`: the key is the whole sum, which no literal names
        ('!("kubernetes" + ".io" in claims)', ALL_KEYS, {}),
        ('!("a" + "pp" in pod.labels)', frozenset(), {"pod": ALL_KEYS}),
        # a leading dot names the variable at the root scope, as plain `claims` does
        ('!("kubernetes.io" in .claims)', ALL_KEYS, {}),
        ("!has(.pod.labels.app)", frozenset(), {"pod": frozenset({"app"})}),
        # still a literal key: `in` at the start of an operand
        ('claims.sub != "" && ("groups" in claims || "app" in pod.labels)', {"sub", "groups"}, {"pod": {"app"}}),
    ],
    ids=["sum-in-claims", "sum-in-labels", "root-claims", "root-pod", "literal-after-operator"],
)
def test_a_key_the_scan_cannot_name_wants_them_all(text: str, claim_keys: object, label_keys: object) -> None:
    expression = compile_expression(text)
    assert (expression.claim_keys, expression.label_keys) == (claim_keys, label_keys)


@pytest.mark.parametrize(
    "text",
    ['!("kubernetes" + ".io" in claims)', '!("kubernetes.io" in .claims)'],
    ids=["sum-in-claims", "root-claims"],
)
def test_an_expression_sees_every_claim_it_reads(text: str) -> None:
    # CLAIMS has kubernetes.io: an expression refusing such tokens must refuse it
    assert judge(rule(text), CLAIMS, None, None, None) == "expression is false"


def test_an_expression_over_all_claims_sees_them_all() -> None:
    assert judge(rule('claims.exists(k, k == "aud") && claims.size() == 3'), CLAIMS, None, None, None) is None


@pytest.mark.parametrize(
    ("conditions", "reads"),
    [
        (rule(), frozenset()),
        (rule('claims.sub != ""'), frozenset()),
        (rule(node_labels={"a": "b"}), {"node"}),
        (rule(JOIN, pod_labels={"a": "b"}), {"pod", "namespace"}),
        (rule('node.name == "n"'), {"node"}),
    ],
    ids=["none", "claims-only", "labels", "labels-and-expression", "node-name"],
)
def test_reads_tells_which_rules_need_the_binding(conditions: RuleConditions, reads: frozenset[str]) -> None:
    assert conditions.reads == reads


def test_explain_lists_every_refusing_rule_by_number() -> None:
    rules = [rule(pod_labels={"tier": "prod"}), rule(JOIN), rule('pod.labels["zone"] == "a"'), rule("false")]
    assert explain(rules, CLAIMS, POD, NAMESPACE, NODE) == [
        'rule 1: pod label tier is "dev", not "prod"',
        "rule 3: expression failed: no such key 'zone'",
        "rule 4: expression is false",
    ]


def test_explain_is_bounded_in_total() -> None:
    rules = [rule(pod_labels={f"key-{n}-" + "k" * 60: "v"}) for n in range(200)]
    lines = explain(rules, CLAIMS, POD, NAMESPACE, NODE)
    assert sum(map(len, lines[:-1])) <= MAX_EXPLANATION_CHARS
    assert lines[0].startswith("rule 1: pod has no label key-0-")
    assert lines[-1] == f"and {200 - len(lines) + 1} more refusing rules"
