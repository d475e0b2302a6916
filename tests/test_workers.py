"""`kubejoin serve --workers 2`: one port served by two processes, metrics summed over them,
SIGTERM draining every worker, a killed worker replaced. Real subprocesses on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.runtime.child import HEARTBEAT_TIMEOUT
from metrics import FILES_PER_WORKER, directory_bound
from metrics.multiprocess import RETIRED_FILES
from tests.polling import holds_throughout, wait_for
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

WORKERS = 2

# Every test here starts `kubejoin serve --workers` as a process.
pytestmark = pytest.mark.slow


class Served:
    def __init__(self, process: asyncio.subprocess.Process, issuer: LocalIssuer, port: int, metrics_port: int) -> None:
        self.process, self.issuer, self.port, self.metrics_port = process, issuer, port, metrics_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def workers(self) -> set[int]:
        """The pids of the supervisor's children (its workers)."""
        pid = self.process.pid
        return {int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}

    def replaced(self, worker: int) -> bool:
        """Whether `worker` is gone and another took its place."""
        now = self.workers()
        return worker not in now and len(now) == WORKERS

    async def metric(self, line_prefix: str) -> float:
        """The sum of the samples whose exposition line starts with line_prefix."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            text = await response.text()
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(line_prefix))

    async def wait_all_ready(self) -> None:
        """Until every worker has answered /readyz (each asked on a connection of its own)."""
        answered: set[object] = set()

        async def all_answered() -> bool:
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector) as session:
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get(self.url + "/readyz") as response:
                        if response.status == 200:
                            answered.add((await response.json())["worker"])
            return len(answered) == WORKERS

        await wait_for(
            all_answered, "every worker answering /readyz", within=20, every=0.1, detail=lambda: f"answered: {answered}"
        )

    async def stop(self) -> tuple[int, list[dict[str, object]]]:
        """SIGTERM; the exit status and the join log lines."""
        self.process.send_signal(signal.SIGTERM)
        assert self.process.stdout is not None
        out = await asyncio.wait_for(self.process.stdout.read(), 60)
        status = await asyncio.wait_for(self.process.wait(), 60)
        return status, [json.loads(line) for line in out.splitlines()]


@contextlib.asynccontextmanager
async def serve_workers(
    tmp_path: Path,
    token_name: str = "kubernetes-token",
    *,
    tokens: list[dict[str, Any]] | None = None,
    config: str = "",
) -> AsyncIterator[Served]:
    """`kubejoin serve --workers 2` with one static_jwks join token named `token_name` (or
    `tokens`) and `config` added to the config file."""
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    allow = [{"service_account": "teleport-agent:app"}]
    tokens = tokens or [token_doc(token_name, issuer=issuer, allow=allow)]
    write_tokens(tmp_path / "tokens.yaml", *tokens)
    (tmp_path / "config.yaml").write_text(
        f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\ntokens_file: tokens.yaml\n"
        + config
    )
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml")),
        *("--workers", str(WORKERS)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        limit=1 << 20,
    )
    try:
        assert process.stderr is not None
        port = listening_port(await read_line_containing(process.stderr, b"serving joins on", 30))
        metrics_port = listening_port(await read_line_containing(process.stderr, b"serving metrics on"))
        served = Served(process, issuer, port, metrics_port)
        await wait_until_ok(served.url + "/readyz", process, "kubejoin serve --workers 2")
        await served.wait_all_ready()
        yield served
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def join(served: Served, body: dict[str, object]) -> int:
    """One join over a connection of its own, so that the kernel may hand it to either worker."""
    connector = aiohttp.TCPConnector(force_close=True)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        session.post(served.url + "/v1/join", json=body) as response,
    ):
        await response.read()
        return response.status


async def test_metrics_sum_the_joins_of_every_worker(tmp_path: Path) -> None:
    async with serve_workers(tmp_path) as served:
        assert len(served.workers()) == WORKERS
        valid = [join(served, join_body(pod_token(served.issuer))) for _ in range(40)]
        refused = [join(served, join_body(pod_token(served.issuer), token_name="nope")) for _ in range(12)]
        statuses = await asyncio.gather(*valid, *refused)
        assert statuses == [200] * 40 + [403] * 12
        attempts = "kubejoin_join_attempts_total{"
        assert await served.metric(attempts + 'reason="ok",result="success",token="kubernetes-token"}') == 40
        assert await served.metric(attempts + 'reason="join_token_not_found"') == 12
        assert await served.metric('kubejoin_certificates_issued_total{role="App"}') == 40
        assert await served.metric("kubejoin_join_duration_seconds_count") == 52
        assert await served.metric("kubejoin_ready ") == 1

        # published by each worker twice a second (the scraping one at once), then summed
        async def cache_counts() -> bool:
            return await served.metric("kubejoin_verified_token_cache_requests_total") == 40

        await wait_for(cache_counts, "every worker's cache counts", within=4, every=0.1)
        assert await served.metric("kubejoin_verified_token_cache_requests_total") == 40
        assert await served.metric("process_resident_memory_bytes ") > 0
        status, lines = await served.stop()
    assert status == 0
    joined = [line for line in lines if line["event"] == "join" and line["reason"] == "ok"]
    assert len(joined) == 40
    assert {line["worker"] for line in joined} == set(range(WORKERS))  # both served joins
    # 12 refusals of one reason: logged in full up to 5 per worker and second, the rest summarized
    refusals = [line for line in lines if line.get("reason") == "join_token_not_found"]
    summaries = [line for line in lines if line["event"] == "join_refusals_suppressed"]
    assert len(refusals) + sum(int(str(s["total"])) for s in summaries) == 12


async def test_sigterm_drains_every_worker(tmp_path: Path) -> None:
    async with serve_workers(tmp_path) as served:
        body = json.dumps(join_body(pod_token(served.issuer))).encode()
        head = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += b"Content-Length: %d\r\n\r\n" % len(body)
        connections = [await asyncio.open_connection("127.0.0.1", served.port) for _ in range(16)]
        for _, writer in connections:
            writer.write(head + body[:10])
            await writer.drain()

        async def in_flight() -> bool:
            return await served.metric("kubejoin_joins_in_flight ") == len(connections)

        await wait_for(in_flight, "every join in flight (waiting for its body)", within=30, every=0.1)
        assert await served.metric("kubejoin_joins_in_flight ") == len(connections)
        served.process.send_signal(signal.SIGTERM)

        async def not_ready() -> bool:
            return await served.metric("kubejoin_ready ") == 0

        await wait_for(not_ready, "every worker has stopped taking new joins", within=30, every=0.1)
        assert await served.metric("kubejoin_ready ") == 0
        assert served.process.returncode is None  # still draining
        for _, writer in connections:
            writer.write(body[10:])
            await writer.drain()
        for reader, writer in connections:
            assert b" 200 " in await asyncio.wait_for(reader.readline(), 30)
            writer.close()
        assert served.process.stdout is not None
        out = await asyncio.wait_for(served.process.stdout.read(), 60)
        assert await asyncio.wait_for(served.process.wait(), 60) == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert [line["reason"] for line in lines] == ["ok"] * len(connections)
    assert {line["worker"] for line in lines} == set(range(WORKERS))  # both workers had joins to drain


async def test_a_killed_worker_is_replaced(tmp_path: Path) -> None:
    async with serve_workers(tmp_path) as served:
        assert await join(served, join_body(pod_token(served.issuer))) == 200
        before = served.workers()
        victim = min(before)
        os.kill(victim, signal.SIGKILL)
        await wait_for(
            lambda: victim not in (now := served.workers()) and len(now) == WORKERS,
            "the supervisor has started a replacement",
            within=30,
            every=0.1,
        )
        assert victim not in served.workers() and len(served.workers()) == WORKERS
        # every connection is served, whichever socket the kernel hands it to
        statuses = await asyncio.gather(*(join(served, join_body(pod_token(served.issuer))) for _ in range(20)))
        assert statuses == [200] * 20
        # the dead worker's counts stay in the sums
        assert await served.metric('kubejoin_join_attempts_total{reason="ok"') == 21
        status, _ = await served.stop()
        assert served.process.stderr is not None
        stderr = (await served.process.stderr.read()).decode()
    assert status == 0
    assert f"(pid {victim}) exited with status -9; starting another" in stderr


@pytest.mark.parametrize(("value", "message"), [("0", "from 1 to 256"), ("many", "expected auto")])
async def test_bad_worker_count_is_a_usage_error(tmp_path: Path, value: str, message: str) -> None:
    (tmp_path / "config.yaml").write_text(f"cluster_name: {CLUSTER}\ntokens_file: tokens.yaml\n")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml"), "--workers", value),
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 2
    assert message in err.decode()


async def test_a_worker_replaced_during_a_refused_tokens_edit_is_retried_not_fatal(tmp_path: Path) -> None:
    """Once the service has served, a replacement that cannot load the tokens (a broken or
    mid-write edit the running workers refused) is retried; it used to stop the whole service.
    Meanwhile every new connection is served by the live worker: the vacant slot's listeners
    used to stay open, and a connection the kernel queued there waited forever."""
    async with serve_workers(tmp_path) as served:
        assert served.process.stderr is not None
        good = (tmp_path / "tokens.yaml").read_text()
        (tmp_path / "tokens.yaml").write_text("kind: token\nversion: [\n")  # not YAML
        victim = min(served.workers())
        os.kill(victim, signal.SIGKILL)
        await read_line_containing(served.process.stderr, b"could not start; its listeners are closed", 30)
        assert served.process.returncode is None  # still serving, on the other worker
        # each on a connection of its own: with both slots listening, half would be queued on the
        # vacant one (11 joins all reaching the live worker by chance: 1 in 2,048)
        joins = [asyncio.wait_for(join(served, join_body(pod_token(served.issuer))), 10) for _ in range(11)]
        assert await asyncio.gather(*joins) == [200] * 11
        (tmp_path / "tokens.yaml").write_text(good)  # restored: the next attempt comes up
        await wait_for(
            lambda: len(served.workers()) == WORKERS and victim not in served.workers(),
            "the replacement",
            within=20,
            every=0.1,
        )
        await wait_until_ok(served.url + "/readyz", served.process, "the replacement")
        statuses = await asyncio.gather(*(join(served, join_body(pod_token(served.issuer))) for _ in range(20)))
        assert statuses == [200] * 20
        status, lines = await served.stop()
    assert status == 0
    workers = {line["worker"] for line in lines if line["event"] == "join" and line["reason"] == "ok"}
    assert workers == set(range(WORKERS))  # the replacement, bound afresh, served too


async def test_a_broken_config_keeps_the_slot_closed_and_sigterm_still_exits_0(tmp_path: Path) -> None:
    """A replacement that fails on the config (not the tokens) used to be respawned every second
    on fresh sockets, each time resetting the connections queued meanwhile; and a SIGTERM while a
    slot stood empty made `serve` exit 1."""
    async with serve_workers(tmp_path) as served:
        assert served.process.stderr is not None
        (tmp_path / "config.yaml").write_text("cluster_name: [\n")  # not YAML
        victim = min(served.workers())
        os.kill(victim, signal.SIGKILL)
        await read_line_containing(served.process.stderr, b"could not start; its listeners are closed", 30)
        await read_line_containing(served.process.stderr, b"not starting a worker yet", 10)
        joins = [asyncio.wait_for(join(served, join_body(pod_token(served.issuer))), 10) for _ in range(11)]
        assert await asyncio.gather(*joins) == [200] * 11
        # three more chances to respawn (the supervisor checks the files every second)
        await holds_throughout(lambda: len(served.workers()) == WORKERS - 1, "one worker only", seconds=3)
        assert len(served.workers()) == WORKERS - 1  # no worker started on a config that cannot load
        status, _ = await served.stop()
        rest = await served.process.stderr.read()
    assert status == 0, rest.decode()
    assert b"could not start" not in rest


async def test_sigterm_while_workers_start_still_exits_0(tmp_path: Path) -> None:
    """A worker still importing has no handler yet and dies of the SIGTERM itself: nothing was in
    flight, so that is a clean stop (it used to make `serve` exit 1)."""
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=LocalIssuer("https://i", [IssuerKey.generate("P-256")])))
    (tmp_path / "config.yaml").write_text(f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\ntokens_file: tokens.yaml\n")
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml"), "--workers", "2"),
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    await read_line_containing(process.stderr, b"with 2 workers")  # spawned, not yet serving
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()


# -- issue 20: whole lines from every worker, a stopped worker replaced, a bounded metrics directory


async def test_long_lines_of_two_workers_stay_whole_on_a_slow_reader(tmp_path: Path) -> None:
    """Before: both workers wrote the one stdout pipe, and a line longer than PIPE_BUF (here a
    5,000-character join token name: 5.8 KB lines) was taken in parts that the other worker's
    parts landed between (10 of 400 lines did not parse). Now each worker has its own pipe and the
    supervisor writes whole lines."""
    name = "t" * 5000
    async with serve_workers(tmp_path, token_name=name) as served:
        assert served.process.stdout is not None
        stdout = served.process.stdout
        out = bytearray()

        async def slow_reader() -> None:  # a log shipper at its own pace: the pipe is often full
            while chunk := await stdout.read(1500):
                out.extend(chunk)
                await asyncio.sleep(0)

        reader = asyncio.ensure_future(slow_reader())
        limit = asyncio.Semaphore(32)

        async def one() -> int:
            async with limit:
                return await join(served, join_body(pod_token(served.issuer), token_name=name))

        statuses = await asyncio.gather(*(one() for _ in range(300)))
        served.process.send_signal(signal.SIGTERM)
        await asyncio.wait_for(reader, 60)
        assert await asyncio.wait_for(served.process.wait(), 60) == 0
    assert statuses == [200] * 300
    lines = [json.loads(line) for line in out.splitlines()]  # every one parses
    assert len(lines) == 300 and all(line["token"] == name for line in lines)
    assert {line["worker"] for line in lines} == set(range(WORKERS))


async def test_a_stopped_worker_is_replaced_and_sigterm_still_exits_0(tmp_path: Path) -> None:
    """Before: a SIGSTOPped worker was never noticed (its slot's connections waited forever), and
    SIGTERM then waited 40 s and exited 1."""
    async with serve_workers(tmp_path) as served:
        victim = min(served.workers())
        os.kill(victim, signal.SIGSTOP)
        await wait_for(
            lambda: victim not in (now := served.workers()) and len(now) == WORKERS,
            "a replacement for the stopped worker",
            within=HEARTBEAT_TIMEOUT + 10,
            every=0.1,
        )
        await served.wait_all_ready()
        statuses = await asyncio.gather(*(join(served, join_body(pod_token(served.issuer))) for _ in range(20)))
        assert statuses == [200] * 20
        stopped = min(served.workers())
        os.kill(stopped, signal.SIGSTOP)  # and one stopped at SIGTERM: it is woken to drain
        started = time.monotonic()
        status, _ = await served.stop()
        assert time.monotonic() - started < 10
        assert served.process.stderr is not None
        stderr = (await served.process.stderr.read()).decode()
    assert status == 0
    assert f"(pid {victim}) stopped answering its heartbeat" in stderr


def metrics_directory(worker: int) -> Path:
    """The multiprocess metrics directory a worker was given."""
    environ = Path(f"/proc/{worker}/environ").read_text().split("\0")
    return Path(next(entry.split("=", 1)[1] for entry in environ if entry.startswith("PROMETHEUS_MULTIPROC_DIR=")))


def database_files(directory: Path) -> dict[str, int]:
    """prometheus_client's files under directory (retired generations included): their sizes."""
    return {str(path): path.stat().st_size for path in directory.rglob("*.db")}


async def test_the_metrics_directory_stays_bounded_as_workers_are_replaced(tmp_path: Path) -> None:
    """Before: each replaced worker left its files (12 kills: 14 to 36 files), until the emptyDir
    was full. Now a dead worker's counts are folded into one retired generation."""
    async with serve_workers(tmp_path) as served:
        directory = metrics_directory(min(served.workers()))
        joins = 0
        for _ in range(6):
            assert await join(served, join_body(pod_token(served.issuer))) == 200
            joins += 1
            victim = min(served.workers())
            os.kill(victim, signal.SIGKILL)
            await wait_for(
                functools.partial(served.replaced, victim),
                "a replacement",
                within=30,
                every=0.1,
            )
            await served.wait_all_ready()
            files = database_files(directory)
            assert len(files) <= FILES_PER_WORKER * WORKERS + RETIRED_FILES, sorted(files)
            assert sum(files.values()) <= directory_bound(WORKERS)
        # the dead workers' counts stay in the sums
        assert await served.metric('kubejoin_join_attempts_total{reason="ok"') == joins
        assert await served.metric("kubejoin_join_duration_seconds_count") == joins
        status, _ = await served.stop()
    assert status == 0
