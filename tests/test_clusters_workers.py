"""`kubejoin serve --workers 2` with registered clusters: each worker loads the same config, so
each applies the same set, and a cluster file added at run time (then SIGHUP, which the
supervisor forwards to every worker) reaches every worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from auth.devtools.issuer import IssuerKey, LocalIssuer
from tests.polling import wait_for
from tests.service import CLUSTER, join_body, listening_port, read_line_containing, wait_until_ok, write_tokens
from tests.test_workers import WORKERS, Served, join

pytestmark = pytest.mark.slow


async def test_every_worker_applies_the_same_cluster_set(tmp_path: Path) -> None:
    remote = LocalIssuer("https://eu.oidc.example", [IssuerKey.generate("P-256")])
    token = {
        "kind": "token",
        "version": "v2",
        "metadata": {"name": "to-eu"},
        "spec": {
            "roles": ["App"],
            "join_method": "kubernetes",
            "kubernetes": {"cluster": "eu", "allow": [{"service_account": "teleport-agent:app"}]},
        },
    }
    write_tokens(tmp_path / "tokens.yaml", token)
    (tmp_path / "clusters.d").mkdir()
    (tmp_path / "config.yaml").write_text(
        f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\ntokens_file: tokens.yaml\n"
        "clusters_dir: clusters.d\n"
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml")),
        *("--workers", str(WORKERS)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        port = listening_port(await read_line_containing(process.stderr, b"serving joins on", 30))
        metrics_port = listening_port(await read_line_containing(process.stderr, b"serving metrics on"))
        served = Served(process, remote, port, metrics_port)
        await wait_until_ok(served.url + "/readyz", process, "kubejoin serve --workers 2")
        await served.wait_all_ready()
        body = join_body(remote.mint("teleport-agent", "app", audiences=[CLUSTER]), token_name="to-eu")
        assert await join(served, body) == 403  # unknown_cluster
        entry = {
            "name": "eu",
            "issuer": remote.issuer,
            "keys": {"type": "static_jwks", "jwks": remote.jwks_document().decode()},
        }
        (tmp_path / "clusters.d" / "eu.yaml").write_text(yaml.safe_dump(entry))
        process.send_signal(signal.SIGHUP)
        seen: dict[int, int] = {}

        async def every_worker_has_it() -> bool:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(served.url + "/readyz") as response:
                        answer = await response.json()
                        seen[answer["worker"]] = answer.get("clusters", 0)
            return seen == dict.fromkeys(range(WORKERS), 1)

        await wait_for(every_worker_has_it, "every worker with cluster eu", within=20, every=0.05, detail=lambda: seen)
        statuses = await asyncio.gather(*(join(served, body) for _ in range(20)))
        assert statuses == [200] * 20
        status, lines = await served.stop()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert status == 0
    joined = [line for line in lines if line["event"] == "join" and line["reason"] == "ok"]
    assert {line["cluster"] for line in joined} == {"eu"}
    assert {line["worker"] for line in joined} == set(range(WORKERS))
