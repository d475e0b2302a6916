"""The monitoring kit against real programs: a real Prometheus scraping a running kubejoin, promtool
on the alerting rules, and the dashboard's queries evaluated by that Prometheus."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.server import create_app
from tests.conftest import ROOT
from tests.kube import in_cluster, start_cluster
from tests.polling import wait_for
from tests.service import (
    AuditLog,
    join_body,
    listening_port,
    make_config,
    pod_token,
    read_line_containing,
    token_doc,
    wait_until_ok,
    write_tokens,
)

MONITORING = ROOT / "k8s" / "monitoring"
RULES = MONITORING / "kubejoin-rules.yaml"


def need(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is required in CI (.ci/run installs the prometheus package)")
        pytest.skip(f"{program} is not installed here (apt-get install prometheus)")
    return found


def test_prometheusrule_carries_the_same_groups() -> None:
    plain = yaml.safe_load(RULES.read_text())
    operator = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert operator["kind"] == "PrometheusRule"
    assert operator["spec"] == plain


@pytest.mark.slow
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    promtool = need("promtool")
    check = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 8 rules found" in check.stdout
    tests = subprocess.run(
        [promtool, "test", "rules", str(MONITORING / "tests" / "kubejoin-rules.test.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert tests.returncode == 0, tests.stdout + tests.stderr


def dashboard_queries() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def concrete(expr: str) -> str:
    """A Grafana query with its variables filled in, as Grafana would send it."""
    return expr.replace("$__rate_interval", "1m").replace('"$job"', '".*"')


@pytest.fixture
async def kubejoin(tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any) -> tuple[Any, LocalIssuer]:
    """kubejoin with a static_jwks token, and the live binding watching a fake cluster (so that
    its metrics are exposed too)."""
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    cluster = await start_cluster(tmp_path, aiohttp_server)
    config = make_config(tmp_path, in_cluster=in_cluster(cluster), binding={"mode": "watch"})
    app = create_app(config, registry=CollectorRegistry(), audit=AuditLog())
    return await aiohttp_client(app), issuer


async def test_dashboard_queries_name_real_metrics(kubejoin: tuple[Any, LocalIssuer]) -> None:
    client, issuer = kubejoin
    await client.post("/v1/join", json=join_body(pod_token(issuer)))
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in (await (await client.get("/metrics")).text()).splitlines()
        if line and not line.startswith("#")
    }
    for expr in dashboard_queries():
        for name in re.findall(r"\b((?:kubejoin|process)_[a-z_]+)\b", expr):
            assert name in exposed, f"dashboard query names {name}, which kubejoin does not expose"


@pytest.fixture
async def prometheus(tmp_path: Path, kubejoin: tuple[Any, LocalIssuer]) -> AsyncIterator[str]:
    """A real Prometheus on loopback scraping the kubejoin under test every second."""
    binary = need("prometheus")
    client, _ = kubejoin
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "kubejoin", "static_configs": [{"targets": [f"127.0.0.1:{client.port}"]}]}
                ],
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'data'}",
        "--web.listen-address=127.0.0.1:0",
        "--log.level=info",  # for the line that says which port it got
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    rest_of_stderr: asyncio.Future[bytes] | None = None
    try:
        port = listening_port(await read_line_containing(process.stderr, b'msg="Listening on"', 30))
        rest_of_stderr = asyncio.ensure_future(process.stderr.read())  # read, so that the pipe never fills
        base = f"http://127.0.0.1:{port}"
        await wait_until_ok(base + "/-/ready", process, "prometheus")
        yield base
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()
        if rest_of_stderr is not None:
            await asyncio.wait_for(rest_of_stderr, 15)


async def query(session: aiohttp.ClientSession, base: str, expr: str) -> list[dict[str, Any]]:
    async with session.get(base + "/api/v1/query", params={"query": expr}) as response:
        answer = await response.json()
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


@pytest.mark.slow
async def test_real_prometheus_sees_each_attempt_once(kubejoin: tuple[Any, LocalIssuer], prometheus: str) -> None:
    client, issuer = kubejoin
    token = pod_token(issuer)
    for _ in range(3):
        assert (await client.post("/v1/join", json=join_body(token))).status == 200
    for _ in range(2):
        assert (await client.post("/v1/join", json=join_body(token[:-4] + "AAAA"))).status == 401
    assert (await client.post("/v1/join", json=join_body(token, token_name="nope"))).status == 403

    expected = {
        ("kubernetes-token", "success", "ok"): 3.0,
        ("kubernetes-token", "failure", "bad_signature"): 2.0,
        ("unknown", "failure", "join_token_not_found"): 1.0,
    }
    async with aiohttp.ClientSession() as session:
        seen: dict[tuple[str, str, str], float] = {}

        async def scraped() -> bool:
            nonlocal seen
            results = await query(session, prometheus, 'kubejoin_join_attempts_total{job="kubejoin"}')
            seen = {
                (r["metric"]["token"], r["metric"]["result"], r["metric"]["reason"]): float(r["value"][1])
                for r in results
            }
            return seen == expected

        await wait_for(scraped, "a scrape after the joins", within=20, every=0.1, detail=lambda: f"seen: {seen}")
        assert seen == expected

        # every dashboard query and alert expression is valid PromQL for this Prometheus
        for expr in dashboard_queries():
            await query(session, prometheus, concrete(expr))
        async with session.get(prometheus + "/api/v1/rules") as response:
            rules = (await response.json())["data"]["groups"][0]["rules"]
        assert {rule["name"] for rule in rules} == {
            "KubejoinJoinFailureRatioHigh",
            "KubejoinKeysStale",
            "KubejoinJWKSFetchesFailing",
            "KubejoinNoReadyReplica",
            "KubejoinBindingNotSynced",
            "KubejoinBindingLookupsFailing",
            "KubejoinClustersReloadRefused",
            "KubejoinCAExpiringSoon",
        }

        async def evaluated() -> bool:  # the rules are evaluated every second; wait for a first evaluation
            nonlocal rules
            async with session.get(prometheus + "/api/v1/rules") as response:
                rules = (await response.json())["data"]["groups"][0]["rules"]
            return all(rule.get("health") == "ok" for rule in rules)

        await wait_for(evaluated, "a first evaluation of the rules", every=0.1)
        assert all(rule["health"] == "ok" for rule in rules), rules
        assert await query(session, prometheus, 'kubejoin_ready{job="kubejoin"} == 1')
