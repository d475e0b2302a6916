"""The keyring's key sources: rules whose type lacks its settings are a configuration error, not
an assertion (which `python -O` would skip, building a source from None)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from auth.service.files import ConfigError
from auth.service.keyring import IN_CLUSTER, Keyring, OidcSource, StaticSource, source_key
from auth.service.tokens import JoinToken, KubernetesRules
from metrics import Metrics
from tests.service import make_config


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        (KubernetesRules("oidc", ()), "type oidc without oidc.issuer"),
        (KubernetesRules("static_jwks", ()), "type static_jwks without static_jwks.jwks"),
    ],
    ids=["oidc", "static_jwks"],
)
def test_rules_without_their_settings_are_refused(rules: KubernetesRules, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        source_key(rules, "t")


def test_each_source_is_a_typed_key() -> None:
    assert source_key(KubernetesRules("oidc", (), oidc_issuer="https://i"), "t") == OidcSource("https://i", False)
    static = source_key(KubernetesRules("static_jwks", (), static_jwks="{}"), "t")
    assert (
        static == StaticSource("t", "{}", None) != source_key(KubernetesRules("static_jwks", (), static_jwks="{}"), "u")
    )
    assert source_key(KubernetesRules("in_cluster", ()), "t") is IN_CLUSTER


def test_in_cluster_tokens_need_the_in_cluster_settings(tmp_path: Path) -> None:
    config = replace(make_config(tmp_path), in_cluster=None)
    keyring = Keyring(config, Metrics(CollectorRegistry(), process=False))
    token = JoinToken("t", ("App",), "kubernetes", None, KubernetesRules("in_cluster", ()))
    with pytest.raises(ConfigError, match="in_cluster settings"):
        keyring.update({"t": token})
