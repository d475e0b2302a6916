"""A worker as its supervisor sees it: the process, started on its slot's sockets with its pipes
(worker.py says what flows on them), and its end. A worker that served and then missed its
heartbeat for `heartbeat_timeout` seconds (stopped, or its event loop stuck) is killed, so that
its slot gets a replacement instead of holding its connections forever."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import Final, NamedTuple

from .relay import LineRelay
from .worker import READY

# Long enough for a garbage collection or the first list of 100,000 pods, short enough that a
# stopped worker's queued connections are served by its replacement within seconds.
HEARTBEAT_TIMEOUT: Final = 5.0


class Ended(NamedTuple):
    pid: int
    status: int
    served: bool  # it said it serves: a later exit is not a failed start
    stalled: bool  # killed for a missed heartbeat


class Streams(NamedTuple):
    """Where the workers' stdout and stderr go."""

    out: LineRelay
    err: LineRelay


class Child:
    def __init__(self, process: asyncio.subprocess.Process, ready: int, on_ready: Callable[[], None]) -> None:
        self.process = process
        self._ready = ready
        self._on_ready = on_ready
        self._said = b""
        self.served = False
        self._beat = 0.0
        self.outputs: list[asyncio.Future[None]] = []

    @classmethod
    async def start(
        cls,
        command: list[str],
        sockets: list[socket.socket],
        *,
        lifeline: int,
        index: int,
        env: dict[str, str],
        streams: Streams,
        on_ready: Callable[[], None],
    ) -> Child:
        fds = [sock.fileno() for sock in sockets]
        ready, ready_writer = os.pipe()
        out, out_writer = os.pipe()
        err, err_writer = os.pipe()
        arguments = [
            *("--worker-fds", ",".join(map(str, fds)), "--lifeline", str(lifeline)),
            *("--worker-index", str(index), "--ready-fd", str(ready_writer)),
        ]
        try:
            process = await asyncio.create_subprocess_exec(
                *command,
                *arguments,
                pass_fds=[*fds, lifeline, ready_writer],
                env=env,
                stdout=out_writer,
                stderr=err_writer,
            )
        except BaseException:
            for fd in (ready, out, err):
                os.close(fd)
            raise
        finally:  # the worker's copies are the only ones: its exit is EOF here
            for fd in (ready_writer, out_writer, err_writer):
                os.close(fd)
        child = cls(process, ready, on_ready)
        child.outputs = [streams.out.attach(out), streams.err.attach(err)]
        os.set_blocking(ready, False)
        asyncio.get_running_loop().add_reader(ready, child._heard)
        return child

    @property
    def pid(self) -> int:
        return self.process.pid

    def _heard(self) -> None:
        try:
            said = os.read(self._ready, 4096)
        except BlockingIOError:
            return
        except OSError:
            said = b""
        if not said:  # EOF: it exited, or closed the pipe; either way nothing more comes
            asyncio.get_running_loop().remove_reader(self._ready)
            return
        self._beat = asyncio.get_running_loop().time()
        if not self.served:
            self._said = (self._said + said)[: len(READY)]
            if self._said == READY:
                self.served = True
                self._on_ready()

    def signal(self, signum: int) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signum)

    def stop(self) -> None:
        """SIGTERM, and SIGCONT: a stopped worker would keep the SIGTERM pending, and its slot's
        end with it, until killed."""
        self.signal(signal.SIGTERM)
        self.signal(signal.SIGCONT)

    async def wait(self, heartbeat_timeout: float = HEARTBEAT_TIMEOUT) -> Ended:
        """Until the worker has exited; kills it once it served and then missed its heartbeat."""
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(self.process.wait())
        stalled = False
        try:
            while not exited.done():
                await asyncio.wait([exited], timeout=min(1.0, heartbeat_timeout / 4))
                if self.served and not stalled and loop.time() - self._beat > heartbeat_timeout:
                    stalled = True
                    self.signal(signal.SIGKILL)
        finally:
            exited.cancel()  # only if this wait was cancelled: the process is watched no more
            self._heard()  # what it said just before it went
            loop.remove_reader(self._ready)
            os.close(self._ready)
        return Ended(self.pid, exited.result(), self.served, stalled)
