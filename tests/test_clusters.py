"""Registered clusters (CONTRACT.md "Many clusters"): the config, joins through
`spec.kubernetes.cluster`, the binding that follows the token, reloads, and TokenReview per
cluster, over HTTP against several fake API servers, each with its own issuer and keys."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from auth.cli.main import main as cli_main
from auth.devtools.devtls import LoopbackTLS, make_loopback_tls
from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.kubeapi import FakeKubeAPI, write_kubeconfig
from auth.service.clusterreview import CLUSTER_REVIEWS
from auth.service.clusters import ClusterSpec, Reads, load_clusters, parse_clusters, unchanged
from auth.service.config import load_config
from auth.service.files import ConfigError
from auth.service.server import SERVICE, create_app
from auth.service.tokens import parse_token
from tests.polling import wait_for
from tests.service import CLUSTER, AuditLog, join_body, token_doc, write_tokens

Client = TestClient[web.Request, web.Application]
BEARER: Final = "kubejoin-own-token"
NS: Final = "teleport-agent"
REVIEW_AUDIENCE: Final = "https://kubernetes.default.svc"


@dataclass
class Remote:
    """A fake cluster of its own: API server, issuer and keys."""

    name: str
    api: FakeKubeAPI
    url: str
    kubeconfig: Path

    @property
    def issuer(self) -> str:
        return self.api.issuer.issuer

    def mint(self, pod: str, audiences: list[str] | None = None) -> str:
        return self.api.mint(NS, pod, audiences=audiences or [CLUSTER])

    def entry(self, **extra: Any) -> dict[str, Any]:
        """Registered with keys and binding through its API server."""
        entry = {
            "name": self.name,
            "issuer": self.issuer,
            "keys": {"type": "api_server"},
            "kubeconfig": str(self.kubeconfig),
            "binding": {"mode": "watch"},
        }
        return entry | extra


@pytest.fixture
def tls(tmp_path: Path) -> LoopbackTLS:
    return make_loopback_tls(tmp_path)


@pytest.fixture
def start_remote(tmp_path: Path, tls: LoopbackTLS, aiohttp_server: Callable[..., Any]) -> Callable[..., Any]:
    async def start(name: str) -> Remote:
        issuer = LocalIssuer(f"https://{name}.oidc.example", [IssuerKey.generate("P-256")])
        api = FakeKubeAPI(issuer, token=BEARER, bookmark_every=0.2)
        api.add_pod(NS, "app-0", service_account="app")
        server: TestServer = await aiohttp_server(api.app(), ssl=tls.server_context())
        url = f"https://127.0.0.1:{server.port}"
        write_kubeconfig(tmp_path / f"{name}.kubeconfig", url, tls.ca_file, BEARER)
        return Remote(name, api, url, tmp_path / f"{name}.kubeconfig")

    return start


def cluster_token(name: str, cluster: str) -> dict[str, Any]:
    document = token_doc(name, kind="in_cluster")
    document["spec"]["kubernetes"] = {"cluster": cluster, "allow": [{"service_account": f"{NS}:app"}]}
    return document


def static_token(name: str, remote: Remote) -> dict[str, Any]:
    """Teleport's own form: the cluster's keys copied into the join token."""
    jwks = remote.api.issuer.jwks_document().decode()
    document = token_doc(name, kind="in_cluster")
    document["spec"]["kubernetes"] = {
        "type": "static_jwks",
        "static_jwks": {"jwks": jwks, "issuer": remote.issuer},
        "allow": [{"service_account": f"{NS}:app"}],
    }
    return document


def write_config(directory: Path, clusters: list[dict[str, Any]], **extra: Any) -> Path:
    document = {
        "cluster_name": CLUSTER,
        "tokens_file": "tokens.yaml",
        "clusters": clusters,
        "clusters_dir": "clusters.d",
        **extra,
    }
    (directory / "clusters.d").mkdir(exist_ok=True)
    path = directory / "kubejoin.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


async def start_kubejoin(
    directory: Path, aiohttp_client: Callable[..., Any], config_file: Path, audit: AuditLog | None = None
) -> Client:
    audit = audit if audit is not None else AuditLog()
    app = create_app(load_config(str(config_file)), registry=CollectorRegistry(), audit=audit, reload_interval=0.05)
    client: Client = await aiohttp_client(app)
    for cluster in app[SERVICE].clusters.clusters.values():
        if cluster.binding is not None:
            await cluster.binding.wait_synced()
    return client


async def join(client: Client, token: str, token_name: str) -> tuple[int, str]:
    response = await client.post("/v1/join", json=join_body(token, token_name=token_name))
    answer = await response.json()
    return response.status, answer["error"]["code"] if response.status != 200 else "ok"


def pods_cached(client: Client, cluster: str) -> int:
    binding = client.app[SERVICE].clusters.clusters[cluster].binding
    assert binding is not None
    return binding.stores["pod"].count


def sample(client: Client, name: str, **labels: str) -> float | None:
    return client.app[SERVICE].metrics.registry.get_sample_value(name, labels)


# -- the config ---------------------------------------------------------------------------------
_JWKS: Final = LocalIssuer("https://x", [IssuerKey.generate("P-256")]).jwks_document().decode()
_OK: Final = {"name": "eu", "issuer": "https://eu.example", "keys": {"type": "static_jwks", "jwks": _JWKS}}
CONFIG_ERRORS: Final = [
    ("name-upper", [_OK | {"name": "EU"}], "clusters[0].name: expected a lowercase DNS label"),
    ("name-local", [_OK | {"name": "local"}], "clusters[0].name: 'local' is the cluster kubejoin runs in"),
    ("name-missing", [{"issuer": "https://x"}], "clusters[0].name: expected a lowercase DNS label"),
    ("issuer-missing", [{"name": "eu"}], "clusters[0].issuer: required"),
    ("unknown-key", [_OK | {"kubconfig": "x"}], "clusters[0].kubconfig: unknown key"),
    ("keys-type", [_OK | {"keys": {"type": "jwks"}}], "clusters[0].keys.type: expected one of oidc"),
    ("oidc-http", [_OK | {"issuer": "http://eu", "keys": {}}], "clusters[0].issuer: keys oidc need an https://"),
    ("api-no-kubeconfig", [_OK | {"keys": {"type": "api_server"}}], "clusters[0].kubeconfig: required with keys"),
    ("watch-no-kubeconfig", [_OK | {"binding": {"mode": "watch"}}], "clusters[0].kubeconfig: required with binding"),
    ("binding-mode", [_OK | {"binding": {"mode": "on"}}], "clusters[0].binding.mode: expected watch or off"),
    ("jwks-both", [_OK | {"keys": {"type": "static_jwks", "jwks": _JWKS, "jwks_file": "k"}}], "static_jwks needs"),
    ("jwks-bad", [_OK | {"keys": {"type": "static_jwks", "jwks": "{}"}}], "clusters[0].keys.jwks:"),
    ("jwks-with-oidc", [_OK | {"keys": {"jwks": _JWKS}}], "clusters[0].keys.jwks: only with type static_jwks"),
    ("kubeconfig-missing", [_OK | {"kubeconfig": "nope"}], "clusters[0].kubeconfig: "),
    ("duplicate-name", [_OK, _OK | {"issuer": "https://other"}], "clusters[1].name: cluster 'eu' is also registered"),
    ("duplicate-issuer", [_OK, _OK | {"name": "us"}], "clusters[1].issuer: the issuer of cluster 'eu' too"),
    ("audiences", [_OK | {"audiences": "a"}], "clusters[0].audiences: expected a list"),
]


@pytest.mark.parametrize(("clusters", "expected"), [c[1:] for c in CONFIG_ERRORS], ids=[c[0] for c in CONFIG_ERRORS])
def test_config_errors_name_the_file_and_key(tmp_path: Path, clusters: list[dict[str, Any]], expected: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_clusters({"clusters": clusters}, "kubejoin.yaml", tmp_path)
    assert str(caught.value).startswith("kubejoin.yaml: ")
    assert expected in str(caught.value)


def test_a_directory_file_is_named_and_duplicates_across_list_and_dir_are_refused(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "eu.yaml").write_text(yaml.safe_dump(_OK | {"binding": {"mode": "sideways"}}))
    with pytest.raises(ConfigError, match=r"d/eu\.yaml: binding\.mode: expected watch or off"):
        parse_clusters({"clusters_dir": "d"}, "kubejoin.yaml", tmp_path)
    (tmp_path / "d" / "eu.yaml").write_text(yaml.safe_dump(_OK))
    (tmp_path / "d" / "notes.txt").write_text("not a cluster")
    [spec], directory = parse_clusters({"clusters_dir": "d"}, "kubejoin.yaml", tmp_path)
    assert (spec.name, spec.keys, spec.watch, directory) == ("eu", "static_jwks", False, str(tmp_path / "d"))
    with pytest.raises(ConfigError, match=r"d/eu\.yaml: name: cluster 'eu' is also registered in kubejoin.yaml"):
        parse_clusters({"clusters": [_OK], "clusters_dir": "d"}, "kubejoin.yaml", tmp_path)


def test_the_fingerprint_follows_content_and_the_files_named(tmp_path: Path) -> None:
    def spec() -> ClusterSpec:
        return parse_clusters({"clusters": [entry]}, "c", tmp_path)[0][0]

    (tmp_path / "keys.json").write_text(_JWKS)
    (tmp_path / "kc").write_text("kubeconfig one")
    entry = _OK | {"keys": {"type": "static_jwks", "jwks_file": "keys.json"}, "kubeconfig": "kc"}
    first = spec()
    assert spec() == first
    (tmp_path / "kc").write_text("kubeconfig two")  # same entry, another credential: a change
    second = spec()
    assert second.fingerprint != first.fingerprint and second != first
    other = LocalIssuer("https://x", [IssuerKey.generate("P-256")]).jwks_document().decode()
    (tmp_path / "keys.json").write_text(other)
    assert spec().jwks == other and spec().fingerprint != second.fingerprint


def test_the_fingerprint_and_polls_follow_the_files_the_kubeconfig_names(tmp_path: Path) -> None:
    # The API client reads a kubeconfig's token file and CA once: a rotated one must replace the cluster.
    kubeconfig = {
        "clusters": [{"name": "eu", "cluster": {"server": "https://eu:6443", "certificate-authority": "ca.crt"}}],
        "users": [{"name": "reader", "user": {"tokenFile": "token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "eu", "user": "reader"}}],
        "current-context": "c",
    }
    (tmp_path / "eu.kubeconfig").write_text(json.dumps(kubeconfig))
    (tmp_path / "ca.crt").write_text("ca one")
    (tmp_path / "token").write_text("t1")
    (tmp_path / "kubejoin.yaml").write_text(yaml.safe_dump({"clusters": [_OK | {"kubeconfig": "eu.kubeconfig"}]}))
    reads: Reads = {}
    [first] = load_clusters(str(tmp_path / "kubejoin.yaml"), reads)
    assert unchanged(reads)
    (tmp_path / "token").write_text("t2")  # rotated
    assert not unchanged(reads)
    [second] = load_clusters(str(tmp_path / "kubejoin.yaml"))
    assert second.fingerprint != first.fingerprint
    (tmp_path / "ca.crt").write_text("ca two")
    assert load_clusters(str(tmp_path / "kubejoin.yaml"))[0].fingerprint != second.fingerprint
    (tmp_path / "token").unlink()  # refused, as a missing kubeconfig: the last good set stays
    with pytest.raises(ConfigError) as caught:
        load_clusters(str(tmp_path / "kubejoin.yaml"))
    assert str(caught.value) == (
        f"{tmp_path}/kubejoin.yaml: clusters[0].kubeconfig: users[reader].user.tokenFile: "
        f"{tmp_path}/token: cannot read (No such file or directory)"
    )


TOKEN_ERRORS: Final = [
    ("with-type", {"type": "oidc"}, "spec.kubernetes.type: not with cluster"),
    ("with-static", {"static_jwks": {}}, "spec.kubernetes.static_jwks: not with cluster"),
    ("bad-name", {"cluster": "EU West"}, "spec.kubernetes.cluster: expected a registered cluster's name"),
]


@pytest.mark.parametrize(("extra", "expected"), [c[1:] for c in TOKEN_ERRORS], ids=[c[0] for c in TOKEN_ERRORS])
def test_a_join_token_names_a_cluster_alone(extra: dict[str, Any], expected: str) -> None:
    document = cluster_token("t", "eu")
    document["spec"]["kubernetes"].update(extra)
    with pytest.raises(ConfigError, match=expected):
        parse_token(document)


def test_cluster_local_is_in_cluster_and_teleport_forms_are_unchanged() -> None:
    rules = parse_token(cluster_token("t", "local")).kubernetes
    assert rules is not None and (rules.type, rules.cluster) == ("in_cluster", None)
    rules = parse_token(cluster_token("t", "eu")).kubernetes
    assert rules is not None and (rules.type, rules.cluster) == ("cluster", "eu")
    rules = parse_token(token_doc("t", kind="in_cluster")).kubernetes
    assert rules is not None and (rules.type, rules.cluster) == ("in_cluster", None)


# -- joins, the binding, reloads -------------------------------------------------------------------
async def test_joins_per_cluster_and_no_cross_cluster_acceptance(
    tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]
) -> None:
    a, b = await start_remote("a"), await start_remote("b")
    write_tokens(
        tmp_path / "tokens.yaml",
        cluster_token("to-a", "a"),
        cluster_token("to-b", "b"),
        cluster_token("to-nowhere", "nowhere"),
        static_token("a-static", a),
    )
    audit = AuditLog()
    client = await start_kubejoin(tmp_path, aiohttp_client, write_config(tmp_path, [a.entry(), b.entry()]), audit)
    token_a, token_b = a.mint("app-0"), b.mint("app-0")
    assert await join(client, token_a, "to-a") == (200, "ok")
    assert await join(client, token_b, "to-b") == (200, "ok")
    assert await join(client, token_a, "a-static") == (200, "ok")
    assert await join(client, token_a, "to-b") == (401, "unknown_key")  # A's token, B's keys
    forged = a.api.issuer.sign(b.api.issuer.claims(NS, "app", pod="app-0", node="node-1", audiences=[CLUSTER]))
    assert await join(client, forged, "to-b") == (401, "unknown_key")  # B's issuer, A's key
    assert await join(client, token_a, "to-nowhere") == (403, "unknown_cluster")
    # The join log names the cluster: the one named, or the one whose issuer the token carries.
    lines = [(r["token"], r.get("cluster"), r["reason"]) for r in audit.records() if r.get("event") == "join"]
    assert lines == [
        ("to-a", "a", "ok"),
        ("to-b", "b", "ok"),
        ("a-static", "a", "ok"),
        ("to-b", "b", "unknown_key"),
        ("to-b", "b", "unknown_key"),
        ("to-nowhere", "nowhere", "unknown_cluster"),
    ]
    assert (
        sample(client, "kubejoin_join_attempts_total", token="to-nowhere", result="failure", reason="unknown_cluster")
        == 1
    )
    requests = sum(a.api.requests.values())
    a.api.delete("pods", NS, "app-0")
    await wait_for(lambda: pods_cached(client, "a") == 0, "the deletion seen")
    assert await join(client, token_a, "to-a") == (401, "pod_deleted")
    # The binding follows the token: Teleport's static_jwks form, holding A's keys, is refused too.
    assert await join(client, token_a, "a-static") == (401, "pod_deleted")
    assert sum(a.api.requests.values()) == requests  # refused from the watch cache, no API request
    assert await join(client, token_b, "to-b") == (200, "ok")  # B is undisturbed


async def test_reload_adds_changes_removes_and_refuses_a_broken_set(
    tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]
) -> None:
    a, c = await start_remote("a"), await start_remote("c")
    write_tokens(tmp_path / "tokens.yaml", cluster_token("to-a", "a"), cluster_token("to-c", "c"))
    client = await start_kubejoin(tmp_path, aiohttp_client, write_config(tmp_path, [a.entry()]))
    registry = client.app[SERVICE].clusters
    first_a = registry.clusters["a"]
    assert sample(client, "kubejoin_clusters") == 1
    assert sample(client, "kubejoin_binding_synced", cluster="a", kind="pod") == 1
    assert sample(client, "kubejoin_binding_objects", cluster="a", kind="pod") == 1
    assert await join(client, c.mint("app-0"), "to-c") == (403, "unknown_cluster")
    added = tmp_path / "clusters.d" / "c.yaml"
    added.write_text(yaml.safe_dump(c.entry()))
    await wait_for(lambda: "c" in registry.clusters, "cluster c registered")
    assert registry.clusters["a"] is first_a  # unchanged: same keys, same watch cache
    assert sample(client, "kubejoin_clusters") == 2
    assert await join(client, c.mint("app-0"), "to-c") == (200, "ok")
    assert sample(client, "kubejoin_binding_lookups_total", cluster="c", kind="pod", result="cache") == 1
    watching = c.api.watching
    assert watching > 0
    added.write_text("name: c\nissuer: [broken")
    await wait_for(lambda: sample(client, "kubejoin_clusters_last_reload_successful") == 0, "the refusal")
    ready = await (await client.get("/readyz")).json()
    assert "c.yaml" in ready["clusters_last_reload_error"] and ready["clusters"] == 2
    assert await join(client, c.mint("app-0"), "to-c") == (200, "ok")  # the last good set stays
    added.unlink()
    await wait_for(lambda: "c" not in registry.clusters, "cluster c removed")
    assert sample(client, "kubejoin_clusters_last_reload_successful") == 1
    assert await join(client, c.mint("app-0"), "to-c") == (403, "unknown_cluster")
    await wait_for(lambda: c.api.watching == 0, "c's watches closed")
    assert sample(client, "kubejoin_binding_synced", cluster="c", kind="pod") is None  # its series went too
    assert registry.clusters["a"] is first_a
    assert await join(client, a.mint("app-0"), "to-a") == (200, "ok")


async def test_sighup_reload_and_one_api_server_down(
    tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]
) -> None:
    a, b = await start_remote("a"), await start_remote("b")
    write_tokens(tmp_path / "tokens.yaml", cluster_token("to-a", "a"), cluster_token("to-b", "b"))
    config = write_config(tmp_path, [a.entry()])
    client = await start_kubejoin(tmp_path, aiohttp_client, config)
    service = client.app[SERVICE]
    token_a = a.mint("app-0")
    assert await join(client, token_a, "to-a") == (200, "ok")
    config.write_text(config.read_text().replace("clusters:\n", "clusters:\n" + _yaml_item(b.entry())))
    await service.reload()  # as SIGHUP does
    assert set(service.clusters.clusters) == {"a", "b"}
    await service.clusters.clusters["b"].binding.wait_synced()  # type: ignore[union-attr]
    a.api.unavailable = True  # A's API server down: its known pods still join, B is unaffected
    assert await join(client, token_a, "to-a") == (200, "ok")
    assert await join(client, a.mint("app-0"), "to-a") == (200, "ok")
    assert await join(client, b.mint("app-0"), "to-b") == (200, "ok")


def _yaml_item(entry: dict[str, Any]) -> str:
    return "- " + yaml.safe_dump(entry).replace("\n", "\n  ").rstrip() + "\n"


# -- TokenReview per cluster -------------------------------------------------------------------------
async def test_token_review_per_cluster(tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]) -> None:
    a, b = await start_remote("a"), await start_remote("b")
    write_tokens(tmp_path / "tokens.yaml", cluster_token("to-a", "a"))
    review = {
        "audiences": ["reviews"],
        "source": {"type": "static_jwks", "static_jwks": {"jwks": b.api.issuer.jwks_document().decode()}},
    }
    entries = [a.entry(audiences=[REVIEW_AUDIENCE]), b.entry(binding={"mode": "off"})]
    client = await start_kubejoin(tmp_path, aiohttp_client, write_config(tmp_path, entries, token_review=review))

    async def ask(cluster: str, token: str, version: str = "v1") -> tuple[int, dict[str, Any]]:
        path = f"/clusters/{cluster}/apis/authentication.k8s.io/{version}/tokenreviews"
        response = await client.post(path, data=json.dumps({"spec": {"token": token}}))
        return response.status, await response.json()

    token_a = a.mint("app-0", [REVIEW_AUDIENCE])
    for version in ("v1", "v1beta1"):
        status, answer = await ask("a", token_a, version)
        assert status == 201 and answer["status"]["authenticated"] is True
        assert answer["status"]["user"]["extra"]["kubejoin.dev/cluster"] == ["a"]
        assert answer["status"]["user"]["username"] == f"system:serviceaccount:{NS}:app"
    status, answer = await ask("b", token_a)  # a token of another cluster
    assert status == 201 and answer["status"]["authenticated"] is False
    assert answer["status"]["error"].startswith("unknown_key")
    status, answer = await ask("b", b.mint("app-0", ["reviews"]))  # B's default: token_review.audiences
    assert status == 201 and answer["status"]["authenticated"] is True
    status, answer = await ask("nowhere", token_a)
    assert status == 404 and (answer["kind"], answer["reason"]) == ("Status", "NotFound")
    a.api.delete("pods", NS, "app-0")
    await wait_for(lambda: pods_cached(client, "a") == 0, "the deletion seen")
    status, answer = await ask("a", token_a)
    assert answer["status"]["authenticated"] is False and answer["status"]["error"].startswith("pod_deleted")


def test_tokens_check_warns_of_unregistered_clusters(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_tokens(tmp_path / "tokens.yaml", cluster_token("to-eu", "eu"), cluster_token("to-us", "us"))
    config = write_config(tmp_path, [_OK])
    assert cli_main(["tokens", "check", str(tmp_path / "tokens.yaml"), "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert '"cluster": "us"' in out
    assert "join token to-us names cluster us, which the config does not register (registered: eu)" in err
    assert "to-eu" not in err
    (tmp_path / "clusters.d" / "us.yaml").write_text(yaml.safe_dump(_OK | {"name": "us"}))  # a duplicate issuer
    assert cli_main(["tokens", "check", str(tmp_path / "tokens.yaml"), "--config", str(config)]) == 1
    assert "us.yaml: issuer: the issuer of cluster 'eu' too" in capsys.readouterr().err


def test_a_clusters_join_verifier_is_never_pushed_out_by_review_audiences(tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(cluster_token("to-eu", "eu")))
    app = create_app(load_config(str(write_config(tmp_path, [_OK]))), registry=CollectorRegistry(), audit=AuditLog())
    registry = app[SERVICE].clusters
    registry.apply([parse_clusters({"clusters": [_OK]}, "c", tmp_path)[0][0]])
    cluster = registry.clusters["eu"]
    joins = cluster.join_verifier()
    for index in range(100):  # callers naming many audience sets
        cluster.verifier(audiences=[f"aud-{index}"], max_ttl=600)
    assert cluster.join_verifier() is joins
    assert cluster.verifier(audiences=["aud-99"], max_ttl=600) is cluster.verifier(audiences=["aud-99"], max_ttl=600)


def test_reviewers_follow_the_cluster_objects(tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(cluster_token("to-eu", "eu")))
    review = {"audiences": ["reviews"], "source": {"type": "static_jwks", "static_jwks": {"jwks": _JWKS}}}
    us = _OK | {"name": "us", "issuer": "https://us.example"}
    config = load_config(str(write_config(tmp_path, [_OK, us], token_review=review)))
    app = create_app(config, registry=CollectorRegistry(), audit=AuditLog())
    registry, reviews = app[SERVICE].clusters, app[CLUSTER_REVIEWS]
    registry.apply(config.clusters)
    eu = reviews.reviewer("eu")
    assert eu is not None and eu is reviews.reviewer("eu") and eu.cluster == "eu"
    changed = parse_clusters({"clusters": [_OK | {"audiences": ["other"]}, us]}, "c", tmp_path)[0]
    registry.apply(changed)  # eu replaced: a new reviewer over the new cluster object
    assert reviews.reviewer("eu") not in (None, eu)
    registry.apply(changed[1:])  # eu removed
    assert reviews.reviewer("us") is not None and reviews.reviewer("eu") is None
    assert set(reviews._reviewers) == {"us"}


async def test_polls_parse_only_changed_files_and_a_reverted_edit_clears_the_error(tmp_path: Path) -> None:
    (tmp_path / "tokens.yaml").write_text(yaml.safe_dump(cluster_token("to-eu", "eu")))
    (tmp_path / "eu.jwks").write_text(_JWKS)
    entry = _OK | {"keys": {"type": "static_jwks", "jwks_file": "../eu.jwks"}}
    config = load_config(str(write_config(tmp_path, [])))
    good = yaml.safe_dump(entry)
    (tmp_path / "clusters.d" / "eu.yaml").write_text(good)
    app = create_app(config, registry=CollectorRegistry(), audit=AuditLog())
    registry = app[SERVICE].clusters
    registry.start()
    assert await registry.reload() is True  # the file appeared after the config was loaded
    first = registry.clusters["eu"]
    assert await registry.reload() is None
    (tmp_path / "clusters.d" / "eu.yaml").write_text(good)  # rewritten, same bytes
    assert await registry.reload() is None and registry.clusters["eu"] is first
    (tmp_path / "clusters.d" / "eu.yaml").write_text(good + "binding: {mode: sideways}\n")
    assert await registry.reload() is False and "binding.mode" in registry.last_error
    (tmp_path / "clusters.d" / "eu.yaml").write_text(good)  # reverted
    assert await registry.reload() is None and registry.last_error == ""
    assert registry.clusters["eu"] is first
    other = LocalIssuer("https://x", [IssuerKey.generate("P-256")]).jwks_document().decode()
    (tmp_path / "eu.jwks").write_text(other)  # a file the entry names changed: the cluster is replaced
    assert await registry.reload() is True and registry.clusters["eu"] is not first
    assert registry.clusters["eu"].spec.jwks == other


async def test_label_rules_follow_the_cluster_the_token_comes_from(
    tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]
) -> None:
    """Issue 19 across clusters: a rule on pod labels is judged by the watch of the cluster the
    token names (or whose issuer it carries), and a cluster without a watch cannot carry one."""
    a, b = await start_remote("a"), await start_remote("b")
    a.api.label("pods", NS, "app-0", {"tier": "prod"})
    b.api.label("pods", NS, "app-0", {"tier": "dev"})
    prod = [{"service_account": f"{NS}:app", "pod_labels": {"tier": "prod"}}]
    to_a, to_b, a_static = cluster_token("to-a", "a"), cluster_token("to-b", "b"), static_token("a-static", a)
    for document in (to_a, to_b, a_static):
        document["spec"]["kubernetes"]["allow"] = prod
    write_tokens(tmp_path / "tokens.yaml", to_a, to_b, a_static)
    client = await start_kubejoin(tmp_path, aiohttp_client, write_config(tmp_path, [a.entry(), b.entry()]))
    assert await join(client, a.mint("app-0"), "to-a") == (200, "ok")
    assert await join(client, a.mint("app-0"), "a-static") == (200, "ok")  # A's watch, by the token's issuer
    assert await join(client, b.mint("app-0"), "to-b") == (403, "no_matching_allow_rule")
    b.api.label("pods", NS, "app-0", {"tier": "prod"})
    token_b = b.mint("app-0")

    async def joined() -> bool:
        return await join(client, token_b, "to-b") == (200, "ok")

    await wait_for(joined, "B's relabel in B's watch cache", within=1.0)

    # Without B's watch, a rule reading B's pods cannot be judged: that tokens file is refused.
    unwatched = tmp_path / "unwatched"
    unwatched.mkdir()
    write_tokens(unwatched / "tokens.yaml", to_b)
    config = write_config(unwatched, [a.entry(), b.entry(binding={"mode": "off"})])
    with pytest.raises(ConfigError, match=r"join token to-b: .*rule 1\) reads pods .*cluster b"):
        create_app(load_config(str(config)), registry=CollectorRegistry(), audit=AuditLog())


def test_tokens_check_refuses_label_rules_the_config_cannot_answer(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labelled = cluster_token("to-eu", "eu")
    labelled["spec"]["kubernetes"]["allow"][0]["pod_labels"] = {"tier": "prod"}
    write_tokens(tmp_path / "tokens.yaml", labelled)
    config = write_config(tmp_path, [_OK])  # eu has no binding watch
    assert cli_main(["tokens", "check", str(tmp_path / "tokens.yaml"), "--config", str(config)]) == 1
    assert "join token to-eu: spec.kubernetes.allow[0] (rule 1) reads pods of the cluster" in capsys.readouterr().err
    # without --config the file alone is valid: which cluster answers is the config's business
    assert cli_main(["tokens", "check", str(tmp_path / "tokens.yaml")]) == 0


async def test_a_label_rule_whose_cluster_lost_its_watch_is_503(
    tmp_path: Path, aiohttp_client: Any, start_remote: Callable[..., Any]
) -> None:
    """The tokens file was checked against the clusters at load; a clusters reload may take the
    watch away later: joins that need it are then binding_unavailable (retry), never judged."""
    a = await start_remote("a")
    a.api.label("pods", NS, "app-0", {"tier": "prod"})
    to_a = cluster_token("to-a", "a")
    to_a["spec"]["kubernetes"]["allow"][0]["pod_labels"] = {"tier": "prod"}
    write_tokens(tmp_path / "tokens.yaml", to_a)
    client = await start_kubejoin(tmp_path, aiohttp_client, write_config(tmp_path, [a.entry()]))
    token = a.mint("app-0")
    assert await join(client, token, "to-a") == (200, "ok")
    write_config(tmp_path, [a.entry(binding={"mode": "off"})])
    assert await client.app[SERVICE].clusters.reload() is True
    response = await client.post("/v1/join", json=join_body(token, token_name="to-a"))
    answer = await response.json()
    assert (response.status, answer["error"]["code"]) == (503, "binding_unavailable")
    assert "has no live binding (binding.mode: watch) now" in answer["error"]["message"]
