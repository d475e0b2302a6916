"""The service config: defaults, and one clear line per mistake (exit 2 from `kubejoin serve`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from auth.cli import main
from auth.service import config as config_module
from auth.service.config import load_config, parse_config
from auth.service.files import ConfigError


def test_contract_example_loads(tmp_path: Path) -> None:
    config = parse_config(
        {
            "cluster_name": "example.teleport.sh",
            "listen": "127.0.0.1:3025",
            "metrics_listen": "127.0.0.1:9464",
            "tokens_file": "tokens.yaml",
            "ca": {"cert_file": "ca.pem", "key_file": "ca-key.pem"},
            "certificate_ttl": "1h",
            "verification": {"leeway": "10s", "max_token_ttl": "30m"},
            "in_cluster": {
                "api_server": "https://kubernetes.default.svc",
                "ca_file": "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt",
                "token_file": "/var/run/secrets/kubernetes.io/serviceaccount/token",
            },
        },
        tmp_path,
    )
    assert config.tokens_file == str(tmp_path / "tokens.yaml")
    assert (config.certificate_ttl, config.verification.leeway, config.verification.max_token_ttl) == (3600, 10, 1800)
    assert config.metrics_listen == "127.0.0.1:9464"


def test_api_server_defaults_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "6443")
    config = parse_config({"cluster_name": "c"}, tmp_path)
    assert config.in_cluster is not None and config.in_cluster.api_server == "https://[fd00::1]:6443"


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({}, "cluster_name: required"),
        ({"cluster_name": "c", "verification": {"leway": "1s"}}, "verification.leway: unknown key"),
        ({"cluster_name": "c", "certificate_ttl": "soon"}, "certificate_ttl: expected a duration"),
        ({"cluster_name": "c", "certificate_ttl": "0s"}, "certificate_ttl: must be positive"),
        ({"cluster_name": "c", "listen": "3025"}, "listen: expected HOST:PORT"),
        ({"cluster_name": "c", "in_cluster": {"api_server": "http://k"}}, "in_cluster.api_server: must be https"),
        ({"cluster_name": "c", "limits": {"max_in_flight": 0}}, "limits.max_in_flight"),
        ({"cluster_name": "c", "ca": "ca.pem"}, "ca: expected a mapping"),
        ({"cluster_name": "c", "tokens": "x"}, "tokens: unknown key"),
        (["cluster_name"], "expected a mapping"),
        ({"cluster_name": "c", "tls": {"cert_file": "a"}}, "tls: cert_file and key_file go together"),
        ({"cluster_name": "c", "tls": {}}, "tls: give either"),
        ({"cluster_name": "c", "tls": {"dns_names": "kubejoin"}}, "tls.dns_names"),
        ({"cluster_name": "c", "binding": {"mode": "poll"}}, "binding.mode: expected watch or off"),
        ({"cluster_name": "c", "binding": {"nodes": "yes"}}, "binding.nodes: expected true or false"),
        ({"cluster_name": "c", "binding": {"mode": "watch", "pods": True}}, "binding.pods: unknown key"),
        ({"cluster_name": "c", "binding": {"watch_idle_timeout": 60}}, "binding.watch_idle_timeout: expected seconds"),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": "1m"}},
            "binding.watch_idle_timeout: expected seconds",
        ),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": True}},
            "binding.watch_idle_timeout: expected seconds",
        ),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": "soon"}},
            "binding.watch_idle_timeout: expected a duration",
        ),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": float("inf")}},
            "binding.watch_idle_timeout: expected seconds",
        ),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": float("nan")}},
            "binding.watch_idle_timeout: expected seconds",
        ),
        (
            {"cluster_name": "c", "binding": {"watch_idle_timeout": [150]}},
            "binding.watch_idle_timeout: expected seconds",
        ),
        ({"cluster_name": "c", "workers": 0}, "workers: expected auto or an integer from 1 to 256"),
        ({"cluster_name": "c", "workers": True}, "workers: expected auto"),
        ({"cluster_name": "c", "workers": "all"}, "workers: expected auto"),
        # issue 12, item 7: before, a non-ASCII name made every join a 500; "#" reached the SAN
        ({"cluster_name": "café.example"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "example.sh/ns/x#"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "Example.sh"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "a..b"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": ".a"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "a."}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "-a"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "a.-b"}, "cluster_name: expected a lowercase DNS name"),
        ({"cluster_name": "x" * 64}, "cluster_name: expected a lowercase DNS name"),
    ],
)
def test_mistakes_name_the_key(tmp_path: Path, document: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(document, tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "cluster_name: c\nverification:\n  leeway: [",
        "cluster_name: c\nunknown: 1\n",
        "\xff",
        "cluster_name: 'example.sh#x'\n",
    ],
)
def test_serve_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_bytes(text.encode("latin-1"))
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("kubejoin serve: " + str(path))
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "nope.yaml"))


@pytest.mark.parametrize(
    ("text", "mode"), [("", "off"), ("binding: {mode: off}", "off"), ("binding: {mode: watch}", "watch")]
)
def test_binding_mode_reads_yamls_unquoted_off(tmp_path: Path, text: str, mode: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"cluster_name: c\n{text}\n")
    config = load_config(str(path))
    assert (config.binding.mode, config.binding.nodes) == (mode, True)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("", 150.0),
        ("{watch_idle_timeout: 90}", 90.0),
        ("{watch_idle_timeout: 4m}", 240.0),
        ("{watch_idle_timeout: 120.5}", 120.5),
    ],
)
def test_binding_watch_idle_timeout(tmp_path: Path, text: str, seconds: float) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(f"cluster_name: c\nbinding: {text or '{}'}\n")
    assert load_config(str(path)).binding.watch_idle_timeout == seconds


def test_workers_auto_is_one_per_usable_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert 1 <= config_module.usable_cpus() <= (os.cpu_count() or 1)
    monkeypatch.setattr(config_module, "usable_cpus", lambda: 3)
    assert parse_config({"cluster_name": "c", "workers": "auto"}, tmp_path).workers == 3
    assert parse_config({"cluster_name": "c", "workers": 4}, tmp_path).workers == 4
    assert parse_config({"cluster_name": "c"}, tmp_path).workers == 1


def test_token_review_contract_example(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(
        "cluster_name: c\n"
        "binding: {mode: watch}\n"
        "token_review:\n"
        "  source: {type: in_cluster}\n"
        "  audiences: [https://kubernetes.default.svc.cluster.local]\n"
        "  max_token_ttl: 0\n"
        "  reviewers:\n"
        '    - service_account: "vault:vault-auth"\n'
        "    - {service_account_namespace: team-*, service_account_name: reviewer}\n"
    )
    review = load_config(str(path)).token_review
    assert review is not None
    assert review.source.type == "in_cluster" and review.audiences == ("https://kubernetes.default.svc.cluster.local",)
    assert review.max_token_ttl == 0
    assert review.reviewers is not None and [str(r) for r in review.reviewers] == [
        "vault:vault-auth",
        "team-*:reviewer",
    ]
    assert review.reviewers[1].matches("team-b", "reviewer") and not review.reviewers[1].matches("vault", "reviewer")


def test_token_review_defaults(tmp_path: Path) -> None:
    config = parse_config(
        {"cluster_name": "c", "verification": {"max_token_ttl": "45m"}, "token_review": {"audiences": ["a"]}}, tmp_path
    )
    assert config.token_review is not None
    assert config.token_review.source.type == "in_cluster"  # as in join tokens, a missing type is in_cluster
    assert config.token_review.max_token_ttl == 45 * 60  # verification.max_token_ttl
    assert config.token_review.reviewers is None  # anyone may ask
    assert parse_config({"cluster_name": "c"}, tmp_path).token_review is None


_JWKS = (Path(__file__).parent / "data" / "kubernetes-apiserver" / "jwks.json").read_text()


@pytest.mark.parametrize(
    ("review", "binding", "message"),
    [
        ({}, "off", "token_review.audiences: required"),
        ({"audiences": "a"}, "off", "token_review.audiences: expected a non-empty list"),
        ({"audiences": []}, "off", "token_review.audiences: expected a non-empty list"),
        ({"audiences": ["a"], "max_token_ttl": 0}, "off", "max_token_ttl: 0 .* only with binding.mode: watch"),
        ({"audiences": ["a"], "max_token_ttl": "0s"}, "off", "max_token_ttl: 0 .* only with binding.mode: watch"),
        (
            {"audiences": ["a"], "max_token_ttl": 0, "source": {"type": "static_jwks", "static_jwks": {"jwks": _JWKS}}},
            "watch",
            "max_token_ttl: 0 .* in_cluster source",
        ),
        ({"audiences": ["a"], "max_token_ttl": "-1s"}, "off", "token_review.max_token_ttl: expected a duration"),
        ({"audiences": ["a"], "reviewers": None}, "off", "token_review.reviewers: expected a non-empty list"),
        ({"audiences": ["a"], "reviewers": []}, "off", "token_review.reviewers: expected a non-empty list"),
        (
            {"audiences": ["a"], "reviewers": [{"service_account": "vault"}]},
            "off",
            r"token_review.reviewers\[0\].service_account: expected \"namespace:name\"",
        ),
        ({"audiences": ["a"], "source": {"type": "webhook"}}, "off", "token_review.source.type: expected one of"),
        ({"audiences": ["a"], "source": {"type": "oidc"}}, "off", "token_review.source.oidc: expected a mapping"),
        (
            {"audiences": ["a"], "source": {"type": "oidc", "oidc": {"issuer": "http://k"}}},
            "off",
            "token_review.source.oidc.issuer: expected an https:// URL",
        ),
        (
            {"audiences": ["a"], "source": {"type": "static_jwks", "static_jwks": {"jwks": "{}"}}},
            "off",
            "token_review.source.static_jwks.jwks",
        ),
        ({"audiences": ["a"], "source": {"allow": []}}, "off", "token_review.source.allow: unknown key"),
        ({"audiences": ["a"], "audience": "b"}, "off", "token_review.audience: unknown key"),
    ],
)
def test_token_review_mistakes_name_the_key(tmp_path: Path, review: object, binding: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"cluster_name": "c", "binding": {"mode": binding}, "token_review": review}, tmp_path)
