"""Issue 12, item 3: no certificate without its join log line, a stuck stdout does not freeze the
service, SIGHUP does not kill it."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import select
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.joinlog import JoinLog
from tests.polling import wait_for
from tests.service import (
    CLUSTER,
    join_body,
    listening_port,
    pod_token,
    read_line_containing,
    token_doc,
    wait_until_ok,
    write_tokens,
)


class BrokenPipe(io.StringIO):
    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


async def test_sync_waits_until_the_line_is_written() -> None:
    stream = io.StringIO()
    log = JoinLog(stream)
    assert log.write('{"event":"join","n":1}')
    assert await log.sync(5)
    assert json.loads(stream.getvalue()) == {"event": "join", "n": 1}


async def test_lines_of_one_turn_are_one_write_and_in_the_pipe_when_sync_returns() -> None:
    read_end, write_end = os.pipe()
    try:
        log = JoinLog(write_end)
        for n in range(3):
            assert log.write(json.dumps({"n": n}))
        assert await log.sync(5)
        assert [json.loads(line)["n"] for line in os.read(read_end, 65536).splitlines()] == [0, 1, 2]
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers share stdout: a write of at most PIPE_BUF bytes is never interleaved with another's."""
    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording)  # the module object joinlog writes through
    read_end, write_end = os.pipe()
    try:
        log = JoinLog(write_end)
        lines = [json.dumps({"n": i, "pad": "x" * (i * 7 % 400)}) for i in range(60)]  # about 13 KB: 4 writes
        for line in lines:
            assert log.write(line)
        assert await log.sync(5)
        assert len(writes) > 1 and all(len(chunk) <= select.PIPE_BUF and chunk.endswith(b"\n") for chunk in writes)
        assert os.read(read_end, 1 << 16).decode() == "".join(line + "\n" for line in lines)
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_pipe_nobody_reads_blocks_neither_the_loop_nor_forever() -> None:
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    dropped: list[int] = []
    try:
        log = JoinLog(write_end, capacity=200, on_drop=dropped.append)
        line = json.dumps({"pad": "x" * 1000})
        accepted = 0
        while accepted < 1000 and log.write(line):  # a pipe holds 64 KiB: about 64 of these
            accepted += 1
            await asyncio.sleep(0)  # the loop turns: each turn writes what it can, never blocking
        assert 64 < accepted < 400 and dropped == [1]
        assert await log.sync(0.05) is False  # stuck: the waiter gets its answer after its bound
        assert log.stalled
        # once stalled, the next join is told at once, instead of holding its slot for its whole
        # bound (request_timeout) and then failing anyway
        assert await asyncio.wait_for(log.sync(30), 1) is False
        received = b""
        for _ in range(1000):  # the reader comes back: the log drains on its own
            with contextlib.suppress(BlockingIOError):
                received += os.read(read_end, 65536)
            if log._done == accepted:
                break
            await asyncio.sleep(0.001)
        assert await log.sync(5)
        with contextlib.suppress(BlockingIOError):
            received += os.read(read_end, 1 << 20)
        assert received.count(b"\n") == accepted and not log.stalled
    finally:
        os.close(read_end)
        os.close(write_end)


async def test_a_closed_stdout_is_reported_not_raised() -> None:
    dropped: list[int] = []
    log = JoinLog(BrokenPipe(), on_drop=dropped.append)
    assert log.write('{"n":1}')
    assert await log.sync(5) is False
    assert dropped == [1]


# -- kubejoin serve as a process -------------------------------------------------------------------


class Served:
    def __init__(self, process: asyncio.subprocess.Process, base: str, issuer: LocalIssuer) -> None:
        self.process, self.base, self.issuer = process, base, issuer

    async def join(self, session: aiohttp.ClientSession, index: int, **extra: Any) -> tuple[int, dict[str, Any]]:
        body = join_body(pod_token(self.issuer, pod=f"app-{index}"), **extra)
        async with session.post(self.base + "/v1/join", json=body) as response:
            return response.status, await response.json()


@pytest.fixture
async def served(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    (tmp_path / "config.yaml").write_text(
        json.dumps(
            {
                "cluster_name": CLUSTER,
                "listen": "127.0.0.1:0",
                "tokens_file": "tokens.yaml",
                "limits": {"request_timeout": "1s"},
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml")),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    rest_of_stderr: asyncio.Future[bytes] | None = None
    try:
        port = listening_port(await read_line_containing(process.stderr, b"serving joins on", 30))
        rest_of_stderr = asyncio.ensure_future(process.stderr.read())  # read, so that the pipe never fills
        base = f"http://127.0.0.1:{port}"
        await wait_until_ok(base + "/readyz", process, "kubejoin serve")
        yield Served(process, base, issuer)
    finally:
        if process.returncode is None:
            process.kill()
        if rest_of_stderr is not None:
            await asyncio.wait_for(rest_of_stderr, 30)
        # wait() returns only once stdout is closed: read what is left, unless a test reads it
        assert process.stdout is not None
        with contextlib.suppress(RuntimeError):
            await asyncio.wait_for(process.stdout.read(), 30)
        await asyncio.wait_for(process.wait(), 30)


@pytest.mark.slow
async def test_every_certificate_has_its_line_even_after_sigkill(served: Served) -> None:
    """Before: lines were flushed twice a second, and SIGKILL right after the answers lost them."""
    assert served.process.stdout is not None
    output = asyncio.ensure_future(served.process.stdout.read())
    async with aiohttp.ClientSession() as session:
        answers = await asyncio.gather(*(served.join(session, i) for i in range(40)))
    served.process.send_signal(signal.SIGKILL)
    log = await asyncio.wait_for(output, 10)
    issued = {answer["host_id"] for status, answer in answers if status == 200}
    assert len(issued) == 40
    assert {json.loads(line).get("host_id") for line in log.splitlines()} == issued


@pytest.mark.slow
async def test_sighup_does_not_stop_the_service(served: Served) -> None:
    assert served.process.stdout is not None
    output = asyncio.ensure_future(served.process.stdout.read())
    served.process.send_signal(signal.SIGHUP)
    async with aiohttp.ClientSession() as session:
        status, _ = await served.join(session, 1)
        assert status == 200
        async with session.get(served.base + "/healthz") as response:
            assert response.status == 200
    assert served.process.returncode is None
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    assert [json.loads(line)["reason"] for line in (await output).splitlines()] == ["ok"]


@pytest.mark.slow
async def test_a_stdout_nobody_reads_does_not_freeze_the_service(served: Served) -> None:
    """Before: the event loop blocked in write(2) after about 500 lines; nothing was answered."""
    async with aiohttp.ClientSession() as session:

        async def refused(index: int) -> int:
            # a verified identity that no rule allows: its refusals are always logged in full
            # (junk is bounded to a few lines a second, and would not fill the pipe)
            token = pod_token(served.issuer, "teleport-agent", "not-allowed", pod=f"p-{index}")
            body = join_body(token, host_name="h" * 200)
            async with session.post(served.base + "/v1/join", json=body) as response:
                return response.status

        # far more than a pipe holds (64 KiB; each line is over 500 bytes), all answered
        for start in range(0, 1000, 250):
            assert set(await asyncio.gather(*(refused(i) for i in range(start, start + 250)))) == {403}
        async with session.get(served.base + "/healthz") as response:
            assert response.status == 200
        # a certificate whose line cannot be written is not issued
        status, answer = await served.join(session, 1)
        assert (status, answer["error"]["code"]) == (500, "internal_error")
        assert "join log" in answer["error"]["message"]
        async with session.get(served.base + "/metrics") as response:
            metrics = await response.text()
        failed = 'kubejoin_join_attempts_total{reason="internal_error",result="failure",token="kubernetes-token"} 1.0'
        assert failed in metrics
        # once stdout is read again, joins succeed again
        assert served.process.stdout is not None
        output = asyncio.ensure_future(served.process.stdout.read())

        async def joined() -> bool:
            nonlocal status
            status, _ = await served.join(session, 2)
            return status == 200

        await wait_for(joined, "a join once stdout is read again")
        assert status == 200
    served.process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(served.process.wait(), 30) == 0
    lines = (await output).splitlines()
    assert json.loads(lines[-1])["pod"] == "app-2"
