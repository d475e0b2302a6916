"""kubejoin loadtest against a real kubejoin, and the benchmark scripts run briefly so they do not
rot. No test here asserts a time: benchmarks are scripts, not tests."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.loadtest import Outcome, Report, plot, run_load
from auth.service.server import create_app
from tests.conftest import ROOT
from tests.service import CLUSTER, AuditLog, make_config, token_doc, write_tokens


async def run(*argv: str, limit: float = 120) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=ROOT
    )
    out, err = await asyncio.wait_for(process.communicate(), limit)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
async def test_loadtest_against_a_running_kubejoin(tmp_path: Path, aiohttp_client: Any) -> None:
    key = IssuerKey.generate()
    (tmp_path / "issuer.pem").write_bytes(key.private_pem())
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [key])
    rule = {"service_account_namespace": "loadtest", "service_account_name": "agent-*"}
    write_tokens(tmp_path / "tokens.yaml", token_doc("load", issuer=issuer, allow=[rule]))
    client = await aiohttp_client(create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog()))
    code, out, err = await run(
        sys.executable,
        "-m",
        "auth",
        "loadtest",
        "--server",
        str(client.make_url("")),
        "--token-name",
        "load",
        "--issuer-key",
        str(tmp_path / "issuer.pem"),
        "--audience",
        CLUSTER,
        "--rate",
        "40",
        "--duration",
        "1s",
        "--pods",
        "10",
        "--json",
    )
    assert code == 0, err
    summary = json.loads(out)
    assert summary["requests"] == 40
    assert summary["by_status"] == {"200": 40}
    assert summary["by_reason"] == {"ok": 40}
    assert set(summary["latency_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert set(summary["generator_lag_ms"]) == {"p50", "p90", "p99", "p99.9", "max"}
    assert summary["client_gc"]["collections"][2] == 0  # no full collection of its own while timing
    assert "latency ms" in err and "generator   sent late by ms" in err


@pytest.mark.slow
async def test_loadtest_counts_refusals_by_reason(tmp_path: Path, aiohttp_client: Any) -> None:
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc("load", issuer=issuer))
    client = await aiohttp_client(create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog()))
    (tmp_path / "tokens.txt").write_text("not-a-token\n" + issuer.mint("teleport-agent", "nope", audiences=[CLUSTER]))
    code, out, _ = await run(
        sys.executable,
        "-m",
        "auth",
        "loadtest",
        "--server",
        str(client.make_url("")),
        "--token-name",
        "load",
        "--tokens-file",
        str(tmp_path / "tokens.txt"),
        "--rate",
        "20",
        "--duration",
        "1s",
        "--json",
    )
    summary = json.loads(out)
    assert code == 0
    assert summary["by_reason"] == {"malformed_token": 10, "no_matching_allow_rule": 10}
    assert summary["by_status"] == {"401": 10, "403": 10}


def test_report_percentiles_are_nearest_rank() -> None:
    report = Report(rate=100, duration=1, elapsed=1.0)
    report.outcomes = [Outcome(i / 100, (i + 1) / 1000, 0.0, 200, "ok") for i in range(100)]
    latency = report.summary()["latency_ms"]
    assert (latency["p50"], latency["p99"], latency["max"]) == (50.0, 99.0, 100.0)
    report.outcomes = [Outcome(0, 0.001, 0.02, 200, "ok")] * 10
    assert report.summary()["generator_bottleneck"] is True


async def test_progress_counts_joins_refusals_and_failures_apart(aiohttp_server: Any) -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if body == b"drop":  # no HTTP answer at all
            assert request.transport is not None
            request.transport.close()
            await asyncio.sleep(1)
        if body == b"ok":
            return web.json_response({})
        return web.json_response({"error": {"code": "malformed_token"}}, status=401)

    app = web.Application()
    app.router.add_post("/v1/join", handle)
    server = await aiohttp_server(app)
    lines: list[str] = []
    report = await run_load(
        str(server.make_url("/v1/join")), [b"ok", b"no", b"drop"], rate=30, duration=0.5, progress=lines.append
    )
    assert (report.joined, report.refused, report.failed) == (5, 5, 5)
    assert report.summary()["by_status"] == {"0": 5, "200": 5, "401": 5}
    line = report.progress_line(1.0, 15, 15, 0)
    assert "joined 5 refused 5 failed 5" in line and "answered" not in line
    assert report.summary()["client_gc"]["collections"][2] == 0


def test_plot_draws_a_png(tmp_path: Path) -> None:
    report = Report(rate=10, duration=1, elapsed=1.0)
    report.outcomes = [Outcome(i / 10, 0.001 * i, 0.0, 200 if i % 3 else 401, "ok") for i in range(10)]
    plot(report, str(tmp_path / "latency.png"))
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
async def test_bench_verify_runs() -> None:
    code, out, err = await run(sys.executable, "bench/verify.py", "--tokens", "20", "--rounds", "1", "--json")
    assert code == 0, err
    rows = json.loads(out)
    cases = {(row["alg"], row["case"]) for row in rows}
    assert ("RS256", "kubejoin, unique tokens") in cases and ("ES256", "kubejoin, repeated (cache)") in cases
    assert all("ratio_to_raw" in row for row in rows if "error" not in row)


@pytest.mark.slow
async def test_bench_http_runs() -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is required in CI (.ci/run installs it)")
        pytest.skip("wrk is not installed here (apt-get install wrk)")
    code, out, err = await run(
        sys.executable, "bench/http.py", "--duration", "1", "--tokens", "300", "--connections", "4", "--json", limit=180
    )
    assert code == 0, err
    rows = {row["case"]: row for row in json.loads(out)}
    assert rows["minimal aiohttp endpoint"]["ratio_to_minimal"] == 1.0
    assert rows["join, unique valid tokens"]["non_2xx"] == 0
    assert rows["join, malformed flood"]["non_2xx"] == rows["join, malformed flood"]["requests"]
    review = rows["review, unique valid tokens"]
    assert review["non_2xx"] == 0 and review["reviews_ok"] >= review["requests"] > 0  # wrk stops mid-flight
    assert rows["join minus the certificate"]["non_2xx"] == rows["join minus the certificate"]["requests"]
    assert rows["join minus the certificate"]["certificates"] == 0


@pytest.mark.slow
async def test_bench_breakdown_runs() -> None:
    code, out, err = await run(sys.executable, "bench/breakdown.py", "--tokens", "20", "--rounds", "1")
    assert code == 0, err
    assert "whole join logic" in out and "signature (key.verify)" in out
    assert "whole review logic" in out and "join logic minus the certificate" in out


@pytest.mark.slow
async def test_bench_herd_and_memory_run() -> None:
    code, out, err = await run(sys.executable, "bench/herd.py", "--pods", "60", "--seconds", "1", "--json")
    assert code == 0, err
    herd = json.loads(out)
    assert herd["by_status"] == {"200": 60}
    assert herd["jwks_fetches"] == 1
    code, out, err = await run(sys.executable, "bench/memory.py", "--pods", "50", "--json")
    assert code == 0, err
    assert json.loads(out)["cache_entries"] == 50


@pytest.mark.slow
async def test_bench_binding_runs() -> None:
    code, out, err = await run(sys.executable, "bench/binding.py", "check", "--pods", "300", "--rounds", "1", limit=120)
    assert code == 0, err
    check = json.loads(out)["check"]
    assert check["pods_in_cache"] == 300 and check["cached_verify_us_with"] > 0
    code, out, err = await run(sys.executable, "bench/binding.py", "sync", "--pods", "300", "--rounds", "1", limit=120)
    assert code == 0, err
    sync = json.loads(out)["sync"]
    assert sync["pods"] == 300  # the cache holds every pod the fake cluster lists
    assert sync["import_mb"] > 0 and sync["serve_extra_mb"] > 0


@pytest.mark.slow
async def test_bench_labels_runs() -> None:
    code, out, err = await run(sys.executable, "bench/labels.py", "--pods", "2000", "--json", limit=120)
    assert code == 0, err
    report = json.loads(out)
    assert [report[name]["labelled"] for name in ("no labels", "wanted keys", "every label")] == [0, 2000, 2000]
    # the wanted keys' tuples are shared: far less than every label, and more than nothing
    assert 0 < report["wanted keys"]["extra_mb"] < report["every label"]["extra_mb"] / 4
