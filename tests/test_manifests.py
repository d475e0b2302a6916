"""The Kubernetes manifests: valid against a current release's OpenAPI schemas, and in step with
the code (the ConfigMap parses with kubejoin's own loaders; the agent example fits the join token)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from auth.service.config import parse_config
from auth.service.tokens import parse_tokens
from metrics import directory_bound
from tests.conftest import ROOT

K8S = ROOT / "k8s"
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


MANIFESTS = sorted(
    p
    for p in K8S.rglob("*.yaml")
    if p.name != "kustomization.yaml" and "tests" not in p.relative_to(K8S).parts and p.name != "kubejoin-rules.yaml"
)


def by_kind(kind: str, path: Path | None = None) -> dict[str, Any]:
    for manifest in [path] if path else MANIFESTS:
        for doc in documents(manifest):
            if doc["kind"] == kind:
                return doc
    raise AssertionError(f"no {kind}")


@pytest.mark.parametrize("path", MANIFESTS, ids=[str(p.relative_to(K8S)) for p in MANIFESTS])
def test_manifest_is_valid_for_kubernetes(path: Path) -> None:
    for doc in documents(path):
        if doc["kind"] in CRD_KINDS:
            continue  # checked below: kubernetes-validate ships no schemas for the operator's CRDs
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_kustomizations_list_every_manifest() -> None:
    for directory in (K8S, K8S / "monitoring"):
        listed = set(yaml.safe_load((directory / "kustomization.yaml").read_text())["resources"])
        present = {
            p.name for p in directory.glob("*.yaml") if p.name not in {"kustomization.yaml", "kubejoin-rules.yaml"}
        }
        assert listed == present


def test_operator_resources_have_the_fields_the_crds_require() -> None:
    # Without the CRD schemas offline, check the fields the Prometheus Operator reads.
    monitor = by_kind("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = by_kind("Service")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {port["name"] for port in service["spec"]["ports"]}
    rule = by_kind("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert all({"alert", "expr", "labels", "annotations"} <= set(r) for g in rule["spec"]["groups"] for r in g["rules"])


def configmap() -> tuple[Any, dict[str, Any]]:
    data = by_kind("ConfigMap", K8S / "configmap.yaml")["data"]
    config = parse_config(yaml.safe_load(data["config.yaml"]), Path("/"))
    return config, parse_tokens(data["tokens.yaml"], "configmap tokens.yaml")


def test_configmap_parses_with_kubejoins_loaders() -> None:
    config, tokens = configmap()
    assert config.cluster_name == "example.teleport.sh"
    assert list(tokens) == ["kubernetes-token"]


def cores(quantity: str) -> int:
    """Whole CPUs of a Kubernetes CPU quantity ("1", "1500m"), rounded up."""
    return math.ceil(int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity))


def test_the_tmp_size_limit_holds_the_metrics_directory_of_the_workers() -> None:
    """/tmp (a memory emptyDir) holds --workers' metrics directory: before, it grew by every worker
    restart until a write was a SIGBUS. Its bound follows the workers: the config's count, or what
    `auto` makes of the CPU limit."""
    config, _ = configmap()
    deployment = by_kind("Deployment", K8S / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    workers = max(config.workers, cores(str(container["resources"]["limits"]["cpu"])))
    [tmp] = [v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "tmp"]
    limit = str(tmp["emptyDir"]["sizeLimit"])
    assert limit.endswith("Mi") and int(limit[:-2]) * 2**20 >= directory_bound(workers)
    assert "metrics.directory_bound" in (K8S / "deployment.yaml").read_text()  # the bound, stated beside it


def test_deployment_mounts_what_the_config_names() -> None:
    config, _ = configmap()
    deployment = by_kind("Deployment", K8S / "deployment.yaml")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    config_path = container["args"][container["args"].index("--config") + 1]
    assert config_path == mounts["config"] + "/config.yaml"
    assert config.tokens_file == mounts["config"] + "/tokens.yaml"
    assert Path(config.ca_cert_file).parent == Path(config.ca_key_file).parent == Path(mounts["ca"])
    assert config.in_cluster is not None
    assert Path(config.in_cluster.token_file).parent == Path(mounts["api-token"])
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert config.listen.endswith(f":{ports['join']}") and str(config.metrics_listen).endswith(f":{ports['metrics']}")
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"]["drop"] == ["ALL"]


def test_agent_example_fits_the_join_token() -> None:
    config, tokens = configmap()
    agent = by_kind("Deployment", K8S / "examples" / "agent.yaml")
    pod = agent["spec"]["template"]["spec"]
    sidecar = pod["initContainers"][0]
    args = dict(arg.removeprefix("--").split("=", 1) for arg in sidecar["args"] if "=" in arg)
    assert "--renew" in sidecar["args"]
    token = tokens[args["token-name"]]
    assert args["role"] in token.roles
    assert token.allows(agent["metadata"]["namespace"], pod["serviceAccountName"])
    projected = next(v["projected"]["sources"][0]["serviceAccountToken"] for v in pod["volumes"] if "projected" in v)
    assert projected["audience"] == config.cluster_name
    assert projected["expirationSeconds"] == 600
    assert args["server"].startswith("https://") and args["server"].split("//")[1].split(":")[0] in config.tls.dns_names
