"""The supervisor's decisions, with stand-in workers (tests/data/stub_worker.py) that fail,
serve or exit on cue: which failures stop the service and which are retried, what SIGHUP reaches,
and the exit statuses. Real processes and sockets on loopback; every wait is bounded."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.runtime.child import Streams
from auth.runtime.relay import LineRelay
from auth.runtime.supervisor import Supervisor, bind_slots, startable
from auth.service.ca import CertificateAuthority
from auth.service.config import Config, load_config
from auth.service.server import create_app
from tests.polling import wait_for
from tests.service import CLUSTER, token_doc, write_tokens

STUB = str(Path(__file__).parent / "data" / "stub_worker.py")


class Run:
    def __init__(
        self, supervisor: Supervisor, tasks: list[asyncio.Task[int]], plans: Path, slots: list[list[socket.socket]]
    ) -> None:
        self.supervisor, self.tasks, self.plans, self.slots = supervisor, tasks, plans, slots

    def started(self, index: int) -> list[tuple[int, str]]:
        """The workers of slot `index` so far, in order: (pid, step)."""
        log = self.plans / "log"
        lines = log.read_text().splitlines() if log.exists() else []
        return [(int(pid), step) for slot, pid, step in map(str.split, lines) if slot == str(index)]

    def steps(self, index: int) -> list[str]:
        """The steps the workers of slot `index` took so far, in order."""
        return [step for _, step in self.started(index)]

    async def until(self, condition: Callable[[], bool], what: str, within: float = 20) -> None:
        """wait_for, with the steps of both slots in the failure message."""
        await wait_for(
            condition, what, within=within, every=0.05, detail=lambda: f"steps {self.steps(0)} {self.steps(1)}"
        )


@asynccontextmanager
async def supervised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plans: dict[int, list[str]], heartbeat_timeout: float = 60
) -> AsyncIterator[Run]:
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    (tmp_path / "config.yaml").write_text(f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\ntokens_file: tokens.yaml\n")
    config = replace(load_config(str(tmp_path / "config.yaml")), workers=len(plans))
    CertificateAuthority.load_or_create(config.ca_cert_file, config.ca_key_file, config.cluster_name)
    (tmp_path / "plans").mkdir()
    for index, plan in plans.items():
        (tmp_path / "plans" / str(index)).write_text(str(plan).replace("'", '"'))
    monkeypatch.setenv("PLAN_DIR", str(tmp_path / "plans"))
    (tmp_path / "metrics").mkdir()
    command = [sys.executable, STUB]
    streams = Streams(LineRelay(sys.stdout.fileno()), LineRelay(sys.stderr.fileno()))
    supervisor = Supervisor(
        str(tmp_path / "config.yaml"), config, "INFO", str(tmp_path / "metrics"), streams, command, heartbeat_timeout
    )
    slots = bind_slots([config.listen], config.workers)
    tasks = [asyncio.ensure_future(supervisor.run_slot(index, slot)) for index, slot in enumerate(slots)]
    try:
        yield Run(supervisor, tasks, tmp_path / "plans", slots)
    finally:
        supervisor.stop.set()
        for slot in slots:
            for sock in slot:
                sock.close()
        supervisor.signal_workers()
        await asyncio.wait(tasks, timeout=30)
        supervisor.kill_workers()
        supervisor.close()


async def stopped(run: Run, within: float = 30) -> list[int]:
    """What `serve` does at SIGTERM: stop, close the listeners, signal the workers; the statuses."""
    run.supervisor.stop.set()
    run.supervisor.signal_workers()
    return list(await asyncio.wait_for(asyncio.gather(*run.tasks), within))


@pytest.mark.slow
async def test_a_slot_failing_to_start_after_another_served_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Slot 0 fails, then serves; slot 1 fails later: that used to count as "no worker could
    start" (each slot had failed once) and stopped the service while slot 0 served."""
    async with supervised(tmp_path, monkeypatch, {0: ["fail", "serve"], 1: ["late-fail", "serve"]}) as run:
        await run.until(lambda: run.supervisor.serving == {0, 1}, "both slots serving")
        assert not run.supervisor.fatal
        assert run.steps(1) == ["late-fail", "serve"]
        assert await stopped(run) == [0, 0]


@pytest.mark.slow
async def test_a_worker_that_served_and_exits_2_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Status 2 after serving is not a failed start (a worker turns internal errors into 2)."""
    async with supervised(tmp_path, monkeypatch, {0: ["serve-then-2", "serve"], 1: ["serve-then-2", "serve"]}) as run:
        listeners = [list(slot) for slot in run.slots]
        await run.until(lambda: run.steps(0) == run.steps(1) == ["serve-then-2", "serve"], "the replacements")
        await run.until(lambda: run.supervisor.serving == {0, 1}, "both slots serving")
        assert not run.supervisor.fatal
        assert run.slots == listeners  # replaced on the same sockets (queued connections wait), not vacated
        assert await stopped(run) == [0, 0]


@pytest.mark.slow
async def test_when_no_worker_can_start_the_service_stops(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with supervised(tmp_path, monkeypatch, {0: ["fail"], 1: ["fail"]}) as run:
        statuses = await asyncio.wait_for(asyncio.gather(*run.tasks), 20)
        assert run.supervisor.fatal and 2 in statuses


@pytest.mark.slow
async def test_sighup_waits_for_a_worker_to_serve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker still starting has no SIGHUP handler: forwarding it killed the worker."""
    async with supervised(tmp_path, monkeypatch, {0: ["serve"], 1: ["slow-serve"]}) as run:
        await run.until(lambda: 0 in run.supervisor.serving and run.steps(1) == ["slow-serve"], "slot 0 serving")
        assert 1 not in run.supervisor.serving  # still in its slow start
        run.supervisor.forward(signal.SIGHUP)
        await run.until(lambda: run.supervisor.serving == {0, 1}, "slot 1 serving")
        assert run.steps(1) == ["slow-serve"]  # the same worker: not killed and replaced
        assert await stopped(run) == [0, 0]


@pytest.mark.slow
async def test_a_start_failing_at_the_stop_is_a_clean_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async with supervised(tmp_path, monkeypatch, {0: ["serve"], 1: ["term-fails"]}) as run:
        await run.until(lambda: 0 in run.supervisor.serving and run.steps(1) == ["term-fails"], "both started")
        assert await stopped(run) == [0, 0]  # slot 1 exits 2 at the SIGTERM: it had nothing to drain


@pytest.mark.slow
async def test_a_vacant_slot_waits_for_the_files_and_binds_afresh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checks: list[str | None] = []  # what each of the supervisor's checks of the files found

    def checked(config_path: str, running: Config) -> str | None:
        checks.append(startable(config_path, running))
        return checks[-1]

    monkeypatch.setattr("auth.runtime.supervisor.startable", checked)
    async with supervised(tmp_path, monkeypatch, {0: ["serve"], 1: ["serve-then-2", "fail", "serve"]}) as run:
        first = list(run.slots[1])
        await run.until(lambda: run.steps(1)[:2] == ["serve-then-2", "fail"], "slot 1's failed start")
        good = (tmp_path / "tokens.yaml").read_text()
        (tmp_path / "tokens.yaml").write_text("kind: token\nversion: [\n")
        refused = len([found for found in checks if found is not None])
        # two checks of the broken files: the slot stays vacant
        await run.until(lambda: len([found for found in checks if found is not None]) >= refused + 2, "two checks")
        assert run.steps(1) == ["serve-then-2", "fail"] and run.supervisor.serving == {0}
        (tmp_path / "tokens.yaml").write_text(good)
        await run.until(lambda: run.supervisor.serving == {0, 1}, "slot 1 serving again")
        assert run.slots[1] != first and first[0].fileno() == -1  # closed while vacant, bound afresh
        assert await stopped(run) == [0, 0]


def test_startable_says_what_would_stop_a_worker_and_never_writes_a_ca(tmp_path: Path) -> None:
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    base = f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\ntokens_file: tokens.yaml\n"
    (tmp_path / "config.yaml").write_text(base)
    running = load_config(str(tmp_path / "config.yaml"))
    path = str(tmp_path / "config.yaml")
    problem = startable(path, running)
    assert problem is not None and problem.startswith("ca: ")  # no CA yet: said, not made
    assert not Path(running.ca_cert_file).exists() and not Path(running.ca_key_file).exists()
    CertificateAuthority.load_or_create(running.ca_cert_file, running.ca_key_file, running.cluster_name)
    assert startable(path, running) is None
    (tmp_path / "config.yaml").write_text(base + "metrics_listen: 127.0.0.1:0\n")  # needs a socket it lacks
    assert startable(path, running) == "listen or metrics_listen changed since kubejoin started; restart it to apply"


@pytest.mark.slow
async def test_a_worker_given_fewer_listeners_than_its_config_needs_says_so(tmp_path: Path) -> None:
    """It used to die of an IndexError ("internal error")."""
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    (tmp_path / "config.yaml").write_text(
        f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\nmetrics_listen: 127.0.0.1:0\ntokens_file: tokens.yaml\n"
    )
    [[listener]] = bind_slots(["127.0.0.1:0"], 1)
    ready, ready_writer = os.pipe()
    lifeline, lifeline_writer = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml")),
            *("--worker-fds", str(listener.fileno()), "--lifeline", str(lifeline), "--worker-index", "0"),
            *("--ready-fd", str(ready_writer)),
            pass_fds=[listener.fileno(), lifeline, ready_writer],
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(process.communicate(), 60)
    finally:
        listener.close()
        for fd in (ready, ready_writer, lifeline, lifeline_writer):
            os.close(fd)
    assert process.returncode == 2
    assert b"listen or metrics_listen changed since kubejoin started" in err and b"Traceback" not in err


def test_a_supervised_worker_only_loads_the_ca(tmp_path: Path) -> None:
    """Its supervisor made the CA; a worker making another (its files gone) would sign with a CA
    the other workers do not have."""
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    (tmp_path / "config.yaml").write_text(f"cluster_name: {CLUSTER}\ntokens_file: tokens.yaml\n")
    config = load_config(str(tmp_path / "config.yaml"))
    with pytest.raises(FileNotFoundError):
        create_app(config, registry=CollectorRegistry(), worker=0)
    assert not Path(config.ca_cert_file).exists() and not Path(config.ca_key_file).exists()
    create_app(config, registry=CollectorRegistry())  # one process alone makes its CA
    assert Path(config.ca_cert_file).exists()


@pytest.mark.slow
async def test_a_stopped_worker_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A SIGSTOPped worker (or one whose event loop is stuck) used to hold its slot, and the
    connections queued on it, forever: it neither exited nor served."""
    async with supervised(tmp_path, monkeypatch, {0: ["serve", "serve"], 1: ["serve"]}, heartbeat_timeout=1) as run:
        await run.until(lambda: run.supervisor.serving == {0, 1}, "both slots serving")
        [(stopped_pid, _)] = run.started(0)
        os.kill(stopped_pid, signal.SIGSTOP)
        await run.until(lambda: len(run.started(0)) == 2, "a replacement in slot 0")
        await run.until(lambda: run.supervisor.serving == {0, 1}, "the replacement serving")
        with pytest.raises(ProcessLookupError):  # killed (SIGKILL ends a stopped process) and reaped
            os.kill(stopped_pid, 0)
        assert run.steps(1) == ["serve"]  # the other worker beat on, untouched
        assert await stopped(run) == [0, 0]


@pytest.mark.slow
async def test_sigterm_reaches_a_stopped_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stopped worker kept the SIGTERM pending: `serve` waited 40 s, killed it and exited 1."""
    async with supervised(tmp_path, monkeypatch, {0: ["serve"], 1: ["serve"]}) as run:
        await run.until(lambda: run.supervisor.serving == {0, 1}, "both slots serving")
        [(pid, _)] = run.started(1)
        os.kill(pid, signal.SIGSTOP)
        assert await stopped(run, within=10) == [0, 0]  # SIGCONT follows the SIGTERM: it drains
