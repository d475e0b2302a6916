"""`kubejoin serve --workers N`: one process per worker, all serving the same listeners.

This process binds the listening sockets, one per worker slot and listener, all on the same port
with SO_REUSEPORT, so that the kernel spreads new connections evenly over the workers (one shared
socket lets whichever worker wakes first take a whole burst of connections). It keeps its copies
open: a worker that dies is replaced on the same sockets and the connections queued on them wait
for the replacement instead of being reset.

A worker says when it serves (a line on a pipe it inherits). One that exits before that could not
start (a tokens file or config broken by an edit, say): nobody would ever take the connections
queued on its slot, so the slot's sockets are closed (the kernel resets what was queued and sends
new connections to the live workers) until `startable` finds that a worker could start, and are
then bound afresh; repeated failures wait longer. Only when no worker has ever served and every
slot failed is the start given up (exit 2). SIGHUP goes to the workers that serve: one still
starting reads the tokens file anyway, and would be killed by a signal it has no handler for yet.

Each worker is `kubejoin serve` re-executed with its sockets inherited and PROMETHEUS_MULTIPROC_DIR
set, so that its metrics go to files that any worker's /metrics sums (prometheus_client's
multiprocess mode, chosen at import time).

Each worker's stdout and stderr are pipes that this process relays, whole lines only (relay.py);
a worker that stops beating is killed and replaced (child.py); a dead worker's metrics files are
folded into one (metrics/multiprocess.py), so the directory is bounded by the live workers.

SIGTERM or SIGINT: the sockets close here, every worker gets SIGTERM (and SIGCONT, should it be
stopped) and drains, and the exit status is 0 when every worker drained cleanly.
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
from collections.abc import Callable, Sequence
from typing import Any, Final

from metrics import fold_retired

from ..service.ca import CertificateAuthority
from ..service.config import Config, load_config, split_host_port
from ..service.files import ConfigError
from ..service.tokens import load_tokens
from .child import HEARTBEAT_TIMEOUT, Child, Ended, Streams
from .console import Exit, say
from .relay import LineRelay
from .site import BACKLOG, bound
from .worker import MULTIPROC_ENV

# A worker's own drain is bounded by serve's SHUTDOWN_TIMEOUT (30 s); this is the backstop.
STOP_TIMEOUT: Final = 40.0
# A worker that dies this soon after it started waits this long before it is replaced again.
RESTART_DELAY: Final = 1.0
# A slot whose workers keep failing to start waits up to this long between attempts.
MAX_START_DELAY: Final = 30.0
# At the end, how long the workers' last lines may take to reach a slow stdout.
FLUSH_TIMEOUT: Final = 5.0


def startable(config_path: str, running: Config) -> str | None:
    """What would stop a worker from starting now (the problem, to be said once), or None: the
    checks a worker makes first, without building the service. `running`: the config the
    listeners were bound for."""
    try:
        config = load_config(config_path)
        if (config.listen, config.metrics_listen) != (running.listen, running.metrics_listen):
            return "listen or metrics_listen changed since kubejoin started; restart it to apply"
        try:  # only loads: a CA made here would differ from the one the other workers sign with
            CertificateAuthority.load(config.ca_cert_file, config.ca_key_file, config.cluster_name)
        except OSError as exc:
            return f"ca: {exc}"
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
        sock.listen(BACKLOG)
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
    def __init__(
        self,
        config_path: str,
        config: Config,
        log_level: str,
        metrics_dir: str,
        streams: Streams,
        command: list[str] | None = None,
        heartbeat_timeout: float = HEARTBEAT_TIMEOUT,
    ) -> None:
        self._config = config
        self._config_path = config_path
        self._never_up: set[int] = set()  # slots that failed to start while no worker ever served
        self._ever_served = False
        self._serving: set[int] = set()  # slots whose current worker said it serves
        self._command = command or [
            sys.executable, "-m", "auth", "serve", "--config", config_path, "--log-level", log_level,
        ]  # fmt: skip
        self._env = {**os.environ, MULTIPROC_ENV: metrics_dir}
        self._metrics_dir = metrics_dir
        self._streams = streams
        self._heartbeat_timeout = heartbeat_timeout
        self.say: Callable[[str], None] = streams.err.line  # between the workers' lines, never inside one
        self.stop = asyncio.Event()
        self.stopping = False
        self.fatal = False
        self._workers: dict[int, Child] = {}
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
        failed_starts = 0  # in a row: each doubles the wait before the next attempt
        while True:
            started = loop.time()
            ended = await self._run_worker(index, sockets)
            status = ended.status
            if self.stopping:
                # a worker that never served had nothing to drain, whatever stopped it
                return Exit.OK if not ended.served or status == -signal.SIGTERM else status
            if ended.served:
                failed_starts = 0
                if ended.stalled:
                    why = f"stopped answering its heartbeat for {self._heartbeat_timeout:g} s and was killed"
                else:
                    why = f"exited with status {status}"
                self.say(f"kubejoin: worker {index} (pid {ended.pid}) {why}; starting another")
                if loop.time() - started < RESTART_DELAY:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self.stop.wait(), RESTART_DELAY)
                    if self.stop.is_set():
                        return Exit.OK
                continue
            if not self._ever_served:
                self._never_up.add(index)
                if len(self._never_up) == self._config.workers:  # none could start: nothing will help
                    self.say(f"kubejoin: worker {index} could not start; stopping")
                    self.fatal = True
                    self.stop.set()
                    return status
            where = [(sock.family, sock.type, sock.proto, sock.getsockname()) for sock in sockets]
            for sock in sockets:
                sock.close()
            failed_starts += 1
            self.say(
                f"kubejoin: worker {index} (pid {ended.pid}) could not start; its listeners are closed until it can"
            )
            wait = min(RESTART_DELAY * 2 ** (failed_starts - 1), MAX_START_DELAY)
            if not await self._rebind_when_startable(sockets, where, wait):
                return Exit.OK

    async def _run_worker(self, index: int, sockets: list[socket.socket]) -> Ended:
        """Starts a worker on `sockets` and waits for its end."""
        child = await Child.start(
            self._command,
            sockets,
            lifeline=self._lifeline,
            index=index,
            env=self._env,
            streams=self._streams,
            on_ready=lambda: self._served(index),
        )
        self._workers[index] = child
        if self.stopping:  # the stop came while this worker was starting
            child.stop()
        try:
            ended = await child.wait(self._heartbeat_timeout)
        finally:
            self._serving.discard(index)
        try:
            fold_retired(ended.pid, self._metrics_dir)
        except OSError as exc:  # a full directory, say: the slot's worker is replaced all the same
            self.say(f"kubejoin: cannot fold the metrics of worker {index} (pid {ended.pid}): {exc}")
        return ended

    @property
    def serving(self) -> frozenset[int]:
        """The slots whose current worker said it serves."""
        return frozenset(self._serving)

    def _served(self, index: int) -> None:
        self._serving.add(index)
        self._ever_served = True  # the config, CA, tokens and listeners worked: later failures are edits

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
            problem = await asyncio.to_thread(startable, self._config_path, self._config)
            if problem is not None:
                if problem != said:
                    said = problem
                    self.say(f"kubejoin: not starting a worker yet: {problem}")
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
                    self.say(f"kubejoin: cannot listen again for a worker: {exc}; retrying")
                continue
            if self.stop.is_set():  # came while the files were read
                for sock in fresh:
                    sock.close()
                return False
            sockets[:] = fresh
            return True

    def signal_workers(self) -> None:
        self.stopping = True
        for child in self._workers.values():
            child.stop()

    def forward(self, signum: int) -> None:
        """Passes a signal on to every worker that serves (SIGHUP: each re-reads the join tokens).
        One still starting would die of it, and reads the tokens file as it starts anyway."""
        for index, child in self._workers.items():
            if index in self._serving:
                child.signal(signum)

    def kill_workers(self) -> None:
        for child in self._workers.values():
            child.signal(signal.SIGKILL)


async def supervise(config_path: str, config: Config, log_level: str) -> Exit:
    """Runs `config.workers` workers until SIGTERM/SIGINT; the exit status of `kubejoin serve`."""
    try:
        # Here, once, so that workers never race to create the CA (they only load it), and a broken
        # file stops the start with one message rather than N.
        CertificateAuthority.load_or_create(config.ca_cert_file, config.ca_key_file, config.cluster_name)
    except (ConfigError, OSError) as exc:
        say(f"kubejoin serve: {exc}")
        return Exit.USAGE
    problem = startable(config_path, config)
    if problem is not None:
        say(f"kubejoin serve: {problem}")
        return Exit.USAGE
    addresses = [config.listen] + ([config.metrics_listen] if config.metrics_listen else [])
    try:
        slots = bind_slots(addresses, config.workers)
    except OSError as exc:
        say(f"kubejoin serve: cannot listen: {exc}")
        return Exit.USAGE
    metrics_dir = tempfile.mkdtemp(prefix="kubejoin-metrics-")
    streams = Streams(LineRelay(sys.stdout.fileno()), LineRelay(sys.stderr.fileno()))
    supervisor = Supervisor(config_path, config, log_level, metrics_dir, streams)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, supervisor.stop.set)
    # SIGHUP's default action would kill the supervisor, leaving orphaned workers to drain.
    loop.add_signal_handler(signal.SIGHUP, supervisor.forward, signal.SIGHUP)
    try:
        tasks = [asyncio.ensure_future(supervisor.run_slot(i, slot)) for i, slot in enumerate(slots)]
        joins = bound(config.listen, slots[0][0].getsockname()[1])
        supervisor.say(
            f"kubejoin serving joins on {'https' if config.tls else 'http'}://{joins} with {config.workers} workers"
        )
        if config.metrics_listen:
            supervisor.say(f"kubejoin serving metrics on {bound(config.metrics_listen, slots[0][1].getsockname()[1])}")
        await supervisor.stop.wait()
        if not supervisor.fatal:
            supervisor.say("kubejoin stopping: no new connections; draining requests in flight in every worker")
        # Closed here first, so that each listener is gone once its worker lets go of it.
        for slot in slots:
            for sock in slot:
                sock.close()
        supervisor.signal_workers()
        return await _ended(supervisor, tasks)
    finally:
        for slot in slots:
            for sock in slot:
                sock.close()
        supervisor.close()
        for relay in streams:  # the workers' last lines
            await relay.finished(FLUSH_TIMEOUT)
        shutil.rmtree(metrics_dir, ignore_errors=True)


async def _ended(supervisor: Supervisor, tasks: Sequence[asyncio.Task[int]]) -> Exit:
    done, pending = await asyncio.wait(tasks, timeout=STOP_TIMEOUT)
    if pending:
        supervisor.say(f"kubejoin: {len(pending)} workers did not stop in {STOP_TIMEOUT:g} s; killing them")
        supervisor.kill_workers()
        await asyncio.wait(pending)
        return Exit.FAILED
    if supervisor.fatal:
        return Exit.USAGE
    statuses = [task.result() for task in done]
    if any(statuses):
        supervisor.say(f"kubejoin: workers exited with statuses {sorted(set(statuses))}")
        return Exit.FAILED
    return Exit.OK
