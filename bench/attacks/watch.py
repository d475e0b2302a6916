#!/usr/bin/env python3
"""The binding's watches attacked from outside: `kubejoin serve` (binding.mode watch, TokenReview
on) against the fake API server run as a process of its own, switched through POST /fake/settings.

  silent     open watches deliver nothing; a pod is deleted: seconds until its token is refused
             and until kubejoin_binding_synced{kind="pod"} is 0 (cap: --cap)
  bookmark   every watch sends one bookmark and ends: pod re-watches per second over --window s
  outage     the API server answers 503 for --down s, then comes back: seconds until every kind
             is synced again (--rounds rounds)
  slowlist   each list page takes --delay s (more than the 5 s of a GET): seconds until pods
             are synced, and timeout lines in stderr with an empty reason
  bigline    five 8 MiB watch events, 3 s apart: stderr lines and tracebacks logged

    python bench/attacks/watch.py SCENARIO [--source DIR] [...]

`--source DIR` runs `kubejoin serve` from another checkout (e.g. `git archive <commit> | tar -x
-C DIR`); the fake API server always comes from this one. Everything listens on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from bench.attacks.harness import wait_until_ready
from bench.http import free_port

AUDIENCE = "example.teleport.sh"
JOIN_TOKEN = {
    "kind": "token",
    "version": "v2",
    "metadata": {"name": "watch"},
    "spec": {
        "roles": ["App"],
        "join_method": "kubernetes",
        "kubernetes": {"type": "in_cluster", "allow": [{"service_account": "team-0:app"}]},
    },
}


@dataclass
class Rig:
    fake: str  # the fake API server's URL
    bearer: str
    tls: ssl.SSLContext
    kubejoin: str  # kubejoin's URL
    tokens: list[str]  # pod tokens: app-0, app-1, ...
    stderr: Path

    async def settings(self, session: aiohttp.ClientSession, **changes: Any) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.bearer}"}
        async with session.post(self.fake + "/fake/settings", json=changes, headers=headers, ssl=self.tls) as answer:
            result: dict[str, Any] = await answer.json()
            return result

    async def delete_pod(self, session: aiohttp.ClientSession, namespace: str, name: str) -> None:
        headers = {"Authorization": f"Bearer {self.bearer}"}
        path = f"{self.fake}/api/v1/namespaces/{namespace}/pods/{name}"
        async with session.delete(path, headers=headers, ssl=self.tls) as answer:
            assert answer.status == 200, answer.status

    async def authenticated(self, session: aiohttp.ClientSession, token: str) -> bool | None:
        review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}}
        async with session.post(self.kubejoin + "/apis/authentication.k8s.io/v1/tokenreviews", json=review) as answer:
            if answer.status != 201:
                return None
            return bool((await answer.json())["status"]["authenticated"])

    async def synced(self, session: aiohttp.ClientSession) -> dict[str, float]:
        async with session.get(self.kubejoin + "/metrics") as answer:
            text = await answer.text()
        found = {}
        for line in text.splitlines():
            if line.startswith("kubejoin_binding_synced{"):
                kind = line.split('kind="', 1)[1].split('"', 1)[0]
                found[kind] = float(line.rsplit(" ", 1)[1])
        return found


async def _wait_for_line(process: asyncio.subprocess.Process) -> dict[str, Any]:
    assert process.stdout is not None
    async with asyncio.timeout(60):
        line = await process.stdout.readline()
    if not line:
        raise RuntimeError("the fake API server did not start")
    value: dict[str, Any] = json.loads(line)
    return value


@asynccontextmanager
async def rig(source: Path | None, pods: int, list_delay: float = 0.0) -> AsyncIterator[Rig]:
    with tempfile.TemporaryDirectory(prefix="kubejoin-watch-") as scratch:
        work = Path(scratch)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        command = ["-m", "auth.devtools.kubeapi", "--pods", str(pods), "--dir", str(work), "--mint", "2"]
        fake = await asyncio.create_subprocess_exec(
            sys.executable, *command, "--audience", AUDIENCE, stdout=-1, cwd=ROOT, env=env
        )
        serve: asyncio.subprocess.Process | None = None
        try:
            started = await _wait_for_line(fake)
            tls = ssl.create_default_context(cafile=started["ca_file"])
            bearer = (work / "token").read_text()
            port = free_port()
            config = {
                "cluster_name": AUDIENCE,
                "listen": f"127.0.0.1:{port}",
                "tokens_file": "tokens.yaml",
                "in_cluster": {
                    "api_server": started["server"],
                    "ca_file": started["ca_file"],
                    "token_file": str(work / "token"),
                },
                "binding": {"mode": "watch"},
                "token_review": {"source": {"type": "in_cluster"}, "audiences": [AUDIENCE], "max_token_ttl": "2h"},
            }
            (work / "config.yaml").write_text(json.dumps(config))
            (work / "tokens.yaml").write_text(json.dumps(JOIN_TOKEN))
            found = Rig(
                started["server"],
                bearer,
                tls,
                f"http://127.0.0.1:{port}",
                (work / "pod-tokens").read_text().split(),
                work / "stderr.log",
            )
            async with aiohttp.ClientSession() as session:
                if list_delay:
                    await found.settings(session, list_delay=list_delay)
                code = str(source or ROOT)
                with (work / "stdout.log").open("wb") as out, found.stderr.open("wb") as err:
                    serve = await asyncio.create_subprocess_exec(
                        *(sys.executable, "-m", "auth", "serve", "--config", str(work / "config.yaml")),
                        stdout=out,
                        stderr=err,
                        cwd=code,
                        env={**os.environ, "PYTHONPATH": code},
                    )
            await wait_until_ready(found.kubejoin, serve, found.stderr)
            yield found
        finally:
            for process in (serve, fake):
                if process is not None and process.returncode is None:
                    process.kill()
                    await process.wait()


async def until_synced(found: Rig, session: aiohttp.ClientSession, kinds: int = 3, limit: float = 120) -> float:
    began = time.monotonic()
    while time.monotonic() - began < limit:
        synced = await found.synced(session)
        if len(synced) == kinds and all(value == 1 for value in synced.values()):
            return time.monotonic() - began
        await asyncio.sleep(0.1)
    return float("inf")


async def silent(args: argparse.Namespace) -> dict[str, Any]:
    async with rig(args.source, args.pods) as found, aiohttp.ClientSession() as session:
        await until_synced(found, session)
        assert await found.authenticated(session, found.tokens[0]) is True
        await found.settings(session, silent_watches=True)
        await found.delete_pod(session, "team-0", "app-0")
        began = time.monotonic()
        refused_after = unsynced_after = None
        while time.monotonic() - began < args.cap and (refused_after is None or unsynced_after is None):
            if refused_after is None and await found.authenticated(session, found.tokens[0]) is False:
                refused_after = time.monotonic() - began
            if unsynced_after is None and (await found.synced(session)).get("pod") == 0:
                unsynced_after = time.monotonic() - began
            await asyncio.sleep(0.5)
        return {"deleted_pod_refused_after_s": refused_after, "pod_unsynced_after_s": unsynced_after, "cap_s": args.cap}


async def bookmark(args: argparse.Namespace) -> dict[str, Any]:
    async with rig(args.source, args.pods) as found, aiohttp.ClientSession() as session:
        await until_synced(found, session)
        before = (await found.settings(session, bookmark_then_end=True, end_watches=True))["requests"]
        await asyncio.sleep(args.window)
        after = (await found.settings(session, bookmark_then_end=False))["requests"]
        watches = after.get("watch pods", 0) - before.get("watch pods", 0)
        return {"pod_watches": watches, "window_s": args.window, "per_second": round(watches / args.window, 2)}


async def outage(args: argparse.Namespace) -> dict[str, Any]:
    async with rig(args.source, args.pods) as found, aiohttp.ClientSession() as session:
        await until_synced(found, session)
        rounds = []
        for _ in range(args.rounds):
            await found.settings(session, unavailable=True)
            await asyncio.sleep(args.down)
            await found.settings(session, unavailable=False)
            rounds.append(round(await until_synced(found, session), 2))
        return {"down_s": args.down, "synced_again_after_s": rounds, "median_s": statistics.median(rounds)}


async def slowlist(args: argparse.Namespace) -> dict[str, Any]:
    async with rig(args.source, args.pods, list_delay=0.0) as found, aiohttp.ClientSession() as session:
        await until_synced(found, session)
        await found.settings(session, list_delay=args.delay, unavailable=True)  # fail, then relist slowly
        await asyncio.sleep(1)
        await found.settings(session, unavailable=False)
        took = await until_synced(found, session, limit=args.cap)
        lines = found.stderr.read_text().splitlines()
        failed = [line for line in lines if "list failed" in line]
        # a timeout said as nothing: "GET /api/v1/pods: )" (its TimeoutError's text is empty)
        empty = [line for line in failed if ": )" in line or "Error)" in line]
        return {
            "page_delay_s": args.delay,
            "pages": -(-args.pods // 500),
            "synced_after_s": round(took, 1),
            "empty_timeout_lines": len(empty),
            "list_failures": len(failed),
            "a_failure_line": (failed or [""])[0][-170:],
        }


async def bigline(args: argparse.Namespace) -> dict[str, Any]:
    async with rig(args.source, args.pods) as found, aiohttp.ClientSession() as session:
        await until_synced(found, session)
        lines = len(found.stderr.read_text().splitlines())
        for _ in range(5):
            await found.settings(session, big_event_bytes=8 * 2**20)
            await asyncio.sleep(3)
        text = found.stderr.read_text()
        new = text.splitlines()[lines:]
        return {
            "events": 5,
            "stderr_lines": len(new),
            "tracebacks": sum("Traceback" in line for line in new),
            "stderr_bytes": len("\n".join(new)),
            "a_line": next((line for line in new if "pods" in line), "")[:220],
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("scenario", choices=["silent", "bookmark", "outage", "slowlist", "bigline"])
    parser.add_argument("--source", type=Path, help="run kubejoin serve from this checkout")
    parser.add_argument("--pods", type=int, default=20)
    parser.add_argument("--cap", type=float, default=240.0, help="silent, slowlist: give up after this many s")
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument("--down", type=float, default=70.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay", type=float, default=6.0)
    args = parser.parse_args()
    scenario = {"silent": silent, "bookmark": bookmark, "outage": outage, "slowlist": slowlist, "bigline": bigline}
    result = asyncio.run(scenario[args.scenario](args))
    print(json.dumps({"scenario": args.scenario, "source": str(args.source or "this checkout"), **result}))


if __name__ == "__main__":
    main()
