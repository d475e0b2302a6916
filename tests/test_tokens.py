"""Join token files: Teleport's format loads unchanged; mistakes name the field path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from auth.cli import main
from auth.devtools.issuer import LocalIssuer
from auth.service.files import ConfigError
from auth.service.tokens import parse_tokens

SEED = """\
kind: token
version: v2
metadata:
  name: kubernetes-token
  expires: "2050-01-01T00:00:00Z"
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    type: in_cluster
    allow:
      - service_account: "teleport-agent:teleport-app-service"
"""


def test_seed_guide_token_loads_as_is() -> None:
    [token] = parse_tokens(SEED, "token.yaml").values()
    assert token.name == "kubernetes-token"
    assert token.roles == ("App",)
    assert token.kubernetes is not None and token.kubernetes.type == "in_cluster"
    assert token.expires == 2524608000.0
    assert token.allows("teleport-agent", "teleport-app-service")
    assert not token.allows("teleport-agent", "teleport-app-service2")


def test_stream_of_tokens_with_type_defaulting_to_in_cluster() -> None:
    other = SEED.replace("kubernetes-token", "second").replace("    type: in_cluster\n", "")
    tokens = parse_tokens(SEED + "---\n" + other + "---\n", "tokens.yaml")
    assert list(tokens) == ["kubernetes-token", "second"]
    assert tokens["second"].kubernetes is not None and tokens["second"].kubernetes.type == "in_cluster"


def _edit(path: str, value: Any) -> str:
    document = yaml.safe_load(SEED)
    *parents, last = path.split(".")
    node = document
    for part in parents:
        node = node[int(part)] if part.isdigit() else node[part]
    if value is _DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return yaml.safe_dump(document)


_DELETE = object()
JWKS = LocalIssuer("https://i").jwks_document().decode()

INVALID: list[tuple[str, str, str]] = [
    (
        "namespace-only",
        _edit("spec.kubernetes.allow.0.service_account", "namespace:"),
        "spec.kubernetes.allow[0].service_account",
    ),
    ("name-only", _edit("spec.kubernetes.allow.0.service_account", ":sa"), "spec.kubernetes.allow[0].service_account"),
    ("no-colon", _edit("spec.kubernetes.allow.0.service_account", "sa"), "spec.kubernetes.allow[0].service_account"),
    (
        "two-colons",
        _edit("spec.kubernetes.allow.0.service_account", "a:b:c"),
        "spec.kubernetes.allow[0].service_account",
    ),
    (
        "uppercase",
        _edit("spec.kubernetes.allow.0.service_account", "Team:sa"),
        "spec.kubernetes.allow[0].service_account",
    ),
    ("missing-allow", _edit("spec.kubernetes.allow", _DELETE), "spec.kubernetes.allow"),
    ("empty-allow", _edit("spec.kubernetes.allow", []), "spec.kubernetes.allow"),
    ("auth-role", _edit("spec.roles", ["App", "Auth"]), "spec.roles[1]: the Auth role"),
    ("unknown-role", _edit("spec.roles", ["Admin"]), "spec.roles[0]: unknown role"),
    ("no-roles", _edit("spec.roles", []), "spec.roles"),
    (
        "oidc-under-static",
        _edit(
            "spec.kubernetes",
            {
                "type": "static_jwks",
                "allow": [{"service_account": "a:b"}],
                "static_jwks": {"jwks": JWKS},
                "oidc": {"issuer": "https://x"},
            },
        ),
        "spec.kubernetes.oidc: only allowed with type oidc",
    ),
    ("static-without-jwks", _edit("spec.kubernetes.type", "static_jwks"), "spec.kubernetes.static_jwks"),
    (
        "static-jwks-without-keys",
        _edit(
            "spec.kubernetes",
            {"type": "static_jwks", "allow": [{"service_account": "a:b"}], "static_jwks": {"jwks": '{"keys": []}'}},
        ),
        "spec.kubernetes.static_jwks.jwks",
    ),
    (
        "oidc-http",
        _edit(
            "spec.kubernetes", {"type": "oidc", "allow": [{"service_account": "a:b"}], "oidc": {"issuer": "http://x"}}
        ),
        "spec.kubernetes.oidc.issuer",
    ),
    ("unknown-type", _edit("spec.kubernetes.type", "token_review"), "spec.kubernetes.type"),
    (
        "glob-half",
        _edit("spec.kubernetes.allow.0", {"service_account_namespace": "team-*"}),
        "spec.kubernetes.allow[0]",
    ),
    (
        "glob-and-exact",
        _edit("spec.kubernetes.allow.0", {"service_account": "a:b", "service_account_name": "x"}),
        "spec.kubernetes.allow[0]",
    ),
    (
        "account-not-a-subdomain",  # DNS-1123: `a..b` passed the old one-run name pattern
        _edit("spec.kubernetes.allow.0", {"service_account": "team:agent..x"}),
        "spec.kubernetes.allow[0].service_account",
    ),
    (
        "typo-in-rule",
        _edit("spec.kubernetes.allow.0", {"service_acount": "a:b"}),
        "spec.kubernetes.allow[0].service_acount: unknown field",
    ),
    ("typo-in-spec", _edit("spec.rolez", ["App"]), "spec.rolez: unknown field"),
    ("wrong-kind", _edit("kind", "role"), "kind"),
    ("wrong-version", _edit("version", "v1"), "version"),
    ("no-name", _edit("metadata.name", _DELETE), "metadata.name"),
    ("bad-expiry", _edit("metadata.expires", "next tuesday"), "metadata.expires"),
    ("kubernetes-missing", _edit("spec.kubernetes", _DELETE), "spec.kubernetes"),
    ("duplicate-names", SEED + "---\n" + SEED, "duplicate token name"),
    ("not-yaml", "kind: token\n  bad: [", "line"),
    ("not-a-mapping", "- just\n- a list\n", "expected a mapping"),
]


@pytest.mark.parametrize(("text", "path"), [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_tokens_name_the_field(text: str, path: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_tokens(text, "tokens.yaml")
    assert path in str(caught.value)
    assert str(caught.value).startswith("tokens.yaml")


def test_roles_are_case_insensitive_as_in_teleport() -> None:
    [token] = parse_tokens(_edit("spec.roles", ["app", "NODE", "App"]), "t").values()
    assert token.roles == ("App", "Node")


def test_other_join_methods_load_and_keep_their_blocks_out_of_the_way() -> None:
    text = yaml.safe_dump(
        {
            "kind": "token",
            "version": "v2",
            "metadata": {"name": "gh"},
            "spec": {
                "roles": ["Bot"],
                "join_method": "github",
                "bot_name": "ci",
                "github": {"allow": [{"repository": "org/repo"}]},
            },
        }
    )
    [token] = parse_tokens(text, "t").values()
    assert token.join_method == "github" and token.kubernetes is None


def test_tokens_check_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(SEED)
    bad.write_text(_edit("spec.kubernetes.allow.0.service_account", "namespace:"))
    assert main(["tokens", "check", str(good)]) == 0
    assert main(["tokens", "check", str(bad)]) == 1
    assert "spec.kubernetes.allow[0].service_account: " in capsys.readouterr().err
    assert main(["tokens", "check", str(tmp_path / "missing.yaml")]) == 1
