#!/usr/bin/env python3
"""Many registered clusters: memory and start-up with N clusters of P pods each (fake API servers,
each in a process of its own, each with its own issuer), and the time from a cluster file
appearing in clusters_dir to that cluster's first successful join.

kubejoin runs in this process, as `kubejoin serve` builds it; every cluster is registered with
`keys: api_server` and `binding: {mode: watch}` through a kubeconfig.

    python bench/clusters.py [--clusters 20] [--pods 5000] [--json]
"""

from __future__ import annotations

import sys
from pathlib import Path

# bench/http.py shadows the standard library's http package for scripts run from bench/.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import gc
import io
import json
import tempfile
import time
from typing import Any

import yaml
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from auth.devtools.kubeapi import write_kubeconfig
from auth.devtools.loadtest import public_keys
from auth.service.config import load_config
from auth.service.server import SERVICE, create_app

AUDIENCE = "example.teleport.sh"


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def fake_cluster(work: Path, name: str, pods: int) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    directory = work / name
    directory.mkdir()
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth.devtools.kubeapi", "--dir", str(directory), "--pods", str(pods)),
        *("--mint", "1", "--issuer", f"https://{name}.oidc.example", "--audience", AUDIENCE),
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    started = json.loads(await asyncio.wait_for(process.stdout.readline(), 300))
    write_kubeconfig(
        directory / "kubeconfig", started["server"], Path(started["ca_file"]), (directory / "token").read_text()
    )
    entry = {
        "name": name,
        "issuer": f"https://{name}.oidc.example",
        "keys": {"type": "api_server"},
        "kubeconfig": str(directory / "kubeconfig"),
        "binding": {"mode": "watch"},
    }
    return process, entry


def join_token(name: str) -> dict[str, Any]:
    kubernetes = {"cluster": name, "allow": [{"service_account": "team-0:app"}]}
    spec = {"roles": ["App"], "join_method": "kubernetes", "kubernetes": kubernetes}
    return {"kind": "token", "version": "v2", "metadata": {"name": f"to-{name}"}, "spec": spec}


async def run(clusters: int, pods: int) -> dict[str, Any]:
    processes: list[asyncio.subprocess.Process] = []
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        try:
            names = [f"c{index:02d}" for index in range(clusters + 1)]  # the last one is added later
            started = await asyncio.gather(*(fake_cluster(work, name, pods) for name in names))
            processes = [process for process, _ in started]
            entries = [entry for _, entry in started]
            (work / "clusters.d").mkdir()
            for entry in entries[:-1]:
                (work / "clusters.d" / f"{entry['name']}.yaml").write_text(yaml.safe_dump(entry))
            (work / "tokens.yaml").write_text(yaml.safe_dump_all([join_token(name) for name in names]))
            (work / "kubejoin.yaml").write_text(
                yaml.safe_dump(
                    {
                        "cluster_name": AUDIENCE,
                        "tokens_file": "tokens.yaml",
                        "clusters_dir": "clusters.d",
                        "verification": {"max_token_ttl": "2h"},  # the fake servers mint 1 h tokens
                    }
                )
            )
            gc.collect()
            before = rss_mb()
            began = time.perf_counter()
            app = create_app(
                load_config(str(work / "kubejoin.yaml")), registry=CollectorRegistry(), audit=io.StringIO()
            )
            client = TestClient(TestServer(app))
            await client.start_server()
            service = app[SERVICE]
            for cluster in service.clusters.clusters.values():
                assert cluster.binding is not None
                await cluster.binding.wait_synced()
            startup = time.perf_counter() - began
            gc.collect()
            after = rss_mb()
            held = sum(
                c.binding.stats().objects["pod"] for c in service.clusters.clusters.values() if c.binding is not None
            )
            key = public_keys(1)[0]
            last = entries[-1]
            token = (work / last["name"] / "pod-tokens").read_text().strip()
            body = {"token_name": f"to-{last['name']}", "id_token": token, "role": "App", "public_key": key}
            appeared = time.perf_counter()
            (work / "clusters.d" / f"{last['name']}.yaml").write_text(yaml.safe_dump(last))
            attempts = 0
            while True:
                attempts += 1
                response = await client.post("/v1/join", json=body)
                await response.read()
                if response.status == 200:
                    break
                if attempts > 3000:  # 30 s
                    raise RuntimeError(f"no join: {response.status} {await response.text()}")
                await asyncio.sleep(0.01)
            first_join = time.perf_counter() - appeared
            await client.close()
            return {
                "clusters": clusters,
                "pods_per_cluster": pods,
                "pods_held": held,
                "startup_s": round(startup, 2),
                "rss_mb_before": round(before, 1),
                "rss_mb_synced": round(after, 1),
                "kb_per_pod": round((after - before) * 1024 / max(1, held), 2),
                "file_to_first_join_s": round(first_join, 2),
                "join_attempts_until_then": attempts,
            }
        finally:
            for process in processes:
                process.kill()
                await process.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clusters", type=int, default=20)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = asyncio.run(run(args.clusters, args.pods))
    print(json.dumps(result, indent=None if not args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
