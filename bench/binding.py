#!/usr/bin/env python3
"""What live binding (binding.mode: watch) costs, against the fake API server on loopback.

  check       the binding check per join: cached-token verification with the binding vs without,
              one process, same tokens, 100,000 pods in the cache (medians of --rounds rounds)
  throughput  wrk against `kubejoin serve` with mode off and mode watch, alternated in one run,
              unique tokens (verify + certificate) and repeated tokens (cache hits)
  delay       from the DELETE of a pod at the API server to the first join refused (pod_deleted)
  sync        100,000 pods: time to the first complete list, and the resident memory it adds
              (each in a fresh process; the library's import cost is reported apart), and the
              resident memory of `kubejoin serve` with mode watch minus mode off

    python bench/binding.py [check|throughput|delay|sync|all] [--pods 100000] [--rounds 5]

Needs wrk for `throughput`. Everything listens on 127.0.0.1 and stops at the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import asyncio
import gc
import json
import os
import ssl
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

AUDIENCE = "example.teleport.sh"
JOIN_TOKEN = """\
kind: token
version: v2
metadata: {name: bench}
spec:
  roles: [App]
  join_method: kubernetes
  kubernetes:
    type: in_cluster
    allow: [{service_account_namespace: "team-*", service_account_name: app}]
"""


def rss_mb() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextmanager
def fake_cluster(pods: int, mint: int = 0) -> Iterator[tuple[dict[str, str], Path]]:
    """The fake API server in a process of its own (its memory is not ours)."""
    with tempfile.TemporaryDirectory(prefix="kubejoin-bench-") as scratch:
        command = [sys.executable, "-m", "auth.devtools.kubeapi", "--pods", str(pods), "--dir", scratch]
        command += ["--mint", str(mint), "--audience", AUDIENCE]
        process = subprocess.Popen(
            command, stdout=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}
        )
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError("the fake API server did not start")
            yield json.loads(line), Path(scratch)
        finally:
            process.terminate()
            process.wait(10)


# -- check: cost per join -----------------------------------------------------------------------
async def _check(args: argparse.Namespace) -> dict[str, Any]:
    from auth.devtools.issuer import IssuerKey, LocalIssuer
    from verifier import StaticKeySource, Verifier, parse_jwks
    from verifier.k8s.api import KubeAPI, ObjectMeta
    from verifier.k8s.binding import LiveBinding

    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="bench", issuer=issuer.issuer)
    binding = LiveBinding(KubeAPI(api_server="https://127.0.0.1:1"), leeway=10)  # never started: no I/O
    tokens = []
    for index in range(args.pods):
        claims = issuer.claims(
            f"team-{index % 100}", "app", audiences=[AUDIENCE], pod=f"app-{index}", node=f"node-{index % 50}"
        )
        bound = claims["kubernetes.io"]
        if index < 2000:
            tokens.append(issuer.sign(claims))
        for kind, ref, namespace in (("pod", bound["pod"], bound["namespace"]), ("node", bound["node"], "")):
            binding.stores[kind].put(ObjectMeta(namespace, ref["name"], ref["uid"], None))
        binding.stores["serviceaccount"].put(
            ObjectMeta(bound["namespace"], "app", bound["serviceaccount"]["uid"], None)
        )
    plain = Verifier(source, [AUDIENCE])
    bound_verifier = Verifier(source, [AUDIENCE], binding=binding)
    for verifier in (plain, bound_verifier):
        for token in tokens:
            await verifier.verify(token)  # fill the verified-token caches
    rounds: dict[str, list[float]] = {"without": [], "with": []}
    repeat = 20
    for _ in range(args.rounds):
        for name, verifier in (("without", plain), ("with", bound_verifier)):
            started = time.perf_counter()
            for _ in range(repeat):
                for token in tokens:
                    await verifier.verify(token)
            rounds[name].append((time.perf_counter() - started) / (repeat * len(tokens)) * 1e6)
    identity = await plain.verify(tokens[0])
    started = time.perf_counter()
    for _ in range(200_000):
        binding.check_cached(identity)
    direct = (time.perf_counter() - started) / 200_000 * 1e6
    without, with_ = statistics.median(rounds["without"]), statistics.median(rounds["with"])
    return {
        "pods_in_cache": args.pods,
        "cached_verify_us_without": round(without, 3),
        "cached_verify_us_with": round(with_, 3),
        "binding_cost_us": round(with_ - without, 3),
        "check_cached_us": round(direct, 3),
        "rounds_without": [round(x, 3) for x in rounds["without"]],
        "rounds_with": [round(x, 3) for x in rounds["with"]],
    }


# -- throughput: wrk, mode off vs watch ---------------------------------------------------------
def service_config(cluster: dict[str, str], scratch: Path, mode: str) -> dict[str, Any]:
    """kubejoin's config against the fake cluster, with binding `mode`."""
    return {
        "cluster_name": AUDIENCE,
        "tokens_file": "tokens.yaml",
        "verification": {"max_token_ttl": "2h"},
        "in_cluster": {
            "api_server": cluster["server"],
            "ca_file": cluster["ca_file"],
            "token_file": str(scratch / "token"),
        },
        "binding": {"mode": mode},
    }


@contextmanager
def serving(cluster: dict[str, str], scratch: Path, mode: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`kubejoin serve` against the fake cluster with binding `mode`, ready (and, for watch,
    synced); yields its port and process."""
    from bench.http import free_port, scrape, wait_ready

    work = Path(tempfile.mkdtemp(dir=scratch))
    (work / "tokens.yaml").write_text(JOIN_TOKEN)
    port = free_port()
    config = service_config(cluster, scratch, mode) | {"listen": f"127.0.0.1:{port}"}
    (work / "config.yaml").write_text(json.dumps(config))
    command = [sys.executable, "-m", "auth", "serve", "--config", "config.yaml", "--log-level", "WARNING"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=work, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", process)
        if mode == "watch":  # wait for the first sync: the steady state is what is measured
            for _ in range(600):
                if 'kubejoin_binding_synced{cluster="local",kind="pod"} 1.0' in scrape(port):
                    break
                time.sleep(0.1)
            else:
                raise RuntimeError("the binding did not sync in 60 s")
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


def _throughput(args: argparse.Namespace) -> dict[str, Any]:
    from bench.http import run_wrk, write_bodies

    results: dict[str, list[float]] = {}
    with fake_cluster(args.pods, mint=args.tokens) as (cluster, scratch):
        tokens = (scratch / "pod-tokens").read_text().split()
        unique = write_bodies(scratch / "unique.jsonl", tokens)
        repeated = write_bodies(scratch / "repeated.jsonl", tokens[:64])
        for mode in ("off", "watch") * args.rounds:
            with serving(cluster, scratch, mode) as (port, _):
                for case, bodies in (("unique", unique), ("repeated", repeated)):
                    outcome = run_wrk(port, bodies, args)
                    results.setdefault(f"{case} {mode}", []).append(float(outcome["rps"]))
                    if outcome.get("non_2xx"):
                        raise RuntimeError(f"{case} {mode}: {outcome['non_2xx']} refused joins")
    summary: dict[str, Any] = {"rounds": results}
    for case in ("unique", "repeated"):
        ratios = [w / o for o, w in zip(results[f"{case} off"], results[f"{case} watch"], strict=True)]
        summary[f"{case} off req/s"] = round(statistics.median(results[f"{case} off"]))
        summary[f"{case} watch req/s"] = round(statistics.median(results[f"{case} watch"]))
        summary[f"{case} watch/off"] = round(statistics.median(ratios), 3)
        summary[f"{case} ratios"] = [round(r, 3) for r in ratios]
    return summary


# -- delay: DELETE at the API server -> refused join ---------------------------------------------
async def _delay(args: argparse.Namespace) -> dict[str, Any]:
    import aiohttp

    from auth.service.config import parse_config
    from auth.service.server import SERVICE, create_app
    from bench.http import free_port

    delays: list[float] = []
    with fake_cluster(min(args.pods, 10_000), mint=args.samples) as (cluster, scratch):
        tokens = (scratch / "pod-tokens").read_text().split()
        (scratch / "tokens.yaml").write_text(JOIN_TOKEN)
        config = parse_config(service_config(cluster, scratch, "watch"), scratch)
        import io

        from aiohttp import web

        app = create_app(config, audit=io.StringIO())
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        binding = app[SERVICE].binding
        assert binding is not None
        await binding.wait_synced()
        context = ssl.create_default_context(cafile=cluster["ca_file"])
        bearer = {"Authorization": "Bearer " + (scratch / "token").read_text()}
        from auth.devtools.loadtest import public_keys

        key = public_keys(1)[0]
        try:
            async with aiohttp.ClientSession() as session:
                for index, token in enumerate(tokens):
                    body = {"token_name": "bench", "id_token": token, "role": "App", "public_key": key}
                    async with session.post(f"http://127.0.0.1:{port}/v1/join", json=body) as response:
                        assert response.status == 200, await response.text()  # cached now
                    url = f"{cluster['server']}/api/v1/namespaces/team-{index % 100}/pods/app-{index}"
                    started = time.perf_counter()
                    async with session.delete(url, headers=bearer, ssl=context) as response:
                        assert response.status == 200
                    for _ in range(10_000):
                        async with session.post(f"http://127.0.0.1:{port}/v1/join", json=body) as response:
                            if response.status == 401:
                                assert (await response.json())["error"]["code"] == "pod_deleted"
                                break
                    delays.append((time.perf_counter() - started) * 1000)
        finally:
            await runner.cleanup()
    return {
        "samples": len(delays),
        "median_ms": round(statistics.median(delays), 2),
        "max_ms": round(max(delays), 2),
    }


# -- sync: 100,000 pods -------------------------------------------------------------------------
async def _sync_once(server: str, ca_file: str, token_file: str) -> dict[str, float]:
    import verifier.k8s.binding  # noqa: F401  (what mode off loads too)

    gc.collect()
    before_import = rss_mb()
    import kubernetes_asyncio.client
    import kubernetes_asyncio.watch  # noqa: F401

    gc.collect()
    before = rss_mb()
    from verifier.k8s.api import KubeAPI
    from verifier.k8s.binding import LiveBinding

    binding = LiveBinding(KubeAPI(api_server=server, ca_file=ca_file, token_file=token_file), leeway=10)
    started = time.perf_counter()
    binding.start()
    await binding.wait_synced()
    seconds = time.perf_counter() - started
    gc.collect()
    after = rss_mb()
    objects = binding.stats().objects
    # Then as much churn as the store remembers: GONE_REMEMBERED pods deleted (names of 50
    # characters, as Deployments make them), on top of the 100,000 still there.
    import uuid

    from verifier.k8s.api import ObjectMeta
    from verifier.k8s.watch import GONE_REMEMBERED

    pods = binding.stores["pod"]
    for index in range(GONE_REMEMBERED):
        pods.remove(
            ObjectMeta("team-0", f"deployment-with-a-long-name-7c9f8d6b5-{index:011d}", str(uuid.uuid4()), None)
        )
    gc.collect()
    churned = rss_mb()
    await binding.close()
    return {
        "first_sync_s": round(seconds, 2),
        "import_mb": round(before - before_import, 1),
        "cache_mb": round(after - before, 1),
        "total_mb": round(after - before_import, 1),
        "churned_total_mb": round(churned - before_import, 1),
        "pods": objects["pod"],
    }


def _resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def _sync(args: argparse.Namespace) -> dict[str, Any]:
    runs = []
    with fake_cluster(args.pods) as (cluster, scratch):
        for _ in range(args.rounds):
            # the whole service as deployed: `kubejoin serve` idle after start, mode off then watch
            resident = {}
            for mode in ("off", "watch"):
                with serving(cluster, scratch, mode) as (_, process):
                    time.sleep(1)  # settled: the first key fetch done, the list's garbage freed
                    resident[mode] = _resident_mb(process.pid)
            command = [
                sys.executable,
                __file__,
                "sync-once",
                cluster["server"],
                cluster["ca_file"],
                str(scratch / "token"),
            ]
            output = subprocess.run(command, capture_output=True, text=True, timeout=300, check=True).stdout
            runs.append(json.loads(output) | {"serve_extra_mb": round(resident["watch"] - resident["off"], 1)})
    keys = ("first_sync_s", "import_mb", "cache_mb", "total_mb", "churned_total_mb", "serve_extra_mb", "pods")
    return {key: statistics.median(run[key] for run in runs) for key in keys} | {"runs": runs}


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "sync-once":
        print(json.dumps(asyncio.run(_sync_once(*sys.argv[2:]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="all", choices=["check", "throughput", "delay", "sync", "all"])
    parser.add_argument("--pods", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=20, help="pods deleted in `delay`")
    parser.add_argument("--tokens", type=int, default=15_000, help="unique tokens in `throughput`")
    parser.add_argument("--duration", type=int, default=5)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    report: dict[str, Any] = {}
    if args.what in ("check", "all"):
        report["check"] = asyncio.run(_check(args))
    if args.what in ("throughput", "all"):
        report["throughput"] = _throughput(args)
    if args.what in ("delay", "all"):
        report["delay"] = asyncio.run(_delay(args))
    if args.what in ("sync", "all"):
        report["sync"] = _sync(args)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
