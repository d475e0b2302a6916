"""Labels for allow rules from the live binding (LiveBinding.want and .objects) over real watches
of the fake API server: only the wanted keys kept, relabels seen, growth relisted, namespaces
watched only when wanted, no request per lookup, and the metrics of the namespace kind."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client import CollectorRegistry

from auth.devtools.kubeapi import write_kubeconfig
from auth.service.allow import decide
from auth.service.rules import RuleConditions, compile_expression
from auth.service.tokens import AllowRule
from metrics import Metrics
from tests.kube import BEARER, FakeCluster, start_cluster
from tests.polling import wait_for
from verifier.claims import uid_key
from verifier.errors import BindingRefusal, Reason
from verifier.identity import Identity, ObjectRef
from verifier.k8s import KubeAPI, LiveBinding
from verifier.labels import ALL_KEYS, NO_LABELS, LabelKind, ObjectView, WantedKeys

NS: Final = "teleport-agent"
TIER: Final = frozenset({"tier"})
POD: Final[frozenset[LabelKind]] = frozenset({"pod"})
NAMESPACE: Final[frozenset[LabelKind]] = frozenset({"namespace"})
NODE: Final[frozenset[LabelKind]] = frozenset({"node"})
EVERY: Final[frozenset[LabelKind]] = frozenset({"pod", "namespace", "node"})
Start = Callable[..., Awaitable[LiveBinding]]


@pytest.fixture
async def cluster(tmp_path: Path, aiohttp_server: Callable[..., Any]) -> FakeCluster:
    cluster = await start_cluster(tmp_path, aiohttp_server)
    cluster.api.add_namespace(NS, labels={"team": "payments"})
    cluster.api.add("nodes", "", "node-1", labels={"zone": "a", "kubernetes.io/os": "linux"})
    cluster.api.add_pod(NS, "app-1", service_account="app", labels={"tier": "prod", "app": "agent"})
    return cluster


@pytest.fixture
async def start(cluster: FakeCluster) -> AsyncIterator[Start]:
    """Starts a LiveBinding against the fake cluster; by default returns once every kind is
    listed and watched."""
    started: list[LiveBinding] = []

    async def begin(wanted: WantedKeys = NO_LABELS, *, synced: bool = True, **options: Any) -> LiveBinding:
        api = KubeAPI(api_server=cluster.url, ca_file=str(cluster.tls.ca_file), token_file=str(cluster.token_file))
        binding = LiveBinding(api, leeway=10, wanted=wanted, **options)
        for reflector in binding.reflectors.values():
            reflector.backoff = (0.01, 0.05)
        started.append(binding)
        binding.start()
        if synced:
            async with asyncio.timeout(10):
                await binding.wait_synced()
            await wait_for(lambda: cluster.api.watching == len(binding.reflectors), "the watches")
        return binding

    yield begin
    for binding in started:
        await binding.close()


def identity(cluster: FakeCluster, namespace: str, pod: str) -> Identity:
    """Who a token of that pod speaks for, as the verifier hands it to the binding."""
    spec = cluster.api.objects["pods"][(namespace, pod)]["spec"]

    def ref(resource: str, scope: str, name: str) -> ObjectRef:
        uid = cluster.api.uid(resource, scope, name)
        return ObjectRef(name, uid, uid_key(uid))

    return Identity(
        namespace=namespace,
        service_account=ref("serviceaccounts", namespace, spec["serviceAccountName"]),
        pod=ref("pods", namespace, pod),
        node=ref("nodes", "", spec["nodeName"]),
        issuer="https://kubernetes.default.svc.cluster.local",
        audiences=("kubejoin.example",),
        jti=None,
        issued_at=0,
        expires_at=0,
        not_before=None,
    )


def refusal(binding: LiveBinding, who: Identity, kinds: frozenset[LabelKind]) -> str:
    """The message of the binding_unavailable refusal objects() must raise."""
    with pytest.raises(BindingRefusal) as refused:
        binding.objects(who, kinds)
    assert refused.value.code is Reason.BINDING_UNAVAILABLE
    return refused.value.message


async def test_only_the_wanted_keys_are_kept(cluster: FakeCluster, start: Start) -> None:
    cluster.api.add_pod(NS, "app-2", service_account="app", labels={"app": "agent"})  # no wanted key
    wanted = WantedKeys(pod=TIER, namespace=frozenset({"team", "tier"}), node=ALL_KEYS)
    binding = await start(wanted)
    who = identity(cluster, NS, "app-1")
    pod, namespace, node = binding.objects(who, EVERY)
    assert pod == ObjectView("app-1", who.pod.uid, {"tier": "prod"})
    assert namespace == ObjectView(NS, cluster.api.uid("namespaces", "", NS), {"team": "payments"})
    assert node is not None and node.labels == {"zone": "a", "kubernetes.io/os": "linux"}
    pods = binding.stores["pod"]
    assert pods.count == 2 and len(pods.labels) == 1  # app-2 has no wanted key: nothing kept
    other = binding.objects(identity(cluster, NS, "app-2"), POD)[0]
    assert other is not None and other.labels == {}
    assert len(binding.stores["serviceaccount"].labels) == 0  # no rule reads them


async def test_only_the_kinds_asked_are_looked_up(cluster: FakeCluster, start: Start) -> None:
    binding = await start(WantedKeys(pod=TIER))  # namespaces not watched: asking for them refuses
    who = identity(cluster, NS, "app-1")
    pod, namespace, node = binding.objects(who, POD)
    assert pod is not None and pod.labels == {"tier": "prod"} and namespace is None and node is None
    nodeless = who._replace(node=None)
    assert binding.objects(nodeless, NODE) == (None, None, None)  # the token names no node


KINDS: Final = [
    ("pod", 0, "pods", NS, "app-1"),
    ("namespace", 1, "namespaces", "", NS),
    ("node", 2, "nodes", "", "node-1"),
]


@pytest.mark.parametrize(("kind", "index", "resource", "scope", "name"), KINDS, ids=[row[0] for row in KINDS])
async def test_a_relabel_is_seen_within_a_second_both_ways(
    cluster: FakeCluster, start: Start, kind: LabelKind, index: int, resource: str, scope: str, name: str
) -> None:
    level = frozenset({"level"})
    binding = await start(WantedKeys(pod=level, namespace=level, node=level))
    who = identity(cluster, NS, "app-1")

    def labels() -> dict[str, str] | None:
        view = binding.objects(who, frozenset({kind}))[index]
        assert view is not None
        return dict(view.labels)

    assert labels() == {}
    cluster.api.label(resource, scope, name, {"level": "high"})
    await wait_for(lambda: labels() == {"level": "high"}, "the label added", within=1.0)
    cluster.api.label(resource, scope, name, {"level": None})
    await wait_for(lambda: labels() == {}, "the label removed", within=1.0)


async def test_want_growing_relists_and_refuses_until_loaded(cluster: FakeCluster, start: Start) -> None:
    cluster.api.label("pods", NS, "app-1", {"team": "payments"})
    binding = await start(WantedKeys(pod=TIER))
    who = identity(cluster, NS, "app-1")
    lists = cluster.api.requests["list", "pods"]
    cluster.api.list_delay = 0.3  # the relist takes a while: its loading state can be seen
    binding.want(WantedKeys(pod=frozenset({"tier", "team"})))
    message = refusal(binding, who, POD)
    assert message.startswith("pod labels are being loaded: the allow rules now read label keys")
    assert not binding.reflectors["pod"].synced  # no pod watch runs until the list lands
    assert binding.check_cached(who)  # uid questions are answered meanwhile
    assert binding.objects(who, NODE)[2] is not None  # and the other kinds' labels
    loaded = await wait_for(lambda: _pod_labels(binding, who), "the relist", ignoring=(BindingRefusal,))
    assert loaded == {"tier": "prod", "team": "payments"}
    assert cluster.api.requests["list", "pods"] == lists + 1
    assert [cluster.api.requests["list", resource] for resource in ("serviceaccounts", "nodes")] == [1, 1]
    await wait_for(lambda: cluster.api.watching == len(binding.reflectors), "the pod watch again")
    cluster.api.label("pods", NS, "app-1", {"team": "checkout"})  # the new watch decodes the new keys
    await wait_for(lambda: _pod_labels(binding, who) == {"tier": "prod", "team": "checkout"}, "the event")
    binding.want(WantedKeys(pod=frozenset({"team", "tier"})))  # the same keys: nothing happens
    assert _pod_labels(binding, who) == {"tier": "prod", "team": "checkout"}
    assert cluster.api.requests["list", "pods"] == lists + 1


async def test_want_shrinking_relists_nothing_and_the_next_relist_keeps_less(
    cluster: FakeCluster, start: Start
) -> None:
    cluster.api.label("pods", NS, "app-1", {"team": "payments"})
    binding = await start(WantedKeys(pod=frozenset({"tier", "team"})))
    who = identity(cluster, NS, "app-1")
    lists = cluster.api.requests["list", "pods"]
    binding.want(WantedKeys(pod=TIER))
    assert _pod_labels(binding, who) == {"tier": "prod", "team": "payments"}  # the extra key stays a while
    cluster.api.hold()  # a change the watch never tells, then a 410 and a relist: only the wanted key
    cluster.api.label("pods", NS, "app-1", {"app": "agent-2"})
    cluster.api.held = None
    cluster.api.compact()
    cluster.api.end_watches()
    await wait_for(lambda: _pod_labels(binding, who) == {"tier": "prod"}, "the relist", ignoring=(BindingRefusal,))
    assert cluster.api.requests["list", "pods"] == lists + 1


async def test_rules_reading_keys_the_cache_no_longer_keeps_are_not_judged(cluster: FakeCluster, start: Start) -> None:
    # A join holds its token's rules across the await of its verification; a reload meanwhile may
    # make the pod store relist without a key those rules read. Judged from that store, the
    # missing key would read as absent, and `!has(...)` would let a quarantined pod in.
    cluster.api.label("pods", NS, "app-1", {"quarantined": "yes"})
    binding = await start(WantedKeys(pod=frozenset({"quarantined"})))
    who = identity(cluster, NS, "app-1")
    held = [
        AllowRule(NS, "app", conditions=RuleConditions(expression=compile_expression("!has(pod.labels.quarantined)")))
    ]
    binding.want(WantedKeys(pod=TIER))  # the reloaded rules read tier only: the relist drops quarantined
    await wait_for(lambda: _pod_labels(binding, who) == {"tier": "prod"}, "the relist", ignoring=(BindingRefusal,))
    with pytest.raises(BindingRefusal) as refused:
        decide(held, NS, "app", dict, lambda kinds, keys: binding.objects(who, kinds, keys))
    assert refused.value.code is Reason.BINDING_UNAVAILABLE
    assert "the rules read pod label keys the cache does not keep" in refused.value.message


def _pod_labels(binding: LiveBinding, who: Identity) -> dict[str, str] | None:
    view = binding.objects(who, POD)[0]
    return dict(view.labels) if view is not None else None


async def test_namespaces_are_watched_only_when_wanted(cluster: FakeCluster, start: Start) -> None:
    binding = await start(WantedKeys(pod=TIER, node=frozenset({"zone"})))
    who = identity(cluster, NS, "app-1")
    assert "namespace" not in binding.reflectors and "namespace" not in binding.stats().objects
    assert "namespaces are not watched" in refusal(binding, who, NAMESPACE)
    assert [key for key in cluster.api.requests if key[1] == "namespaces"] == []
    binding.want(WantedKeys(pod=TIER, namespace=frozenset({"team"}), node=frozenset({"zone"})))
    await wait_for(lambda: binding.reflectors["namespace"].synced, "the namespace list")
    assert binding.objects(who, NAMESPACE)[1] == ObjectView(
        NS, cluster.api.uid("namespaces", "", NS), {"team": "payments"}
    )
    assert binding.objects(identity(cluster, NS, "app-1")._replace(namespace="elsewhere"), NAMESPACE)[1] is None
    assert cluster.api.requests["list", "namespaces"] == 1
    assert cluster.api.requests["list", "pods"] == 1  # the other kinds kept what they held


async def test_objects_makes_no_api_request(cluster: FakeCluster, start: Start) -> None:
    binding = await start(WantedKeys(pod=TIER, namespace=frozenset({"team"}), node=frozenset({"zone"})))
    who = identity(cluster, NS, "app-1")
    gone = identity(cluster, NS, "app-1")._replace(pod=ObjectRef("app-9", "unknown", "unknown"))
    before = dict(cluster.api.requests)
    for _ in range(100):
        assert [view is not None for view in binding.objects(who, EVERY)] == [True, True, True]
        assert binding.objects(gone, POD) == (None, None, None)  # not held, synced: none, not a GET
    assert dict(cluster.api.requests) == before


async def test_a_pod_fetched_by_get_carries_its_labels(cluster: FakeCluster, start: Start) -> None:
    binding = await start(WantedKeys(pod=TIER))
    cluster.api.hold()  # the watch lags: the new pod is known only through a GET
    cluster.api.add_pod(NS, "app-new", service_account="app", labels={"tier": "canary"})
    who = identity(cluster, NS, "app-new")
    assert binding.objects(who, POD) == (None, None, None)
    await binding.check(who)
    assert cluster.api.requests["get", "pods"] == 1
    assert _pod_labels(binding, who) == {"tier": "canary"}
    cluster.api.release()


async def test_unsynced_and_not_held_refuses(cluster: FakeCluster, start: Start) -> None:
    cluster.api.forbidden = {"namespaces"}  # RBAC lacks namespaces: their list never completes
    binding = await start(WantedKeys(namespace=frozenset({"team"})), synced=False)
    await wait_for(lambda: binding.reflectors["namespace"].restarts >= 2, "failed namespace lists")
    who = identity(cluster, NS, "app-1")
    message = refusal(binding, who, NAMESPACE)
    assert message == f"namespace {NS} is not in the cache, and its watch is not synced: whether it exists is not known"


async def test_nodes_false_refuses_node_labels(cluster: FakeCluster, start: Start) -> None:
    binding = await start(WantedKeys(node=frozenset({"zone"})), nodes=False)
    assert "binding.nodes is false" in refusal(binding, identity(cluster, NS, "app-1"), NODE)


async def test_the_namespace_kind_in_the_binding_metrics(cluster: FakeCluster, start: Start) -> None:
    cluster.api.add_namespace("other")
    binding = await start(WantedKeys(namespace=frozenset({"team"})))
    metrics = Metrics(CollectorRegistry(), process=False)
    metrics.watch_binding(lambda: {"local": binding.stats()})
    who = identity(cluster, NS, "app-1")
    for _ in range(3):
        binding.objects(who, NAMESPACE)
    binding.objects(who._replace(namespace="gone"), NAMESPACE)

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"cluster": "local", "kind": "namespace", **labels})

    assert sample("kubejoin_binding_objects") == 2
    assert sample("kubejoin_binding_synced") == 1
    assert sample("kubejoin_binding_lookups_total", result="cache") == 3
    assert sample("kubejoin_binding_lookups_total", result="not_found") == 1
    assert sample("kubejoin_binding_watch_restarts_total") == 0
    assert {kind for kind, _ in binding.stats().lookups} == {"pod", "serviceaccount", "node", "namespace"}


@pytest.mark.slow
async def test_kubectl_label_reaches_the_binding(tmp_path: Path, cluster: FakeCluster, start: Start) -> None:
    """The fake's PATCH, checked with a real client: `kubectl label` as an operator runs it."""
    assert shutil.which("kubectl"), "this test needs kubectl (installed on the development machines and CI)"
    write_kubeconfig(tmp_path / "kubeconfig", cluster.url, cluster.tls.ca_file, BEARER)
    binding = await start(WantedKeys(pod=frozenset({"tier", "team"})))
    who = identity(cluster, NS, "app-1")
    for change, expected in (
        (["team=payments"], {"tier": "prod", "team": "payments"}),
        (["tier=dev", "--overwrite"], {"tier": "dev", "team": "payments"}),
        (["team-"], {"tier": "dev"}),
    ):
        process = await asyncio.create_subprocess_exec(
            *("kubectl", "--kubeconfig", str(tmp_path / "kubeconfig"), "label", "pod", "app-1", "-n", NS, *change),
            stdout=-1,
            stderr=-1,
        )
        async with asyncio.timeout(30):
            out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        assert out.decode().startswith("pod/app-1 ")

        def labelled(expected: dict[str, str] = expected) -> bool:
            return _pod_labels(binding, who) == expected

        await wait_for(labelled, f"kubectl label {change}")
    assert cluster.api.requests["patch", "pods"] == 3
