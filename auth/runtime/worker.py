"""A worker of `kubejoin serve --workers N`, as the worker sees it: it serves the listening sockets
it inherited, and talks to its supervisor through two pipes. On the first (`ready`) it says once
that it serves. The second (`lifeline`) only the supervisor writes to: when it reads EOF, the
supervisor is gone, however it went, and the worker drains and stops rather than serve on
unsupervised."""

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
READY: Final = b"ready\n"


@dataclass(frozen=True)
class Inherited:
    """What the supervisor hands a worker: file descriptors and its slot's number."""

    listeners: list[int]  # the join listener, then the metrics listener if configured
    lifeline: int
    ready: int
    index: int


def run_worker(config: Config, inherited: Inherited) -> Exit:
    sockets = [socket.socket(fileno=fd) for fd in inherited.listeners]

    def ready() -> None:
        with contextlib.suppress(OSError):  # a supervisor gone meanwhile: the lifeline tells
            os.write(inherited.ready, READY)
        os.close(inherited.ready)

    async def supervised(stop: asyncio.Event) -> None:
        asyncio.get_running_loop().add_reader(inherited.lifeline, stop.set)

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
