"""`kubejoin serve --workers 2` with registered clusters: each worker loads the same config, so
each applies the same set, and a cluster file added at run time (then SIGHUP, which the
supervisor forwards to every worker) reaches every worker."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import aiohttp
import pytest
import yaml

from auth.devtools.issuer import IssuerKey, LocalIssuer
from tests.polling import wait_for
from tests.service import CLUSTER, join_body
from tests.test_workers import WORKERS, join, serve_workers

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
    (tmp_path / "clusters.d").mkdir()
    async with serve_workers(tmp_path, tokens=[token], config="clusters_dir: clusters.d\n") as served:
        body = join_body(remote.mint("teleport-agent", "app", audiences=[CLUSTER]), token_name="to-eu")
        assert await join(served, body) == 403  # unknown_cluster
        entry = {
            "name": "eu",
            "issuer": remote.issuer,
            "keys": {"type": "static_jwks", "jwks": remote.jwks_document().decode()},
        }
        (tmp_path / "clusters.d" / "eu.yaml").write_text(yaml.safe_dump(entry))
        served.process.send_signal(signal.SIGHUP)  # the supervisor forwards it to every worker
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
    assert status == 0
    joined = [line for line in lines if line["event"] == "join" and line["reason"] == "ok"]
    assert {line["cluster"] for line in joined} == {"eu"}
    assert {line["worker"] for line in joined} == set(range(WORKERS))
