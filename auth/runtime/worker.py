"""A worker of `kubejoin serve --workers N`, as the worker sees it: it serves the listening sockets
it inherited, and talks to its supervisor through two pipes. On the first (`ready`) it says once
that it serves, then beats every HEARTBEAT seconds from its event loop, so that a worker that
stops (SIGSTOP, an event loop stuck) is noticed and replaced. The second (`lifeline`) only the
supervisor writes to: when it reads EOF, the supervisor is gone, however it went, and the worker
drains and stops rather than serve on unsupervised. Its stdout and stderr are pipes the
supervisor relays (relay.py)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass
from typing import Final

from ..service.config import Config
from .console import Exit
from .serve import Role, run_server

MULTIPROC_ENV: Final = "PROMETHEUS_MULTIPROC_DIR"
HEARTBEAT: Final = 0.5  # seconds between beats
READY: Final = b"ready\n"
BEAT: Final = b"."


@dataclass(frozen=True)
class Inherited:
    """What the supervisor hands a worker: file descriptors and its slot's number."""

    listeners: list[int]  # the join listener, then the metrics listener if configured
    lifeline: int
    ready: int
    index: int


def run_worker(config: Config, inherited: Inherited) -> Exit:
    sockets = [socket.socket(fileno=fd) for fd in inherited.listeners]
    os.set_blocking(inherited.ready, False)  # a beat never waits for a supervisor that does not read
    serving = asyncio.Event()

    def tell(what: bytes) -> None:
        # A supervisor gone (EPIPE), or not reading (a full pipe): the lifeline says the former.
        with contextlib.suppress(OSError):
            os.write(inherited.ready, what)

    def ready() -> None:
        tell(READY)
        serving.set()

    async def supervised(stop: asyncio.Event) -> None:
        asyncio.get_running_loop().add_reader(inherited.lifeline, stop.set)
        await serving.wait()
        while True:
            await asyncio.sleep(HEARTBEAT)
            tell(BEAT)

    return run_server(
        config,
        Role(
            sockets=sockets,
            worker=inherited.index,
            multiprocess_dir=os.environ.get(MULTIPROC_ENV),
            watchdog=supervised,
            on_ready=ready,
        ),
    )
