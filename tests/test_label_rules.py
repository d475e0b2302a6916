"""Allow rules on labels and CEL expressions (issue 19), over HTTP against the fake API server:
judged from the binding's watch cache, a relabel seen on the next join, a refusal that says which
condition failed, rule by rule, and no API request per join."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest
from aiohttp import ClientResponse

from auth.service.clusterobjects import kubelet_may_set
from auth.service.files import ConfigError
from auth.service.server import SERVICE, Reload, create_app
from tests.kube import Client, FakeCluster, in_cluster, start_cluster, start_kubejoin
from tests.polling import wait_for
from tests.service import AuditLog, join_body, make_config, token_doc, write_tokens

NS: Final = "teleport-agent"


@pytest.fixture
async def cluster(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> FakeCluster:
    return await start_cluster(tmp_path, aiohttp_server)


def labelled(*rules: dict[str, Any]) -> dict[str, Any]:
    """An in_cluster join token whose allow rules are these (each for teleport-agent:app)."""
    return token_doc(kind="in_cluster", allow=[{"service_account": f"{NS}:app", **rule} for rule in rules])


async def join(client: Client, token: str) -> tuple[int, str]:
    """The status and the error message (or "ok")."""
    response = await client.post("/v1/join", json=join_body(token))
    answer = await response.json()
    return response.status, answer["error"]["message"] if response.status != 200 else "ok"


def object_requests(cluster: FakeCluster) -> int:
    return sum(n for (verb, resource), n in cluster.api.requests.items() if resource != "openid")


async def test_a_pod_label_decides_and_a_relabel_counts_on_the_next_join_both_ways(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "good", service_account="app", labels={"tier": "prod"})
    cluster.api.add_pod(NS, "bad", service_account="app", labels={"tier": "dev"})
    cluster.api.add_pod(NS, "bare", service_account="app")
    good, bad, bare = (cluster.mint(NS, pod) for pod in ("good", "bad", "bare"))
    client = await start_kubejoin(
        tmp_path, aiohttp_client, cluster, tokens=[labelled({"pod_labels": {"tier": "prod"}})]
    )

    assert await join(client, good) == (200, "ok")
    status, message = await join(client, bad)
    assert status == 403 and 'rule 1: pod label tier is "dev", not "prod"' in message
    status, message = await join(client, bare)
    assert status == 403 and "rule 1: pod has no label tier" in message

    # Relabelled on the watch: the verified (cached) token of "good" is refused, then accepted again.
    cluster.api.label("pods", NS, "good", {"tier": "dev"})
    await _settles(client, good, 403)
    cluster.api.label("pods", NS, "good", {"tier": "prod"})
    await _settles(client, good, 200)
    cluster.api.label("pods", NS, "bare", {"tier": "prod"})
    await _settles(client, bare, 200)


async def _settles(client: Client, token: str, status: int) -> None:
    """Returns once a join of `token` answers `status`; fails after 1 s (the issue's bound)."""

    async def answered() -> bool:
        return (await join(client, token))[0] == status

    await wait_for(answered, f"a join answering {status}", within=1.0)


async def test_namespace_and_node_labels_decide_and_follow_relabels(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_namespace(NS, labels={"team": "payments"})
    cluster.api.add_pod(NS, "app-1", service_account="app", node="node-a")
    cluster.api.label("nodes", "", "node-a", {"kubernetes.io/os": "linux"})
    token = cluster.mint(NS, "app-1")
    rule = {"namespace_labels": {"team": "payments"}, "node_labels": {"kubernetes.io/os": "linux"}}
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled(rule)])
    assert await join(client, token) == (200, "ok")

    cluster.api.label("namespaces", "", NS, {"team": "search"})
    await _settles(client, token, 403)
    _, message = await join(client, token)
    assert 'rule 1: namespace label team is "search", not "payments"' in message
    cluster.api.label("namespaces", "", NS, {"team": "payments"})
    await _settles(client, token, 200)

    cluster.api.label("nodes", "", "node-a", {"kubernetes.io/os": None})
    await _settles(client, token, 403)
    assert "rule 1: node has no label kubernetes.io/os" in (await join(client, token))[1]
    cluster.api.label("nodes", "", "node-a", {"kubernetes.io/os": "linux"})
    await _settles(client, token, 200)


async def test_an_expression_over_claims_and_labels_decides(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_namespace(NS, labels={"team": "payments"})
    cluster.api.add_pod(NS, "agent-1", service_account="app", labels={"tier": "prod"})
    cluster.api.add_pod(NS, "agent-2", service_account="app", labels={"tier": "dev"})
    expression = (
        'claims.sub.endsWith(":app") && namespaceObject.labels["team"] == "payments"'
        ' && pod.labels["tier"] in ["prod", "staging"]'
    )
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled({"expression": expression})])
    assert await join(client, cluster.mint(NS, "agent-1")) == (200, "ok")
    status, message = await join(client, cluster.mint(NS, "agent-2"))
    assert status == 403 and "rule 1: expression is false" in message
    # A key the object lacks is a refusal of that join, never a 500.
    cluster.api.label("pods", NS, "agent-1", {"tier": None})
    status, message = await _final(client, cluster.mint(NS, "agent-1"), 403)
    assert "rule 1: expression failed: no such key 'tier'" in message


async def _final(client: Client, token: str, status: int) -> tuple[int, str]:
    await _settles(client, token, status)
    return await join(client, token)


async def test_each_rule_says_why_and_the_join_log_keeps_it(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app", labels={"tier": "dev"})
    token = cluster.mint(NS, "app-1")
    tokens = [
        token_doc(
            kind="in_cluster",
            allow=[
                {"service_account": "other:agent"},
                {"service_account": f"{NS}:app", "pod_labels": {"tier": "prod"}},
                {"service_account": f"{NS}:app", "expression": 'pod.labels["tier"] == "canary"'},
            ],
        ),
        # another join method's token: its name is a secret and must never show
        {**token_doc("s3cr3t-join-token", join_method="token")},
    ]
    audit = AuditLog()
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=tokens, audit=audit)
    status, message = await join(client, token)
    assert status == 403
    assert "rule 1: service account teleport-agent:app is not other:agent" in message
    assert 'rule 2: pod label tier is "dev", not "prod"' in message
    assert "rule 3: expression is false" in message
    line = [r for r in audit.records() if r.get("event") == "join"][-1]
    assert line["reason"] == "no_matching_allow_rule"
    assert line["rules"][1] == 'rule 2: pod label tier is "dev", not "prod"'
    assert "s3cr3t" not in audit.getvalue() and "s3cr3t" not in message


async def test_two_hundred_joins_with_label_rules_make_no_api_request(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_namespace(NS, labels={"team": "payments"})
    for index in range(4):
        cluster.api.add_pod(NS, f"app-{index}", service_account="app", labels={"tier": "prod"})
    tokens = [cluster.mint(NS, f"app-{index}") for index in range(4)]
    rule = {"pod_labels": {"tier": "prod"}, "namespace_labels": {"team": "payments"}, "expression": "true"}
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled(rule)])
    before = object_requests(cluster)
    for index in range(200):
        assert await join(client, tokens[index % 4]) == (200, "ok")
    assert object_requests(cluster) == before


async def test_a_broken_expression_is_refused_at_load_and_on_reload(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app", labels={"tier": "prod"})
    write_tokens(tmp_path / "tokens.yaml", labelled({"expression": 'pod.labels["tier"] =='}))
    config = make_config(tmp_path, binding={"mode": "watch"}, in_cluster=in_cluster(cluster))
    with pytest.raises(ConfigError, match=r"kubernetes-token.*allow\[0\]\.expression.*rule 1"):
        create_app(config, audit=AuditLog())

    client = await start_kubejoin(
        tmp_path, aiohttp_client, cluster, tokens=[labelled({"pod_labels": {"tier": "prod"}})]
    )
    token = cluster.mint(NS, "app-1")
    assert await join(client, token) == (200, "ok")
    service = client.app[SERVICE]
    write_tokens(tmp_path / "tokens.yaml", labelled({"expression": "pod.labels.tier + 1"}))
    assert await service.reload_tokens() is Reload.REFUSED
    assert "rule 1" in service.tokens.last_error
    assert await join(client, token) == (200, "ok")  # the last good tokens stay in force


async def test_rules_that_read_the_cluster_need_its_binding(tmp_path: Path, cluster: FakeCluster) -> None:
    write_tokens(tmp_path / "tokens.yaml", labelled({}, {"pod_labels": {"tier": "prod"}}))
    config = make_config(tmp_path, in_cluster=in_cluster(cluster))  # binding.mode off
    with pytest.raises(ConfigError, match=r"kubernetes-token.*allow\[1\] \(rule 2\) reads pods.*binding.mode: watch"):
        create_app(config, audit=AuditLog())
    write_tokens(tmp_path / "tokens.yaml", labelled({"node_labels": {"zone": "a"}}))
    config = make_config(tmp_path, in_cluster=in_cluster(cluster), binding={"mode": "watch", "nodes": False})
    with pytest.raises(ConfigError, match=r"rule 1\) reads nodes.*binding.nodes: true"):
        create_app(config, audit=AuditLog())
    # An expression over claims alone reads nothing of the cluster: no binding needed.
    write_tokens(tmp_path / "tokens.yaml", labelled({"expression": 'claims.sub.endsWith(":app")'}))
    create_app(make_config(tmp_path, in_cluster=in_cluster(cluster)), audit=AuditLog())


async def test_token_review_reviewers_take_the_same_rule_forms(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_namespace("vault", labels={"reviewers": "yes"})
    cluster.api.add_pod("vault", "vault-0", service_account="vault-auth")
    cluster.api.add_pod(NS, "app-1", service_account="app")
    audience = "https://kubernetes.default.svc.cluster.local"
    review = {
        "source": {"type": "in_cluster"},
        "audiences": [audience],
        "reviewers": [{"service_account": "vault:vault-auth", "namespace_labels": {"reviewers": "yes"}}],
    }
    audit = AuditLog()
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, token_review=review, audit=audit)
    caller = cluster.api.mint("vault", "vault-0", audiences=[audience])
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": cluster.api.mint(NS, "app-1", audiences=[audience])},
    }
    path = "/apis/authentication.k8s.io/v1/tokenreviews"
    headers = {"Authorization": f"Bearer {caller}"}
    response = await client.post(path, json=body, headers=headers)
    assert response.status == 201 and (await response.json())["status"]["authenticated"] is True

    cluster.api.label("namespaces", "", "vault", {"reviewers": None})

    answers: list[ClientResponse] = []

    async def refused() -> bool:
        answers.append(await client.post(path, json=body, headers=headers))
        return answers[-1].status == 403

    await wait_for(refused, "the reviewer refused after its namespace lost the label", within=1.0)
    response = answers[-1]
    answer = await response.json()
    assert "label" not in answer["message"]  # the 403 is kube-apiserver's: no oracle for the rules
    assert (
        "rule 1: namespace has no label reviewers"
        in [r for r in audit.records() if r.get("caller_error")][-1]["caller_error"]
    )


async def test_a_reload_naming_a_new_label_key_relists_and_then_judges_it(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app", labels={"tier": "prod", "team": "search"})
    token = cluster.mint(NS, "app-1")
    client = await start_kubejoin(
        tmp_path, aiohttp_client, cluster, tokens=[labelled({"pod_labels": {"tier": "prod"}})]
    )
    assert await join(client, token) == (200, "ok")
    service = client.app[SERVICE]
    # `team` was not kept: the reload makes the pod store relist with it before judging it
    write_tokens(tmp_path / "tokens.yaml", labelled({"pod_labels": {"tier": "prod", "team": "payments"}}))
    assert await service.reload_tokens() is Reload.CHANGED
    status, message = await join(client, token)
    # judged at once or still loading (503, retry), never accepted from a cache that did not keep `team`
    assert (status, "being loaded" in message) in ((403, False), (503, True))

    async def judged() -> bool:
        return (await join(client, token))[0] == 403

    await wait_for(judged, "the relisted pod store judging team")
    assert 'rule 1: pod label team is "search", not "payments"' in (await join(client, token))[1]
    cluster.api.label("pods", NS, "app-1", {"team": "payments"})
    await _settles(client, token, 200)


async def test_an_expression_reading_every_label_is_warned_of(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app", labels={"tier": "prod", "x-1": "a"})
    rule = {"expression": 'pod.labels.exists(k, k.startsWith("x-"))'}
    with caplog.at_level("WARNING", logger="kubejoin.rules"):
        client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled(rule)])
    assert "reads pod labels as a whole" in caplog.text and "namespace labels" not in caplog.text
    assert await join(client, cluster.mint(NS, "app-1")) == (200, "ok")


async def test_an_expression_reading_only_the_namespace_name_watches_namespaces(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    # Found by review: no namespace label key named, so namespaces were never watched and every
    # join under this rule got binding_unavailable, for ever.
    cluster.api.add_namespace(NS)
    cluster.api.add_pod(NS, "app-1", service_account="app")
    rule = {"expression": 'namespaceObject.name == "teleport-agent"'}
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled(rule)])
    token = cluster.mint(NS, "app-1")

    async def joined() -> bool:
        return await join(client, token) == (200, "ok")

    await wait_for(joined, "a join under a rule on the namespace's name", within=5.0)


def test_reviewer_rules_that_read_the_cluster_need_its_binding(tmp_path: Path, cluster: FakeCluster) -> None:
    write_tokens(tmp_path / "tokens.yaml", labelled({}))
    review = {
        "source": {"type": "in_cluster"},
        "audiences": ["https://kubernetes.default.svc"],
        "reviewers": [{"service_account": "vault:vault-auth"}, {"service_account": "a:b", "pod_labels": {"x": "y"}}],
    }
    config = make_config(tmp_path, in_cluster=in_cluster(cluster), token_review=review)  # binding.mode off
    with pytest.raises(ConfigError, match=r"^token_review.reviewers\[1\] \(rule 2\) reads pods .*binding.mode: watch"):
        create_app(config, audit=AuditLog())


@pytest.mark.parametrize(
    ("key", "settable"),
    [
        ("tier", True),  # no kubernetes.io domain: any kubelet may set it
        ("example.com/pool", True),
        ("kubernetes.io/os", True),  # on NodeRestriction's list of the kubelet's own
        ("topology.kubernetes.io/zone", True),
        ("node.kubernetes.io/instance-type", True),
        ("kubelet.kubernetes.io/anything", True),
        ("node-restriction.kubernetes.io/pool", False),
        ("node-role.kubernetes.io/control-plane", False),
        ("k8s.io/owner", False),
    ],
)
def test_node_label_keys_a_kubelet_may_set_itself(key: str, settable: bool) -> None:
    assert kubelet_may_set(key) is settable


async def test_a_node_rule_on_a_key_the_kubelet_sets_is_warned_of(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    rules = ({"node_labels": {"kubernetes.io/os": "linux"}}, {"node_labels": {"node-restriction.kubernetes.io/p": "a"}})
    with caplog.at_level("WARNING", logger="kubejoin.rules"):
        await start_kubejoin(tmp_path, aiohttp_client, cluster, tokens=[labelled(*rules)])
    assert "rule 1: node label kubernetes.io/os can be set by the node's own kubelet" in caplog.text
    assert "rule 2" not in caplog.text
