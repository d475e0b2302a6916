"""Shared parts of the loopback attack scripts: a `kubejoin serve` subprocess with a static_jwks
join token, valid join bodies for it, and the server's resident memory.

`--source DIR` runs the server from another checkout (e.g. `git archive <commit> | tar -x -C DIR`),
so that one script measures before and after a fix with the same attacker.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp

ROOT = Path(__file__).resolve().parent.parent.parent
sys.path.insert(0, str(ROOT))

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.loadtest import join_token_document, public_keys
from bench.http import AUDIENCE, ISSUER, free_port


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Server:
    process: asyncio.subprocess.Process
    port: int
    issuer: LocalIssuer
    keys: list[str]
    work: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def join_body(self, index: int) -> bytes:
        token = self.issuer.mint(
            "loadtest", f"agent-{index}", audiences=[AUDIENCE], pod=f"agent-{index}-pod", lifetime=900
        )
        body = {"token_name": "attack", "id_token": token, "role": "App", "public_key": self.keys[index % 4]}
        return json.dumps(body).encode()

    async def metric(self, name: str, labels: dict[str, str]) -> float:
        async with aiohttp.ClientSession() as session, session.get(self.base + "/metrics") as response:
            text = await response.text()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def _output_files(work: Path) -> tuple[BinaryIO, BinaryIO]:
    return open(work / "join.log", "wb"), open(work / "stderr.log", "wb")


async def wait_until_ready(base: str, process: asyncio.subprocess.Process, stderr: Path) -> None:
    """Waits (at most 30 s) for `kubejoin serve` at base to answer /readyz with 200."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(base + "/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if process.returncode is not None:
                raise RuntimeError("kubejoin serve exited: " + await asyncio.to_thread(stderr.read_text))
            await asyncio.sleep(0.1)
    said = await asyncio.to_thread(stderr.read_text)
    raise RuntimeError("kubejoin serve did not get ready in 30 s: " + said[-2000:])


@asynccontextmanager
async def serve(
    source: Path | None, limits: dict[str, Any] | None = None, *, token_review: bool = False
) -> AsyncIterator[Server]:
    """`kubejoin serve` on a free loopback port; its join log goes to a file (not read here).
    `token_review`: the TokenReview endpoint too, over the same issuer's keys, for any caller."""
    key = IssuerKey.generate("P-256")
    issuer = LocalIssuer(ISSUER, [key])
    with tempfile.TemporaryDirectory(prefix="kubejoin-attack-") as scratch:
        work = Path(scratch)
        port = free_port()
        (work / "tokens.yaml").write_text(
            json.dumps(join_token_document("attack", jwks=issuer.jwks_document().decode()))
        )
        config: dict[str, Any] = {"cluster_name": AUDIENCE, "tokens_file": "tokens.yaml", "listen": f"127.0.0.1:{port}"}
        if limits:
            config["limits"] = limits
        if token_review:
            jwks = {"jwks": issuer.jwks_document().decode()}
            config["token_review"] = {"source": {"type": "static_jwks", "static_jwks": jwks}, "audiences": [AUDIENCE]}
        (work / "config.yaml").write_text(json.dumps(config))
        env = dict(os.environ)
        code = str(source or ROOT)
        env["PYTHONPATH"] = code
        log, err = _output_files(work)
        with log, err:
            process = await asyncio.create_subprocess_exec(
                *(sys.executable, "-m", "auth", "serve", "--config", str(work / "config.yaml")),
                stdout=log,
                stderr=err,
                cwd=code,
                env=env,
            )
        server = Server(process, port, issuer, public_keys(4), work)
        try:
            await wait_until_ready(server.base, process, work / "stderr.log")
            yield server
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGKILL)
                await process.wait()
