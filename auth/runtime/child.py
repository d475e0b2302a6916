"""A worker as its supervisor sees it: the process, started on its slot's sockets with its pipes
(worker.py says what flows on them), and its end."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
from collections.abc import Callable
from typing import NamedTuple

from .worker import READY


class Ended(NamedTuple):
    pid: int
    status: int
    served: bool  # it said it serves: a later exit is not a failed start


class Child:
    def __init__(self, process: asyncio.subprocess.Process, ready: int, on_ready: Callable[[], None]) -> None:
        self.process = process
        self._ready = ready
        self._on_ready = on_ready
        self._said = b""
        self.served = False

    @classmethod
    async def start(
        cls,
        command: list[str],
        sockets: list[socket.socket],
        *,
        lifeline: int,
        index: int,
        env: dict[str, str],
        on_ready: Callable[[], None],
    ) -> Child:
        fds = [sock.fileno() for sock in sockets]
        ready, ready_writer = os.pipe()
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
            )
        except BaseException:
            os.close(ready)
            raise
        finally:  # the worker's copy is the only one: its exit is EOF here
            os.close(ready_writer)
        child = cls(process, ready, on_ready)
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
        self.signal(signal.SIGTERM)

    async def wait(self) -> Ended:
        """Until the worker has exited."""
        loop = asyncio.get_running_loop()
        try:
            status = await self.process.wait()
        finally:
            self._heard()  # what it said just before it went
            loop.remove_reader(self._ready)
            os.close(self._ready)
        return Ended(self.pid, status, self.served)
