"""Live binding over HTTP (POST /v1/join) against the fake API server: every reason code, the GET
fallback, relist after 410, outages, cache-hit revocation, no API request in the steady state,
missing RBAC, graceful termination."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import pytest

from auth.devtools.kubeapi import write_kubeconfig
from auth.service.server import SERVICE
from tests.kube import BEARER, Client, FakeCluster, binding_of, start_cluster, start_kubejoin
from tests.polling import wait_for
from tests.service import AuditLog, join_body
from verifier import VerificationError
from verifier.claims import uid_key
from verifier.k8s.api import POD, ApiError, KubeAPI, ObjectMeta
from verifier.k8s.watch import Store

BINDING_CODES: Final = {
    "service_account_not_found",
    "service_account_uid_mismatch",
    "service_account_deleted",
    "pod_not_found",
    "pod_uid_mismatch",
    "pod_deleted",
    "node_not_found",
    "node_uid_mismatch",
    "binding_unavailable",
}
NS: Final = "teleport-agent"


@pytest.fixture
async def cluster(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> FakeCluster:
    return await start_cluster(tmp_path, aiohttp_server)


async def join(client: Client, token: str) -> tuple[int, str]:
    response = await client.post("/v1/join", json=join_body(token))
    answer = await response.json()
    return response.status, answer["error"]["code"] if response.status != 200 else "ok"


def sample(client: Client, name: str, **labels: str) -> float:
    if name.startswith("kubejoin_binding_"):  # the binding metrics name their cluster
        labels.setdefault("cluster", "local")
    value = client.app[SERVICE].metrics.registry.get_sample_value(name, labels)
    # a missing series is a failure, not 0: a wrong label once made `== 0` assertions pass unread
    assert value is not None, f"no series {name}{labels}"
    return value


# Each case changes the cluster before kubejoin starts (the cache learns it by listing, or the
# refusal needs a GET) or after (the watch tells), and expects one reason.
def _gone_before(cluster: FakeCluster, token: str) -> None:
    cluster.api.delete("pods", NS, "app-1")


def _account_gone(cluster: FakeCluster, token: str) -> None:
    cluster.api.delete("serviceaccounts", NS, "app")


def _account_recreated(cluster: FakeCluster, token: str) -> None:
    cluster.api.add("serviceaccounts", NS, "app")


def _account_deleting(cluster: FakeCluster, token: str) -> None:
    cluster.api.terminate("serviceaccounts", NS, "app", at=time.time() - 60)


def _pod_recreated(cluster: FakeCluster, token: str) -> None:
    cluster.api.add("pods", NS, "app-1", service_account="app", node="node-1")


def _pod_deleting(cluster: FakeCluster, token: str) -> None:
    cluster.api.terminate("pods", NS, "app-1", at=time.time() - 60)


def _node_gone(cluster: FakeCluster, token: str) -> None:
    cluster.api.delete("nodes", "", "node-1")


def _node_recreated(cluster: FakeCluster, token: str) -> None:
    cluster.api.add("nodes", "", "node-1")


CASES: Final = [
    ("pod_not_found", _gone_before, "before"),
    ("pod_deleted", _gone_before, "after"),
    ("pod_uid_mismatch", _pod_recreated, "before"),
    ("pod_uid_mismatch", _pod_recreated, "after"),
    ("pod_deleted", _pod_deleting, "before"),
    ("pod_deleted", _pod_deleting, "after"),
    ("service_account_not_found", _account_gone, "before"),
    ("service_account_uid_mismatch", _account_recreated, "before"),
    ("service_account_uid_mismatch", _account_recreated, "after"),
    ("service_account_deleted", _account_deleting, "after"),
    ("service_account_deleted", _account_gone, "after"),
    ("node_not_found", _node_gone, "before"),
    ("node_not_found", _node_gone, "after"),
    ("node_uid_mismatch", _node_recreated, "before"),
    ("node_uid_mismatch", _node_recreated, "after"),
]


@pytest.mark.parametrize(
    ("code", "change", "when"), CASES, ids=[f"{code}-{when}-{change.__name__[1:]}" for code, change, when in CASES]
)
async def test_each_binding_reason_over_http(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, code: str, change: Any, when: str
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app", node="node-1")
    token = cluster.mint(NS, "app-1")
    if when == "before":
        change(cluster, token)
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    if when == "after":
        assert await join(client, token) == (200, "ok")
        change(cluster, token)
        binding = binding_of(client)
        await wait_for(lambda: _seen(binding, cluster), "the watch event")
        before = object_requests(cluster)
    status, answer = await join(client, token)
    if when == "after":
        assert object_requests(cluster) == before  # the watch told: refused without a request
    assert (status, answer) == (401, code)
    assert sample(client, "kubejoin_join_attempts_total", token="kubernetes-token", result="failure", reason=code) == 1


async def joined_pod(tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, pod: str = "app-1") -> tuple[Any, str]:
    """kubejoin started, and `pod`'s token joined once (so it is in the verified-token cache)."""
    cluster.api.add_pod(NS, pod, service_account="app")
    token = cluster.mint(NS, pod)
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    assert await join(client, token) == (200, "ok")
    return client, token


async def join_awaiting_its_get(
    client: Any, cluster: FakeCluster
) -> tuple[str, str, asyncio.Future[Any], asyncio.Event]:
    """A new pod the lagging watch has not told of, and its join, waiting on the GET whose answer
    the API server has read but holds back: the pod's uid, its token, the join, and the gate that
    lets the answer go."""
    cluster.api.hold()
    new = cluster.api.add_pod(NS, "app-new", service_account="app")
    token = cluster.mint(NS, "app-new")
    gate = cluster.api.get_gate = asyncio.Event()
    first = asyncio.ensure_future(join(client, token))
    await wait_for(lambda: cluster.api.requests["get", "pods"] == 1, "the GET")
    return new, token, first, gate


def object_requests(cluster: FakeCluster) -> dict[tuple[str, str], int]:
    """Requests for pods, service accounts and nodes (not the issuer's keys)."""
    return {key: count for key, count in cluster.api.requests.items() if key[1] in ("pods", "serviceaccounts", "nodes")}


def object_gets(cluster: FakeCluster) -> dict[tuple[str, str], int]:
    """GETs of single pods, service accounts and nodes: what a join may cost."""
    return {key: count for key, count in object_requests(cluster).items() if key[0] == "get"}


def _seen(binding: Any, cluster: FakeCluster) -> bool:
    """True once the binding's stores hold what the fake cluster holds now."""
    for name, resource in (("pod", "pods"), ("serviceaccount", "serviceaccounts"), ("node", "nodes")):
        store = binding.stores[name]
        for obj in cluster.api.objects[resource].values():
            uid = obj["metadata"]["uid"]
            deleting = "deletionTimestamp" in obj["metadata"]
            if uid not in store or (store.deleted_at(uid) is not None) != deleting:
                return False
        if store.count != len(cluster.api.objects[resource]):
            return False
    return True


async def test_pod_in_graceful_termination_still_joins(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-1", service_account="app")
    token = cluster.mint(NS, "app-1")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    uid, pods = cluster.api.uid("pods", NS, "app-1"), binding_of(client).stores["pod"]
    cluster.api.terminate("pods", NS, "app-1", at=time.time() + 30)  # its grace period runs
    await wait_for(lambda: pods.deleted_at(uid) is not None)
    assert await join(client, token) == (200, "ok")
    # deleted 5 s ago: within the 10 s leeway, as kube-apiserver allows
    cluster.api.terminate("pods", NS, "app-1", at=time.time() - 5)
    await wait_for(lambda: (pods.deleted_at(uid) or 0.0) < time.time())
    assert await join(client, token) == (200, "ok")


async def test_cached_token_is_refused_right_after_the_deleted_event(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    client, token = await joined_pod(tmp_path, aiohttp_client, cluster)
    verifier = client.app[SERVICE].keyring.verifier_for("kubernetes-token")
    assert verifier is not None and verifier.cache_entries == 1
    hits = verifier.cache_hits
    uid = cluster.api.uid("pods", NS, "app-1")
    cluster.api.delete("pods", NS, "app-1")
    await wait_for(lambda: uid not in binding_of(client).stores["pod"])
    assert await join(client, token) == (401, "pod_deleted")
    assert verifier.cache_hits == hits + 1  # refused on the cache-hit path, not re-verified
    client.app[SERVICE].audit.flush()
    audit = client.app[SERVICE].audit.writer.stream
    assert isinstance(audit, AuditLog)
    refused = audit.records()[-1]  # a verified identity's refusal is audited in full
    assert (refused["reason"], refused["service_account"], refused["pod"]) == ("pod_deleted", f"{NS}:app", "app-1")


async def test_steady_state_joins_make_no_api_request(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    for index in range(5):
        cluster.api.add_pod(NS, f"app-{index}", service_account="app", node=f"node-{index % 2}")
    tokens = [cluster.mint(NS, f"app-{index}") for index in range(5)]
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    before = object_requests(cluster)
    for token in tokens * 3:  # fresh verifications, then cache hits
        assert await join(client, token) == (200, "ok")
    assert object_requests(cluster) == before
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="pod", result="cache") == 15
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="node", result="cache") == 15
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="pod", result="api") == 0
    assert sample(client, "kubejoin_binding_objects", cluster="local", kind="pod") == 5
    assert sample(client, "kubejoin_binding_synced", cluster="local", kind="serviceaccount") == 1


async def test_new_pod_joins_through_one_shared_get(tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    cluster.api.hold()  # the watch lags: the new pod exists, the cache has not heard of it
    cluster.api.add_pod(NS, "app-new", service_account="app")
    tokens = [cluster.mint(NS, "app-new") for _ in range(5)]
    cluster.api.get_gate = asyncio.Event()
    joins = [asyncio.ensure_future(join(client, token)) for token in tokens]
    await wait_for(
        lambda: client.app[SERVICE].admission.in_flight == 5 and cluster.api.requests["get", "pods"] == 1, "5 joins"
    )
    cluster.api.get_gate.set()
    assert await asyncio.gather(*joins) == [(200, "ok")] * 5
    assert cluster.api.requests["get", "pods"] == 1  # five lookups, one GET
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="pod", result="api") == 5
    assert await join(client, tokens[0]) == (200, "ok")  # now from the cache
    assert cluster.api.requests["get", "pods"] == 1
    cluster.api.release()


async def test_relist_after_410(tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    lists = cluster.api.requests["list", "pods"]
    cluster.api.hold()
    late = cluster.api.add_pod(NS, "app-late", service_account="app")
    cluster.api.compact()  # etcd forgot: the watch's resourceVersion is now too old
    cluster.api.end_watches()  # the watch ends before it tells of app-late; resuming it gets 410
    await wait_for(lambda: late in binding.stores["pod"], "the relist")
    assert cluster.api.requests["list", "pods"] == lists + 1
    assert sample(client, "kubejoin_binding_watch_restarts_total", cluster="local", kind="pod") >= 1
    gets = cluster.api.requests["get", "pods"]
    assert await join(client, cluster.mint(NS, "app-late")) == (200, "ok")
    assert cluster.api.requests["get", "pods"] == gets  # the relist brought it; no GET
    cluster.api.release()


async def test_outage_cache_keeps_answering_only_unknown_lookups_503(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    known = cluster.mint(NS, "app-0")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    assert await join(client, known) == (200, "ok")  # the keys are fetched; the token is cached
    cluster.api.hold()
    cluster.api.add_pod(NS, "app-new", service_account="app")
    unknown = cluster.mint(NS, "app-new")
    cluster.api.unavailable = True
    cluster.api.end_watches()
    await wait_for(lambda: sample(client, "kubejoin_binding_synced", cluster="local", kind="pod") == 0)
    assert await join(client, known) == (200, "ok")
    assert await join(client, cluster.mint(NS, "app-0")) == (200, "ok")  # verified afresh
    response = await client.post("/v1/join", json=join_body(unknown))
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "binding_unavailable"
    assert response.headers["Retry-After"] == "5"
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="pod", result="error") == 1
    cluster.api.unavailable = False  # back: relisted, synced, and the new pod joins from the cache
    cluster.api.release()
    await wait_for(lambda: sample(client, "kubejoin_binding_synced", cluster="local", kind="pod") == 1)
    assert await join(client, unknown) == (200, "ok")


async def test_missing_rbac_is_logged_once_and_shows_in_metrics(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    token = cluster.mint(NS, "app-0")
    cluster.api.forbidden = {"nodes"}
    caplog.set_level(logging.ERROR, logger="kubejoin.binding")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, synced=False)
    await wait_for(
        lambda: sample(client, "kubejoin_binding_watch_restarts_total", cluster="local", kind="node") >= 3, "retries"
    )
    assert await join(client, token) == (503, "binding_unavailable")
    assert await join(client, token) == (503, "binding_unavailable")
    errors = [record.getMessage() for record in caplog.records if record.levelno >= logging.ERROR]
    assert len([m for m in errors if "list nodes" in m]) == 1, errors
    assert len([m for m in errors if "get nodes" in m]) == 1, errors
    assert "get, list and watch on nodes" in errors[0]
    assert sample(client, "kubejoin_binding_synced", cluster="local", kind="node") == 0
    assert sample(client, "kubejoin_binding_synced", cluster="local", kind="pod") == 1
    assert sample(client, "kubejoin_binding_lookups_total", cluster="local", kind="node", result="error") == 2


async def test_nodes_false_neither_watches_nor_checks_nodes(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    token = cluster.mint(NS, "app-0")
    cluster.api.delete("nodes", "", "node-1")
    cluster.api.forbidden = {"nodes"}  # no RBAC on nodes is needed either
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, binding={"mode": "watch", "nodes": False})
    assert await join(client, token) == (200, "ok")
    assert cluster.api.requests["list", "nodes"] == 0


async def test_kubeconfig_serves_keys_and_binding(tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    token = cluster.mint(NS, "app-0")
    write_kubeconfig(tmp_path / "kubeconfig", cluster.url, cluster.tls.ca_file, BEARER)
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, in_cluster={"kubeconfig": "kubeconfig"})
    assert await join(client, token) == (200, "ok")
    cluster.api.delete("pods", NS, "app-0")
    await wait_for(lambda: binding_of(client).stores["pod"].count == 0)
    assert await join(client, token) == (401, "pod_deleted")
    assert cluster.api.requests["get", "keys"] >= 2  # discovery and JWKS through the kubeconfig


async def test_bearer_token_file_is_read_for_every_request(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    cluster.api.token = "rotated-by-kubelet"
    cluster.token_file.write_text("rotated-by-kubelet")
    cluster.api.hold()
    cluster.api.add_pod(NS, "app-new", service_account="app")
    assert await join(client, cluster.mint(NS, "app-new")) == (200, "ok")  # a GET with the new token
    cluster.api.release()


async def test_keyring_verifier_shares_the_source_and_applies_the_binding(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    """What the TokenReview endpoint uses: its own audiences over the join tokens' in_cluster
    source, with the binding check."""
    from auth.service.tokens import KubernetesRules

    cluster.api.add_pod(NS, "app-0", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    keyring = client.app[SERVICE].keyring
    joins = keyring.verifier_for("kubernetes-token")
    rules = KubernetesRules(type="in_cluster", allow=())
    review = keyring.verifier(rules, name="token_review", audiences=["https://kubernetes.default.svc"], max_ttl=0)
    assert joins is not None and review.source is joins.source and review.binding is binding_of(client)
    assert (
        keyring.verifier(rules, name="token_review", audiences=["https://kubernetes.default.svc"], max_ttl=0) is review
    )
    token = cluster.mint(NS, "app-0", audiences=["https://kubernetes.default.svc"])
    assert (await review.verify(token)).pod.name == "app-0"
    cluster.api.delete("pods", NS, "app-0")
    await wait_for(lambda: binding_of(client).stores["pod"].count == 0)
    with pytest.raises(VerificationError) as refused:
        await review.verify(token)
    assert refused.value.code == "pod_deleted"


# -- found by the review of the live binding: each once let a deleted pod's token through, or
# cost a request per join, or spun; each test failed before its fix --------------------------


async def test_an_unexpected_watch_error_relists_and_deletions_are_still_seen(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    client, token = await joined_pod(tmp_path, aiohttp_client, cluster, "app-0")
    binding = binding_of(client)
    pods = binding.reflectors["pod"]
    # kube-apiserver omits a Status's reason when it is unknown; the client library then raised a
    # KeyError that ended the pod watch for good while kubejoin_binding_synced stayed 1
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "code": 500}
    cluster.api.send_watch_event("pods", "ERROR", status)
    await wait_for(lambda: pods.restarts == 1 and pods.synced, "the pod relist")
    await wait_for(lambda: cluster.api.watching == len(binding.reflectors), "the watches")
    uid = cluster.api.uid("pods", NS, "app-0")
    cluster.api.delete("pods", NS, "app-0")
    await wait_for(lambda: uid not in binding.stores["pod"], "the DELETED event")
    assert await join(client, token) == (401, "pod_deleted")


async def test_a_gone_pods_token_costs_one_get_not_one_per_join(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    token = cluster.mint(NS, "app-0")
    cluster.api.delete("pods", NS, "app-0")  # before kubejoin started: the watch never saw it go
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    before = cluster.api.requests["get", "pods"]
    for _ in range(50):
        assert await join(client, token) == (401, "pod_not_found")
    assert cluster.api.requests["get", "pods"] - before == 1  # was 50


async def test_get_results_are_not_kept_without_a_running_watch(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    token = cluster.mint(NS, "app-0")
    cluster.api.forbidden_verbs = {("list", "pods"), ("watch", "pods")}  # RBAC allows get only
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, synced=False)
    binding = binding_of(client)
    await wait_for(lambda: binding.reflectors["serviceaccount"].synced, "the service account list")
    assert await join(client, token) == (200, "ok")  # by GET
    assert cluster.api.uid("pods", NS, "app-0") not in binding.stores["pod"]  # nothing would ever remove it
    cluster.api.delete("pods", NS, "app-0")
    assert await join(client, token) == (401, "pod_not_found")  # was (200, ok) from the kept GET


async def test_a_get_landing_after_a_relist_does_not_bring_a_deleted_pod_back(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    cluster.api.add_pod(NS, "app-0", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    new, token, first, gate = await join_awaiting_its_get(client, cluster)
    # meanwhile the pod goes, and a relist (after a 410) happens without ever seeing its DELETED
    cluster.api.delete("pods", NS, "app-new")
    lists = cluster.api.requests["list", "pods"]
    cluster.api.held = None
    cluster.api.compact()
    cluster.api.end_watches()
    await wait_for(lambda: cluster.api.requests["list", "pods"] > lists and binding.reflectors["pod"].synced, "relist")
    gate.set()  # the GET answers with what it saw before the deletion
    await first
    assert new not in binding.stores["pod"]  # was held until the next relist
    assert await join(client, token) == (401, "pod_not_found")


async def test_a_get_does_not_bring_back_a_pod_whose_deletion_was_forgotten(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    for index in range(3):
        cluster.api.add_pod(NS, f"app-{index}", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    pods = binding.stores["pod"]
    pods.gone.size = 2  # stands in for 16,384 deletions during one GET
    new, token, first, gate = await join_awaiting_its_get(client, cluster)
    # the pod goes, and so do others after it: the store has forgotten that it saw app-new go
    for name in ("app-new", "app-0", "app-1", "app-2"):
        cluster.api.delete("pods", NS, name)
    cluster.api.release()
    await wait_for(lambda: pods.count == 0 and len(pods.gone) == 2, "the DELETED events")
    gate.set()  # the GET answers with what it saw before the deletion
    await first
    assert new not in pods  # was kept: nothing but a relist would ever have removed it
    assert await join(client, token) == (401, "pod_not_found")


async def test_a_replacement_first_seen_in_a_relist_is_a_uid_mismatch(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    client, token = await joined_pod(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    old = cluster.api.uid("pods", NS, "app-1")
    cluster.api.delete("pods", NS, "app-1")
    await wait_for(lambda: old not in binding.stores["pod"], "the DELETED event")
    cluster.api.hold()  # the watch never tells of the new app-1: a relist finds it
    new = cluster.api.add_pod(NS, "app-1", service_account="app")
    cluster.api.held = None
    cluster.api.compact()
    cluster.api.end_watches()
    await wait_for(lambda: new in binding.stores["pod"], "the relist")
    gets = object_gets(cluster)  # (the other kinds' watches, ended too, reopen after a backoff)
    assert await join(client, token) == (401, "pod_uid_mismatch")  # was pod_deleted
    assert object_gets(cluster) == gets


async def test_a_replacement_that_went_too_leaves_the_first_token_deleted(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    client, token = await joined_pod(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    cluster.api.delete("pods", NS, "app-1")
    second = cluster.api.add_pod(NS, "app-1", service_account="app")
    await wait_for(lambda: second in binding.stores["pod"], "the replacement")
    assert await join(client, token) == (401, "pod_uid_mismatch")
    cluster.api.delete("pods", NS, "app-1")  # no pod of that name now: kube-apiserver says not found
    await wait_for(lambda: second not in binding.stores["pod"], "its deletion")
    status, code = await join(client, token)
    assert (status, code) == (401, "pod_deleted")  # was pod_uid_mismatch, "it now has another uid"


@pytest.mark.parametrize("mode", ["empty_watches", "bookmark_then_end"])
async def test_a_watch_that_ends_at_once_backs_off(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    """A watch ended at once, even right after a bookmark, is a failure: the waits grow. After a
    bookmark it was reopened at once, about 15 times a second per kind (issue 20, item 5)."""
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    pods = binding_of(client).reflectors["pod"]
    waits: list[int] = []
    back_off = pods._back_off

    async def recorded(failures: int, why: str, **options: Any) -> None:
        waits.append(failures)
        await back_off(failures, why, **options)

    monkeypatch.setattr(pods, "_back_off", recorded)
    lists = cluster.api.requests["list", "pods"]
    setattr(cluster.api, mode, True)  # 200, then nothing or one bookmark, then closed
    cluster.api.end_watches()
    await wait_for(lambda: len(waits) >= 3, "three backoffs")
    assert waits[:3] == [1, 2, 3]  # each quick end counts as one more failure: the waits grow
    assert cluster.api.requests["list", "pods"] == lists  # resumed, not relisted: nothing was missed
    assert sample(client, "kubejoin_binding_watch_restarts_total", kind="pod") >= 3
    setattr(cluster.api, mode, False)
    await wait_for(lambda: pods.synced, "the watch open again")  # synced again once a watch opens


async def test_a_silent_watch_is_broken_after_the_idle_timeout(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    """A watch whose connection stays open but delivers nothing, not even bookmarks, was trusted
    for ever (kubejoin_binding_synced 1, a deleted pod's token accepted for 600 s)."""
    cluster.api.add_pod(NS, "app-1", service_account="app")
    token = cluster.mint(NS, "app-1")
    # the fake sends a bookmark every 0.2 s while it speaks
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, idle_timeout=0.5)
    assert await join(client, token) == (200, "ok")
    pods = binding_of(client).reflectors["pod"]
    lists = cluster.api.requests["list", "pods"]
    cluster.api.silent_watches = True  # a blackholed connection: open, and nothing arrives
    cluster.api.delete("pods", NS, "app-1")  # its DELETED event is lost
    assert await join(client, token) == (200, "ok")  # not known yet: nothing came
    await wait_for(lambda: not pods.synced, "the pod kind unsynced")
    assert sample(client, "kubejoin_binding_synced", kind="pod") == 0
    cluster.api.silent_watches = False
    await wait_for(lambda: pods.synced and cluster.api.requests["list", "pods"] > lists, "the relist")
    assert await join(client, token) == (401, "pod_not_found")


async def test_binding_watch_idle_timeout_reaches_every_watch(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    client = await start_kubejoin(
        tmp_path, aiohttp_client, cluster, synced=False, binding={"mode": "watch", "watch_idle_timeout": "95s"}
    )
    assert [reflector.idle_timeout for reflector in binding_of(client).reflectors.values()] == [95.0] * 3


async def test_a_wait_after_an_outage_ends_when_the_api_server_answers_again(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    """After failures the waits reach 30 s (x 0.5-1.5); an API server back meanwhile waited for
    the rest of the wait (19 s measured), with the cache unsynced. /readyz is asked every
    probe_every seconds during a wait that followed an unreachable API server."""
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    binding = binding_of(client)
    pods = binding.reflectors["pod"]
    for reflector in binding.reflectors.values():
        reflector.probe_every = 0.05
    cluster.api.unavailable = True  # 503 for everything, /readyz included
    cluster.api.end_watches()
    restarts = pods.restarts
    await wait_for(lambda: pods.restarts >= restarts + 2, "a failed relist")  # the early end, then a 503
    for reflector in binding.reflectors.values():
        reflector.backoff = (30.0, 30.0)  # the next wait is long
    restarts = pods.restarts
    await wait_for(lambda: pods.restarts > restarts, "a wait of at least 15 s")
    probes, began = cluster.api.requests["get", "readyz"], time.monotonic()
    await wait_for(lambda: cluster.api.requests["get", "readyz"] >= probes + 6, "probes")  # still down: waiting on
    # the three kinds share their probes: one per probe_every, not three
    assert cluster.api.requests["get", "readyz"] - probes <= (time.monotonic() - began) / 0.05 + 2
    assert not pods.synced
    cluster.api.unavailable = False
    await wait_for(lambda: binding.synced, "the relist")  # within a probe, not after 15-45 s


async def test_an_oversized_watch_line_is_one_log_line(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """An 8 MiB watch line logged a whole traceback on every retry; now one line with the reason."""
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    pods = binding_of(client).reflectors["pod"]
    caplog.set_level(logging.INFO, logger="kubejoin.binding")
    meta: dict[str, Any] = {"name": "big", "namespace": NS, "uid": "1c3d6de9-6000-41a6-adad-2509159c5b95"}
    meta["annotations"] = {"junk": "x" * (8 * 2**20)}  # 8 MiB on one line
    cluster.api.send_watch_event("pods", "MODIFIED", {"apiVersion": "v1", "kind": "Pod", "metadata": meta})
    await wait_for(lambda: pods.restarts == 1 and pods.synced, "the relist")
    records = [r for r in caplog.records if r.name == "kubejoin.binding" and r.levelno >= logging.WARNING]
    assert [r.exc_info for r in records] == [None] * len(records) and records
    [line] = [r.getMessage() for r in records if "pods" in r.getMessage()]
    assert "an event line longer than 4194304 bytes" in line and len(line) < 400


async def test_a_list_page_has_its_own_timeout_and_timeouts_say_what(cluster: FakeCluster) -> None:
    """The 5 s request timeout bounded a list page too, and its TimeoutError was logged empty."""
    cluster.api.add_pod(NS, "app-0", service_account="app")
    cluster.api.list_delay = 0.3
    options = {"api_server": cluster.url, "ca_file": str(cluster.tls.ca_file), "token_file": str(cluster.token_file)}
    api = KubeAPI(**options, timeout=0.1, page_timeout=2.0)
    try:
        objects, _, _ = await api.list_page(POD, None)  # slower than one GET may be, within a page's time
        assert [meta.name for meta in objects] == ["app-0"]
        cluster.api.get_gate = asyncio.Event()  # GETs never answer
        with pytest.raises(ApiError) as caught:
            await api.get(POD, NS, "app-0")
        assert str(caught.value) == f"GET /api/v1/namespaces/{NS}/pods/app-0: no complete answer within 0.1 s"
        assert caught.value.unreachable
    finally:
        await api.close()
    api = KubeAPI(**options, timeout=0.1, page_timeout=0.2)
    try:
        with pytest.raises(ApiError) as caught:
            await api.list_page(POD, None)
        assert str(caught.value) == "GET /api/v1/pods: no complete answer within 0.2 s"
    finally:
        await api.close()
    cluster.api.get_gate.set()


async def test_one_deletion_during_a_get_does_not_cost_its_result(
    tmp_path: Path, aiohttp_client: Any, cluster: FakeCluster
) -> None:
    """With the deletion memory full, any deletion forgets a uid; only `size` of them during one
    GET can have forgotten the GET's own object. One is not enough to throw its result away."""
    for index in range(3):
        cluster.api.add_pod(NS, f"app-{index}", service_account="app")
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster)
    pods = binding_of(client).stores["pod"]
    pods.gone.size = 2
    for index in range(2):  # the memory is full
        cluster.api.delete("pods", NS, f"app-{index}")
    await wait_for(lambda: len(pods.gone) == 2, "the DELETED events")
    new, token, first, gate = await join_awaiting_its_get(client, cluster)
    other = cluster.api.uid("pods", NS, "app-2")
    cluster.api.delete("pods", NS, "app-2")  # another pod goes meanwhile: only its event arrives
    held = cluster.api.held or []
    cluster.api.held = [(watcher, event) for watcher, event in held if event[2]["metadata"]["uid"] != other]
    for watcher, event in held:
        if event[2]["metadata"]["uid"] == other:
            watcher.queue.put_nowait(event)
    await wait_for(lambda: uid_key(other) in pods.gone, "its DELETED event")
    gate.set()
    assert await first == (200, "ok")
    assert new in pods  # kept
    gets = cluster.api.requests["get", "pods"]
    assert await join(client, token) == (200, "ok")
    assert cluster.api.requests["get", "pods"] == gets


def test_a_replacement_in_a_list_that_failed_halfway_changes_nothing() -> None:
    pods = Store()
    first, second = (f"{n}c3d6de9-6000-41a6-adad-2509159c5b95" for n in (1, 2))
    pods.remove(ObjectMeta(NS, "app-1", first, None))
    failed = pods.snapshot(None)
    failed.add(ObjectMeta(NS, "app-1", second, None))  # ... and the next page never came
    assert pods.gone_as(uid_key(first), NS, "app-1") is False  # still "deleted"
    complete = pods.snapshot(None)
    complete.add(ObjectMeta(NS, "app-1", second, None))
    pods.replace(complete)
    assert pods.gone_as(uid_key(first), NS, "app-1") is True  # replaced
    assert second in pods and first not in pods
