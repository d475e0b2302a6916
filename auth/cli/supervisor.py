"""`kubejoin serve --workers N`: one process per worker, all serving the same listeners.

This process binds the listening sockets, one per worker slot and listener, all on the same port
with SO_REUSEPORT, so that the kernel spreads new connections evenly over the workers (one shared
socket lets whichever worker wakes first take a whole burst of connections). It keeps its copies
open: a worker that dies is replaced on the same sockets and the connections queued on them wait
for the replacement instead of being reset. A replacement that cannot start (the tokens file
mid-edit) is different: nobody would ever take those connections, so the slot's sockets are closed
(the kernel resets what was queued, and sends new connections to the live workers) until the
tokens load again, and then bound afresh. Each worker is `kubejoin serve` re-executed with its
sockets inherited and PROMETHEUS_MULTIPROC_DIR set, so that its metrics go to files that any
worker's /metrics sums (prometheus_client's multiprocess mode, chosen at import time).

SIGTERM or SIGINT: the sockets close here, every worker gets SIGTERM and drains, and the exit
status is 0 when every worker drained cleanly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Sequence
from typing import Any

from prometheus_client import multiprocess

from ..service.ca import CertificateAuthority
from ..service.config import Config, ConfigError, load_config, split_host_port
from ..service.tokens import load_tokens
from .common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, say

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# A worker's own drain is bounded by serve's SHUTDOWN_TIMEOUT (30 s); this is the backstop.
STOP_TIMEOUT = 40.0
# A worker that dies this soon after it started waits this long before it is replaced again.
RESTART_DELAY = 1.0
# A slot whose workers keep failing to start waits up to this long between attempts.
MAX_START_DELAY = 30.0


def startable(config_path: str) -> str | None:
    """What would stop a worker from starting now (the problem, said once), or None: the checks a
    worker makes first, without building the service."""
    try:
        config = load_config(config_path)
        CertificateAuthority.load_or_create(config.ca_cert_file, config.ca_key_file, config.cluster_name)
        load_tokens(config.tokens_file)
        if config.tls is not None and config.tls.cert_file and config.tls.key_file:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                config.tls.cert_file, config.tls.key_file
            )
    except (ConfigError, OSError, ssl.SSLError) as exc:
        return str(exc)
    return None


def _listener(family: int, kind: int, proto: int, where: Any) -> socket.socket:
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.set_inheritable(True)
        sock.bind(where)
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def bind_slots(addresses: list[str], count: int) -> list[list[socket.socket]]:
    """For each worker slot, one listening socket per address, all slots sharing each port."""
    slots: list[list[socket.socket]] = [[] for _ in range(count)]
    for address in addresses:
        host, port = split_host_port(address)
        family, kind, proto, _, where = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        for slot in slots:
            sock = _listener(family, kind, proto, where)
            where = sock.getsockname()  # port 0: the others take the port the first one got
            slot.append(sock)
    return slots


class Supervisor:
    def __init__(self, config_path: str, config: Config, log_level: str, metrics_dir: str) -> None:
        self._config = config
        self._config_path = config_path
        self._never_up: set[int] = set()  # slots whose workers all failed to start so far
        self._command = [
            sys.executable, "-m", "auth", "serve", "--config", config_path, "--log-level", log_level,
        ]  # fmt: skip
        self._env = {**os.environ, MULTIPROC_ENV: metrics_dir}
        self._metrics_dir = metrics_dir
        self.stop = asyncio.Event()
        self.stopping = False
        self.fatal = False
        self._workers: dict[int, asyncio.subprocess.Process] = {}
        # Workers watch the read end: when this process is gone, however it went, they read EOF
        # and drain rather than serve on unsupervised.
        self._lifeline, self._lifeline_writer = os.pipe()

    def close(self) -> None:
        os.close(self._lifeline)
        os.close(self._lifeline_writer)

    async def run_slot(self, index: int, sockets: list[socket.socket]) -> int:
        """Keeps one worker running on `sockets` until the service stops; its last exit status.
        `sockets` is replaced in place when the slot is vacated and bound again."""
        loop = asyncio.get_running_loop()
        came_up = False  # a worker of this slot ran (it died of something else than its start)
        failed_starts = 0  # in a row: each doubles the wait before the next attempt
        while True:
            started = loop.time()
            fds = [sock.fileno() for sock in sockets]
            arguments = [
                *("--worker-fds", ",".join(map(str, fds))),
                *("--lifeline", str(self._lifeline), "--worker-index", str(index)),
            ]
            process = await asyncio.create_subprocess_exec(
                *self._command, *arguments, pass_fds=[*fds, self._lifeline], env=self._env
            )
            self._workers[index] = process
            if self.stopping:  # the stop came while this worker was starting
                process.send_signal(signal.SIGTERM)
            status = await process.wait()
            multiprocess.mark_process_dead(process.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
            if self.stopping:
                # killed by the SIGTERM itself before it could install its handler: nothing to drain
                return 0 if status == -signal.SIGTERM else status
            if status != EXIT_USAGE:
                came_up, failed_starts = True, 0
                self._never_up.discard(index)
                say(f"kubejoin: worker {index} (pid {process.pid}) exited with status {status}; starting another")
                if loop.time() - started < RESTART_DELAY:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), RESTART_DELAY)
                    if self.stop.is_set():
                        return EXIT_OK
                continue
            if not came_up:
                self._never_up.add(index)
                if len(self._never_up) == self._config.workers:  # not one worker could start: nothing will help
                    say(f"kubejoin: worker {index} could not start; stopping")
                    self.fatal = True
                    self.stop.set()
                    return status
            # It could not start (the tokens file mid-edit, say) while other workers serve with what
            # they loaded. Nobody would take the connections the kernel queues on this slot's
            # sockets: close them (what is queued is reset, new connections go to the live
            # workers) until a start can succeed, then bind afresh.
            where = [(sock.family, sock.type, sock.proto, sock.getsockname()) for sock in sockets]
            for sock in sockets:
                sock.close()
            failed_starts += 1
            pid = process.pid
            say(f"kubejoin: worker {index} (pid {pid}) could not start; its listeners are closed until it can")
            wait = min(RESTART_DELAY * 2 ** (failed_starts - 1), MAX_START_DELAY)
            if not await self._rebind_when_startable(sockets, where, wait):
                return EXIT_OK

    async def _rebind_when_startable(
        self, sockets: list[socket.socket], where: Sequence[tuple[int, int, int, Any]], wait: float
    ) -> bool:
        """Waits `wait`, then until a worker could start (`startable`), then binds the slot's
        listeners again (in place). False when the service stops first."""
        said = ""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), wait)
            if self.stop.is_set():
                return False
            wait = RESTART_DELAY
            problem = startable(self._config_path)
            if problem is not None:
                if problem != said:
                    said = problem
                    say(f"kubejoin: not starting a worker yet: {problem}")
                continue
            fresh: list[socket.socket] = []
            try:
                for address in where:
                    fresh.append(_listener(*address))
            except OSError as exc:
                for sock in fresh:
                    sock.close()
                if str(exc) != said:
                    said = str(exc)
                    say(f"kubejoin: cannot listen again for a worker: {exc}; retrying")
                continue
            sockets[:] = fresh
            return True

    def signal_workers(self) -> None:
        self.stopping = True
        for process in self._workers.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signal.SIGTERM)

    def forward(self, signum: int) -> None:
        """Passes a signal on to every live worker (SIGHUP: each re-reads the join tokens)."""
        for process in self._workers.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.send_signal(signum)

    def kill_workers(self) -> None:
        for process in self._workers.values():
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()


async def supervise(config_path: str, config: Config, log_level: str) -> int:
    """Runs `config.workers` workers until SIGTERM/SIGINT; the exit status of `kubejoin serve`."""
    try:
        # Here, once, so that workers never race to create the CA, and a broken file stops the
        # start with one message rather than N.
        CertificateAuthority.load_or_create(config.ca_cert_file, config.ca_key_file, config.cluster_name)
        load_tokens(config.tokens_file)
    except (ConfigError, OSError) as exc:
        say(f"kubejoin serve: {exc}")
        return EXIT_USAGE
    addresses = [config.listen] + ([config.metrics_listen] if config.metrics_listen else [])
    try:
        slots = bind_slots(addresses, config.workers)
    except OSError as exc:
        say(f"kubejoin serve: cannot listen: {exc}")
        return EXIT_USAGE
    metrics_dir = tempfile.mkdtemp(prefix="kubejoin-metrics-")
    supervisor = Supervisor(config_path, config, log_level, metrics_dir)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.stop.set)
    # SIGHUP's default action would kill the supervisor, leaving orphaned workers to drain.
    loop.add_signal_handler(signal.SIGHUP, supervisor.forward, signal.SIGHUP)
    scheme = "https" if config.tls else "http"
    try:
        tasks = [asyncio.ensure_future(supervisor.run_slot(i, slot)) for i, slot in enumerate(slots)]
        say(f"kubejoin serving joins on {scheme}://{config.listen} with {config.workers} workers")
        if config.metrics_listen:
            say(f"kubejoin serving metrics on {config.metrics_listen}")
        await supervisor.stop.wait()
        if not supervisor.fatal:
            say("kubejoin stopping: no new connections; draining requests in flight in every worker")
        # Closed here first, so that each listener is gone once its worker lets go of it.
        for slot in slots:
            for sock in slot:
                sock.close()
        supervisor.signal_workers()
        done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
        if pending:
            say(f"kubejoin: {len(pending)} workers did not stop in {STOP_TIMEOUT:g} s; killing them")
            supervisor.kill_workers()
            await asyncio.wait(pending)
            return EXIT_REFUSED
        if supervisor.fatal:
            return EXIT_USAGE
        statuses = [task.result() for task in done]
        if any(statuses):
            say(f"kubejoin: workers exited with statuses {sorted(set(statuses))}")
            return EXIT_REFUSED
        return EXIT_OK
    finally:
        for slot in slots:
            for sock in slot:
                sock.close()
        supervisor.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)
