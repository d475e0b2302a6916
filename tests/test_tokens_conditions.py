"""Labels and expressions in join tokens' allow rules (issue 19): what loads, and every refusal
naming the field path and the rule as the file's author counts it."""

from __future__ import annotations

import pytest

from auth.service.files import ConfigError
from auth.service.tokens import TokenError, parse_allow_rules, parse_tokens

HEAD = """\
kind: token
version: v2
metadata: {name: labelled}
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    type: in_cluster
    allow:
      - service_account: "team-a:agent"
"""


def tokens_with(second_rule: str) -> str:
    """The head's token with a second rule: `  - ` then the given fields, one per line."""
    lines = second_rule.strip("\n").splitlines()
    return HEAD + "      - " + lines[0] + "\n" + "".join(f"        {line}\n" for line in lines[1:])


def test_a_rule_with_labels_and_an_expression_loads_frozen() -> None:
    text = tokens_with(
        'service_account_namespace: "team-*"\n'
        'service_account_name: "*"\n'
        'pod_labels: {app.kubernetes.io/name: agent, tier: ""}\n'
        "namespace_labels: {tier: prod}\n"
        "node_labels: {kubernetes.io/os: linux}\n"
        "expression: 'claims.sub.endsWith(\":agent\")'"
    )
    token = parse_tokens(text, "t.yaml")["labelled"]
    assert token.kubernetes is not None
    plain, labelled = token.kubernetes.allow
    assert plain.conditions is None
    conditions = labelled.conditions
    assert conditions is not None
    assert dict(conditions.pod_labels) == {"app.kubernetes.io/name": "agent", "tier": ""}
    assert dict(conditions.namespace_labels) == {"tier": "prod"}
    assert dict(conditions.node_labels) == {"kubernetes.io/os": "linux"}
    assert conditions.expression is not None and conditions.expression.text == 'claims.sub.endsWith(":agent")'
    assert conditions.reads == {"pod", "namespace", "node"}
    # Hashable (tokens go into sets and dict keys), read-only, and the account match is unchanged.
    assert len({plain, labelled}) == 2
    with pytest.raises(TypeError):
        conditions.pod_labels["tier"] = "x"  # type: ignore[index]
    assert labelled.matches("team-b", "anyone") and not labelled.matches("other", "agent")


def test_allows_fails_closed_on_rules_with_conditions_and_names_account_does_not() -> None:
    text = tokens_with('service_account: "team-b:agent"\npod_labels: {tier: prod}')
    token = parse_tokens(text, "t.yaml")["labelled"]
    assert token.allows("team-a", "agent")  # the first rule has no conditions
    assert not token.allows("team-b", "agent")  # labels it cannot read must not let it in
    assert token.names_account("team-b", "agent")
    assert not token.names_account("team-c", "agent")


INVALID: list[tuple[str, str, str]] = [
    (
        "value-boolean",
        'service_account: "a:b"\npod_labels: {tier: true}',
        "spec.kubernetes.allow[1].pod_labels.tier: rule 2: label value true is a boolean to YAML, not a string; "
        "quote it",
    ),
    (
        "value-number",
        'service_account: "a:b"\nnode_labels: {version: 1.10}',
        "spec.kubernetes.allow[1].node_labels.version: rule 2: label value 1.1 is a number to YAML, not a string; "
        'quote it as written, e.g. "true", "1.10"',
    ),
    (
        "value-empty",
        'service_account: "a:b"\nnamespace_labels: {tier: }',
        "spec.kubernetes.allow[1].namespace_labels.tier: rule 2: label value is empty (null to YAML), not a string",
    ),
    (
        "key-boolean",
        'service_account: "a:b"\npod_labels: {yes: x}',
        "spec.kubernetes.allow[1].pod_labels: rule 2: label key true is a boolean to YAML, not a string; quote it",
    ),
    (
        "value-charset",
        'service_account: "a:b"\npod_labels: {tier: "-prod"}',
        "spec.kubernetes.allow[1].pod_labels.tier: rule 2: label value '-prod' must be empty or consist of",
    ),
    (
        "value-too-long",
        f'service_account: "a:b"\npod_labels: {{tier: {"v" * 64}}}',
        "spec.kubernetes.allow[1].pod_labels.tier: rule 2: label value 'vvv",
    ),
    (
        "key-name-charset",
        'service_account: "a:b"\npod_labels: {"app name": x}',
        "spec.kubernetes.allow[1].pod_labels: rule 2: label key name 'app name' must consist of",
    ),
    (
        "key-name-too-long",
        f'service_account: "a:b"\npod_labels: {{{"k" * 64}: x}}',
        "is 64 characters; at most 63",
    ),
    (
        "key-prefix-uppercase",
        'service_account: "a:b"\npod_labels: {Example.com/app: x}',
        "rule 2: label key prefix 'Example.com' is not a DNS subdomain",
    ),
    (
        "key-prefix-empty",
        'service_account: "a:b"\npod_labels: {/app: x}',
        "rule 2: label key '/app' has an empty prefix",
    ),
    (
        "key-name-empty",
        'service_account: "a:b"\npod_labels: {example.com/: x}',
        "rule 2: label key 'example.com/' has an empty name",
    ),
    (
        "labels-not-a-mapping",
        'service_account: "a:b"\npod_labels: [tier]',
        "spec.kubernetes.allow[1].pod_labels: rule 2: expected a mapping of label keys to values",
    ),
    (
        "labels-empty",
        'service_account: "a:b"\npod_labels: {}',
        "spec.kubernetes.allow[1].pod_labels: rule 2: expected a mapping",
    ),
    (
        "expression-syntax",
        "service_account: \"a:b\"\nexpression: 'claims.sub =='",
        "spec.kubernetes.allow[1].expression: rule 2: expression at 1:",
    ),
    (
        "expression-type",
        "service_account: \"a:b\"\nexpression: '1 + 1'",
        "spec.kubernetes.allow[1].expression: rule 2: expression gives int, not a bool",
    ),
    (
        "expression-too-costly",
        "service_account: \"a:b\"\nexpression: 'claims.aud.map(a, a).size() > 0'",
        "spec.kubernetes.allow[1].expression: rule 2: expression uses map",
    ),
    (
        "expression-not-a-string",
        'service_account: "a:b"\nexpression: true',
        "spec.kubernetes.allow[1].expression: rule 2: expected a CEL expression as a string",
    ),
    (
        "labels-without-account",  # the account stays required
        "pod_labels: {tier: prod}",
        "spec.kubernetes.allow[1]: needs service_account",
    ),
    (
        "unknown-field-still-refused",
        'service_account: "a:b"\npod_label: {tier: prod}',
        "spec.kubernetes.allow[1].pod_label: unknown field",
    ),
]


@pytest.mark.parametrize(("rule", "message"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_conditions_name_the_path_and_the_rule(rule: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(tokens_with(rule), "tokens.yaml")
    assert str(caught.value).startswith("tokens.yaml: token 1 (labelled): spec.kubernetes.allow[1]")
    assert message in str(caught.value)


def test_reviewer_rules_take_the_same_conditions() -> None:
    # token_review.reviewers are judged as join tokens' rules are (tests/test_label_rules.py)
    rules = [{"service_account": "a:b", "pod_labels": {"tier": "prod"}}, {"service_account": "a:c"}]
    labelled, plain = parse_allow_rules(rules, "token_review.reviewers")
    assert labelled.conditions is not None and dict(labelled.conditions.pod_labels) == {"tier": "prod"}
    assert plain.conditions is None
    with pytest.raises(TokenError, match=r"^token_review.reviewers\[0\].pod_labels"):
        parse_allow_rules([{"service_account": "a:b", "pod_labels": {"tier": True}}], "token_review.reviewers")


def test_errors_in_conditions_never_show_a_secret_token_name() -> None:
    # A token of another join method carries no kubernetes rules, so its name is never in a
    # condition's error; the error of a later kubernetes token names only that one.
    secret = (
        "kind: token\nversion: v2\nmetadata: {name: s3cr3t-value}\nspec: {roles: [Node], join_method: token}\n---\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_tokens(secret + tokens_with('service_account: "a:b"\npod_labels: {tier: 1}'), "tokens.yaml")
    assert "s3cr3t-value" not in str(caught.value)
    assert "token 2 (labelled): spec.kubernetes.allow[1].pod_labels.tier: rule 2:" in str(caught.value)
