"""decide() (auth/service/allow.py): the first failed condition of every rule, in order, bounded;
the cluster's objects and the claims fetched at most once, and only when a rule needs them."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from auth.service.allow import ClusterRead, decide, reads, rules_reading_cluster, wanted
from auth.service.rules import ALL_KEYS, MAX_EXPLANATION_CHARS, RuleConditions, compile_expression
from auth.service.tokens import AllowRule, parse_tokens
from verifier.errors import BindingRefusal, Reason
from verifier.identity import Identity, ObjectRef
from verifier.labels import LabelKind, ObjectView, WantedKeys

CLAIMS: Mapping[str, object] = {"sub": "system:serviceaccount:team-a:agent", "aud": ["kubejoin"]}
POD = ObjectView("agent-1", "p1", {"tier": "dev", "app": "agent"})
NAMESPACE = ObjectView("team-a", "n1", {"team": "payments"})
NODE = ObjectView("node-a", "d1", {"kubernetes.io/os": "linux"})
Views = tuple[ObjectView | None, ObjectView | None, ObjectView | None]


class Calls:
    """A claims source and an objects source that count their calls and the kinds asked for."""

    def __init__(self, views: Views = (POD, NAMESPACE, NODE), *, refusal: BindingRefusal | None = None) -> None:
        self.views = views
        self.refusal = refusal
        self.claims_calls = 0
        self.asked: list[frozenset[LabelKind]] = []

    def claims(self) -> Mapping[str, object]:
        self.claims_calls += 1
        return CLAIMS

    def objects(self, kinds: frozenset[LabelKind], keys: WantedKeys) -> Views:
        self.asked.append(kinds)
        if self.refusal is not None:
            raise self.refusal
        return self.views


def allow(account: str = "team-a:agent", *, expression: str | None = None, **labels: Mapping[str, str]) -> AllowRule:
    namespace, _, name = account.partition(":")
    glob = "*" in account or "?" in account
    conditions = None
    if expression is not None or labels:
        conditions = RuleConditions(**labels, expression=compile_expression(expression) if expression else None)
    return AllowRule(namespace, name, glob=glob, conditions=conditions)


def run(rules: list[AllowRule], calls: Calls, *, unknown: str | None = None) -> list[str] | None:
    return decide(rules, "team-a", "agent", calls.claims, calls.objects, unknown=unknown)


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ([allow()], None),
        ([allow("team-b:*")], ["rule 1: service account team-a:agent is not team-b:*"]),
        ([allow("team-b:*"), allow("team-?:agent")], None),
        (
            [allow("team-a:web"), allow(pod_labels={"tier": "prod"})],
            [
                "rule 1: service account team-a:agent is not team-a:web",
                'rule 2: pod label tier is "dev", not "prod"',
            ],
        ),
        # Per rule: the account, then pod labels, namespace labels, node labels, the expression.
        (
            [allow("team-b:agent", expression="false", pod_labels={"tier": "prod"})],
            ["rule 1: service account team-a:agent is not team-b:agent"],
        ),
        (
            [allow(expression="false", pod_labels={"tier": "prod"}, node_labels={"x": "y"})],
            ['rule 1: pod label tier is "dev", not "prod"'],
        ),
        (
            [allow(expression="false", namespace_labels={"team": "search"}, node_labels={"x": "y"})],
            ['rule 1: namespace label team is "payments", not "search"'],
        ),
        ([allow(expression="false", node_labels={"x": "y"})], ["rule 1: node has no label x"]),
        (
            [allow(expression='claims.sub.endsWith(":web")', pod_labels={"tier": "dev"})],
            ["rule 1: expression is false"],
        ),
        ([allow(expression='claims.sub.endsWith(":web")')], ["rule 1: expression is false"]),
        (
            [allow(expression='claims.sub.endsWith(":agent") && namespaceObject.labels.team == "payments"')],
            None,
        ),
        ([allow(pod_labels={"app": "agent"}, node_labels={"kubernetes.io/os": "linux"})], None),
        # A later rule allows: the earlier refusals are not the answer.
        ([allow(pod_labels={"tier": "prod"}), allow(pod_labels={"tier": "dev"})], None),
    ],
    ids=[
        "plain-allows",
        "account-glob-refuses",
        "second-plain-allows",
        "account-then-labels",
        "account-before-conditions",
        "pod-labels-before-node-and-expression",
        "namespace-labels-before-node",
        "node-labels-before-expression",
        "expression-after-labels-pass",
        "expression-false",
        "expression-reads-namespace",
        "labels-hold",
        "any-rule-allows",
    ],
)
def test_decide_says_each_rules_first_failed_condition(rules: list[AllowRule], expected: list[str] | None) -> None:
    assert run(rules, Calls()) == expected


def test_objects_unknown_to_the_cache_fail_the_conditions_on_them() -> None:
    calls = Calls((None, NAMESPACE, None))
    rules = [allow(pod_labels={"app": "agent"}), allow(expression='node.name == "node-a"')]
    assert run(rules, calls) == [
        "rule 1: no pod known for this token",
        "rule 2: expression failed: no node known for this token",
    ]


def test_plain_rules_fetch_nothing() -> None:
    calls = Calls()
    assert run([allow("team-b:*"), allow("team-a:*")], calls) is None
    assert run([allow("team-b:*")], calls) is not None
    # A rule with conditions whose account does not match is never judged.
    assert run([allow("team-b:*", expression="true", pod_labels={"a": "b"})], calls) is not None
    # A matching plain rule allows before any condition is looked at, wherever it stands.
    assert run([allow(pod_labels={"tier": "prod"}), allow()], calls) is None
    assert calls.asked == [] and calls.claims_calls == 0


def test_objects_are_asked_once_for_the_union_of_kinds_matching_rules_read() -> None:
    calls = Calls()
    rules = [
        allow(pod_labels={"tier": "prod"}),
        allow("team-b:*", node_labels={"x": "y"}),  # account does not match: its kind is not asked for
        allow(expression='namespaceObject.labels.team == "search"'),
        allow(namespace_labels={"team": "x"}),
    ]
    assert run(rules, calls) is not None
    assert calls.asked == [frozenset({"pod", "namespace"})]


def test_claims_are_decoded_once_and_only_when_an_expression_runs() -> None:
    calls = Calls()
    # Labels fail first: the expressions never run.
    assert run(
        [allow(expression="true", pod_labels={"tier": "prod"}), allow(expression="true", node_labels={"x": "y"})], calls
    )
    assert calls.claims_calls == 0
    # Two expressions run: one decoding.
    assert run([allow(expression='claims.sub == "x"'), allow(expression='claims.sub == "y"')], calls) == [
        "rule 1: expression is false",
        "rule 2: expression is false",
    ]
    assert calls.claims_calls == 1


def test_an_expression_over_claims_only_needs_no_objects() -> None:
    calls = Calls()
    assert run([allow(expression='"kubejoin" in claims.aud')], calls) is None
    assert calls.asked == [] and calls.claims_calls == 1


def test_a_binding_refusal_from_objects_goes_through() -> None:
    identity = Identity(
        "team-a", ObjectRef("agent", "u", "u"), ObjectRef("agent-1", "p1", "p1"), None, "iss", ("a",), None, 0, 1, None
    )
    refusal = BindingRefusal(Reason.BINDING_UNAVAILABLE, "the cache is not synced", identity)
    with pytest.raises(BindingRefusal) as caught:
        run([allow(pod_labels={"a": "b"})], Calls(refusal=refusal))
    assert caught.value is refusal


def test_refusals_are_bounded_like_rules_explain() -> None:
    rules = [allow(f"team-b:agent-{n}") for n in range(100)] + [allow(pod_labels={"k" * 60: "v"})] * 100
    lines = run(rules, Calls())
    assert lines is not None
    assert sum(map(len, lines[:-1])) <= MAX_EXPLANATION_CHARS
    assert lines[0] == "rule 1: service account team-a:agent is not team-b:agent-0"
    assert lines[-1] == f"and {200 - len(lines) + 1} more refusing rules"
    plain = run(rules[:100], Calls())
    assert plain is not None and plain[-1] == f"and {100 - len(plain) + 1} more refusing rules"


def test_unknown_says_which_condition_cannot_be_judged_and_runs_claims_only_expressions() -> None:
    calls = Calls()
    hint = "give --kubeconfig"
    rules = [
        allow("team-b:*"),
        allow(expression="true", namespace_labels={"a": "b"}, node_labels={"c": "d"}),
        allow(expression='pod.labels.tier == "dev" && node.name != ""'),
        allow(expression='claims.sub.endsWith(":web")'),
    ]
    assert run(rules, calls, unknown=hint) == [
        "rule 1: service account team-a:agent is not team-b:*",
        "rule 2: namespace labels unknown (give --kubeconfig)",
        "rule 3: expression reads pod, node, unknown (give --kubeconfig)",
        "rule 4: expression is false",
    ]
    assert calls.asked == []
    assert run([allow(expression='claims.sub.endsWith(":agent")')], calls, unknown=hint) is None


TOKENS = """\
kind: token
version: v2
metadata: {name: labelled}
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    allow:
      - service_account: "a:b"
      - service_account: "a:c"
        pod_labels: {tier: prod}
        expression: 'namespaceObject.labels[claims.sub] == "x"'
      - service_account: "a:d"
        expression: 'claims.sub != ""'
---
kind: token
version: v2
metadata: {name: plain}
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    allow: [{service_account: "a:b"}]
---
kind: token
version: v2
metadata: {name: secret-value}
spec: {roles: [Node], join_method: token}
"""


def test_load_time_helpers_name_the_rules_that_read_the_cluster_and_the_keys_to_keep() -> None:
    tokens = parse_tokens(TOKENS, "tokens.yaml")
    assert rules_reading_cluster(tokens) == [ClusterRead("labelled", 2, frozenset({"pod", "namespace"}))]
    assert wanted(tokens.values()) == WantedKeys(frozenset({"tier"}), ALL_KEYS)
    assert wanted([tokens["plain"]]) == WantedKeys()
    labelled = tokens["labelled"].kubernetes
    assert labelled is not None
    assert reads(labelled.allow) == {"pod", "namespace"}
    assert reads(labelled.allow[2:]) == frozenset()


@pytest.mark.parametrize(
    ("expression", "decoded"),
    [
        ('claims.sub.endsWith(":agent") && claims.iss != ""', False),  # what the identity holds exactly
        ('claims["kubernetes.io"].namespace == "team-a"', True),
        ("claims.exists(k, k == 'sub')", True),  # every claim
        ('claims.aud[0] == "kubejoin"', True),  # aud may be a string in a payload: never rebuilt
    ],
)
def test_claims_come_from_the_identity_only_when_it_holds_them_exactly(expression: str, decoded: bool) -> None:
    from auth.devtools.issuer import IssuerKey, LocalIssuer
    from auth.service.allow import claims_reader
    from verifier.jose import verified_claims

    issuer = LocalIssuer("https://issuer.example", [IssuerKey.generate("P-256")])
    token = issuer.mint("team-a", "agent", pod="agent-1", audiences=["kubejoin"])
    payload = verified_claims(token)
    identity = Identity(
        namespace="team-a",
        service_account=ObjectRef("agent", "u1", 1),  # only names are read
        pod=ObjectRef("agent-1", "u2", 2),
        node=None,
        issuer=payload["iss"],
        audiences=("kubejoin",),
        jti=payload.get("jti"),
        issued_at=payload["iat"],
        expires_at=payload["exp"],
        not_before=None,
    )
    rules = (AllowRule("team-a", "agent", conditions=RuleConditions(expression=compile_expression(expression))),)
    claims = claims_reader(rules, identity, token)()
    if decoded:
        assert claims == payload
    else:
        assert claims == {key: payload[key] for key in ("iss", "sub", "jti")}
