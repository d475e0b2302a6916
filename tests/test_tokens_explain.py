"""`kubejoin tokens explain`: which join tokens accept a ServiceAccount token and why each other
rule refuses it; labels from a cluster (an API server of this test's own, serving labels) through a
kubeconfig; exit codes; never a secret token's name, never a traceback."""

from __future__ import annotations

import asyncio
import json
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from auth.cli import main
from auth.devtools.issuer import LocalIssuer

POD_UID = "0f8f2a4e-6a53-4c5e-9a38-5d3c1c2b7a10"
NODE = "node-a"
NODE_UID = "5b1c9a2e-2f0e-4e8d-8c1a-0d6f3b2a9e44"
TOKENS = """\
kind: token
version: v2
metadata: {name: plain}
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    allow: [{service_account: "team-b:agent"}]
---
kind: token
version: v2
metadata: {name: s3cret-join-value}
spec: {roles: [Node], join_method: token}
---
kind: token
version: v2
metadata: {name: labelled}
spec:
  roles: [App, Node]
  join_method: kubernetes
  kubernetes:
    allow:
      - service_account: "team-b:agent"
      - service_account_namespace: "team-*"
        service_account_name: "*"
        pod_labels: {tier: prod}
        node_labels: {kubernetes.io/os: linux}
      - service_account: "team-a:agent"
        expression: 'namespaceObject.labels.team == "payments" && claims.sub.endsWith(":agent")'
"""
CLAIMS_ONLY = """\
kind: token
version: v2
metadata: {name: by-claims}
spec:
  roles: [Db]
  join_method: kubernetes
  kubernetes:
    allow:
      - service_account: "team-a:agent"
        expression: 'claims.sub.endsWith(":agent")'
"""


def sa_token(directory: Path, **claims: Any) -> Path:
    issuer = LocalIssuer("https://kubernetes.default.svc")
    payload = issuer.claims("team-a", "agent", pod="agent-1", node=NODE, audiences=["kubejoin"])
    payload["kubernetes.io"]["pod"]["uid"] = POD_UID
    payload["kubernetes.io"]["node"]["uid"] = NODE_UID
    payload.update(claims)
    path = directory / "sa-token"
    path.write_text(issuer.sign(payload) + "\n")
    return path


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(text)
    return path


def explain(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["tokens", "explain", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "s3cret-join-value" not in out + err
    return code, out, err


def test_without_a_cluster_label_conditions_are_unknown(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokens, token = write(tmp_path, "tokens.yaml", TOKENS), sa_token(tmp_path)
    code, out, _ = explain(capsys, str(tokens), "--sa-token", str(token))
    assert code == 1
    assert out.splitlines() == [
        "NOTE: the token's signature, issuer, audience and lifetime are NOT checked here, only its claims read; "
        "`kubejoin verify` checks them.",
        "service account team-a:agent (pod agent-1, node node-a)",
        "labels not read: give --kubeconfig",
        "join token plain: refuses",
        "  rule 1: service account team-a:agent is not team-b:agent",
        "join token labelled: refuses",
        "  rule 1: service account team-a:agent is not team-b:agent",
        "  rule 2: pod labels unknown (give --kubeconfig)",
        "  rule 3: expression reads namespaceObject, unknown (give --kubeconfig)",
    ]


def test_an_expression_over_claims_runs_without_a_cluster_and_roles_filter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tokens, token = write(tmp_path, "tokens.yaml", TOKENS + "---\n" + CLAIMS_ONLY), sa_token(tmp_path)
    code, out, _ = explain(capsys, str(tokens), "--sa-token", str(token), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["signature_checked"] is False and "kubejoin verify" in report["note"]
    assert [t["name"] for t in report["tokens"]] == ["plain", "labelled", "by-claims"]
    assert report["tokens"][2] == {"name": "by-claims", "accepts": True, "roles": ["Db"], "refusal": []}
    code, out, _ = explain(capsys, str(tokens), "--sa-token", str(token), "--json", "--role", "app")
    assert code == 1
    assert json.loads(out)["tokens"][2]["refusal"] == ["allows the account but grants Db, not App"]


def test_an_expired_join_token_refuses(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    expired = CLAIMS_ONLY.replace(
        "metadata: {name: by-claims}", 'metadata: {name: by-claims, expires: "2020-01-01T00:00:00Z"}'
    )
    tokens, token = write(tmp_path, "tokens.yaml", expired), sa_token(tmp_path)
    code, out, _ = explain(capsys, str(tokens), "--sa-token", str(token))
    assert code == 1
    assert "join token by-claims: refuses\n  the join token expired at 2020-01-01T00:00:00Z\n" in out


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("tokens-missing", "cannot read"),
        ("tokens-invalid", "spec.kubernetes.allow[1].pod_labels.tier: rule 2: label value true is a boolean"),
        ("sa-token-missing", "cannot read"),
        ("sa-token-garbage", "not a ServiceAccount token (malformed_token: token has 1 parts"),
        ("sa-token-unbound", "not a ServiceAccount token (not_pod_bound: no kubernetes.io claim"),
        ("kubeconfig-missing", "cannot read"),
        ("kubeconfig-garbage", "cannot read the cluster: kubeconfig"),
    ],
)
def test_unreadable_inputs_exit_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, message: str
) -> None:
    tokens = write(tmp_path, "tokens.yaml", TOKENS)
    token = sa_token(tmp_path)
    extra: list[str] = []
    if case == "tokens-missing":
        tokens = tmp_path / "nothing.yaml"
    elif case == "tokens-invalid":
        write(tmp_path, "tokens.yaml", TOKENS.replace("{tier: prod}", "{tier: true}"))
    elif case == "sa-token-missing":
        token = tmp_path / "nothing"
    elif case == "sa-token-garbage":
        token.write_text("not-a-jwt")
    elif case == "sa-token-unbound":
        token = sa_token(tmp_path, **{"kubernetes.io": {"namespace": "team-a"}})
    elif case == "kubeconfig-missing":
        extra = ["--kubeconfig", str(tmp_path / "nothing")]
    elif case == "kubeconfig-garbage":
        extra = ["--kubeconfig", str(write(tmp_path, "kubeconfig", "just: words\n"))]
    code, out, err = explain(capsys, str(tokens), "--sa-token", str(token), *extra)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith("kubejoin tokens explain: ") and message in err


def cluster_app(objects: dict[str, dict[str, Any]]) -> web.Application:
    """An API server that knows only the given objects, by path, and answers 404 for others."""

    async def get(request: web.Request) -> web.Response:
        assert request.headers["Authorization"] == "Bearer kube-token"
        obj = objects.get(request.path)
        if obj is None:
            return web.json_response({"kind": "Status", "code": 404, "message": "not found"}, status=404)
        return web.json_response(obj)

    app = web.Application()
    app.router.add_get("/{tail:.*}", get)
    return app


def meta(name: str, uid: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"kind": "PartialObjectMetadata", "metadata": {"name": name, "uid": uid, "labels": labels}}


def kubeconfig(directory: Path, server: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "kube-token"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "c",
    }
    return write(directory, "kubeconfig", json.dumps(config))


POD_PATH = "/api/v1/namespaces/team-a/pods/agent-1"
NAMESPACE_PATH = "/api/v1/namespaces/team-a"
NODE_PATH = f"/api/v1/nodes/{NODE}"


async def test_labels_read_through_a_kubeconfig_decide(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], aiohttp_server: Any
) -> None:
    objects = {
        POD_PATH: meta("agent-1", POD_UID, {"tier": "prod"}),
        NAMESPACE_PATH: meta("team-a", "n1", {"team": "search"}),
        NODE_PATH: meta(NODE, NODE_UID, {"kubernetes.io/os": "windows"}),
    }
    server: TestServer = await aiohttp_server(cluster_app(objects))
    config = kubeconfig(tmp_path, f"http://127.0.0.1:{server.port}")
    tokens, token = write(tmp_path, "tokens.yaml", TOKENS), sa_token(tmp_path)
    argv = [str(tokens), "--sa-token", str(token), "--kubeconfig", str(config)]

    code, out, _ = await asyncio.to_thread(explain, capsys, *argv)
    assert code == 1
    assert f"labels read from the cluster of {config}\n" in out
    assert (
        "join token labelled: refuses\n"
        "  rule 1: service account team-a:agent is not team-b:agent\n"
        '  rule 2: node label kubernetes.io/os is "windows", not "linux"\n'
        "  rule 3: expression is false\n"
    ) in out

    objects[NODE_PATH] = meta(NODE, NODE_UID, {"kubernetes.io/os": "linux"})
    code, out, _ = await asyncio.to_thread(explain, capsys, *argv)
    assert code == 0 and "join token labelled: accepts, with roles App, Node\n" in out

    objects[NAMESPACE_PATH] = meta("team-a", "n1", {"team": "payments"})
    del objects[POD_PATH]
    code, out, _ = await asyncio.to_thread(explain, capsys, *argv, "--json")
    report = json.loads(out)
    assert code == 0 and report["cluster_read"] is True
    assert report["cluster_notes"] == ["pod team-a/agent-1: not found in the cluster"]
    assert report["tokens"][1]["accepts"] is True  # rule 3: the namespace's label and the claims

    objects[POD_PATH] = meta("agent-1", "another-uid", {"tier": "dev"})
    objects[NAMESPACE_PATH] = meta("team-a", "n1", {})
    code, out, _ = await asyncio.to_thread(explain, capsys, *argv)
    assert code == 1
    assert f"pod team-a/agent-1: the cluster's has uid another-uid, the token names {POD_UID}" in out
    assert '  rule 2: pod label tier is "dev", not "prod"\n' in out
    assert "  rule 3: expression failed: no such key 'team'\n" in out


async def test_an_unreachable_api_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = kubeconfig(tmp_path, f"http://127.0.0.1:{port}")
    tokens, token = write(tmp_path, "tokens.yaml", TOKENS), sa_token(tmp_path)
    code, out, err = await asyncio.to_thread(
        explain, capsys, str(tokens), "--sa-token", str(token), "--kubeconfig", str(config)
    )
    assert code == 2 and out == ""
    assert err.startswith("kubejoin tokens explain: cannot read the cluster: GET /api/v1/namespaces/team-a/pods/")
    assert len(err.strip().splitlines()) == 1


def test_no_rule_reading_labels_reads_no_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The kubeconfig is not even opened when no rule that names the account reads the cluster.
    tokens, token = write(tmp_path, "tokens.yaml", CLAIMS_ONLY), sa_token(tmp_path)
    code, out, _ = explain(capsys, str(tokens), "--sa-token", str(token), "--kubeconfig", str(tmp_path / "none"))
    assert code == 0 and "labels" not in out
