"""The listeners of one serving process: the join listener, whose TLS handshakes are bounded, and
the runner settings that `kubejoin serve` and the tests share."""

from __future__ import annotations

import asyncio
import datetime
import os
import socket
import ssl
import tempfile
from typing import Any, Final

from aiohttp import web
from yarl import URL

from ..service.config import Config
from ..service.files import write_private_file
from ..service.server import SERVICE

SHUTDOWN_TIMEOUT: Final = 30.0
# After answering a request whose body it did not read (a refusal), aiohttp keeps reading and
# discarding that body for this long, so that a client still sending can read the answer. It does
# not notice a client that left meanwhile: each such request stays in memory for the whole time
# (its default, 10 s, let 20 looping connections pin 100 MiB). One second is enough for a body of
# at most 64 KiB on any working link.
LINGERING_TIME: Final = 1.0
SELF_ISSUED_LIFETIME: Final = datetime.timedelta(days=365)
BACKLOG: Final = 128  # connections the kernel queues for a listener (asyncio's default: 100)


class HandshakeBoundSite(web.BaseSite):
    """The join listener, on an address or on a socket a worker inherited, whose TLS handshakes
    must end within `handshake_timeout`: asyncio's default is 60 s, so silent or half-handshake
    sockets outlived idle_timeout fourfold, and aiohttp's sites do not pass ssl_handshake_timeout
    on. On aiohttp's public API only: BaseSite's start and stop register the site with its runner
    (so `runner.sites` and the runner's cleanup see it); the asyncio server is this class's own,
    serving `runner.server`."""

    def __init__(
        self,
        runner: web.AppRunner,
        where: socket.socket | tuple[str, int],
        *,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        protocols = runner.server
        if protocols is None:  # BaseSite has refused this already; this tells mypy
            raise RuntimeError("call runner.setup() before making a site")
        self._protocols = protocols
        self._where = where
        self._tls = ssl_context
        self._handshake_timeout = handshake_timeout
        self._listening: asyncio.Server | None = None

    @property
    def name(self) -> str:
        host, port = self._where.getsockname()[:2] if isinstance(self._where, socket.socket) else self._where
        if self._listening is not None:
            port = self.port
        return str(URL.build(scheme="https" if self._tls else "http", host=host, port=port))

    @property
    def port(self) -> int:
        """The port listened on (with port 0 in the config, the one the kernel chose)."""
        if self._listening is None or not self._listening.sockets:
            raise RuntimeError("the site is not listening")
        return int(self._listening.sockets[0].getsockname()[1])

    async def start(self) -> None:
        await super().start()
        options: dict[str, Any] = {"ssl": self._tls, "backlog": BACKLOG}
        if self._tls is not None:
            options["ssl_handshake_timeout"] = self._handshake_timeout
        loop = asyncio.get_running_loop()
        if isinstance(self._where, socket.socket):
            self._listening = await loop.create_server(self._protocols, sock=self._where, **options)
        else:
            host, port = self._where
            self._listening = await loop.create_server(self._protocols, host, port, reuse_address=True, **options)

    async def stop(self) -> None:
        if self._listening is not None:
            self._listening.close()
        await super().stop()


def bound(address: str, port: int) -> str:
    """`address` (HOST:PORT from the config) with the port bound: with port 0, the kernel's choice."""
    host = address.rpartition(":")[0]
    return f"{host}:{port}"


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    return web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=config.limits.idle_timeout,
        lingering_time=LINGERING_TIME,
        access_log=None,
    )


def server_tls_context(config: Config, app: web.Application) -> ssl.SSLContext | None:
    """The HTTPS context of the join listener, from files or issued by kubejoin's own CA."""
    if config.tls is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.tls.cert_file and config.tls.key_file:
        context.load_cert_chain(config.tls.cert_file, config.tls.key_file)
        return context
    chain, key = app[SERVICE].ca.issue_server(config.tls.dns_names, SELF_ISSUED_LIFETIME)
    # ssl loads keys only from files: a private directory, removed as soon as the key is loaded.
    with tempfile.TemporaryDirectory(prefix="kubejoin-tls-") as directory:
        cert_path, key_path = os.path.join(directory, "tls.crt"), os.path.join(directory, "tls.key")
        with open(cert_path, "wb") as handle:
            handle.write(chain)
        write_private_file(key_path, key)
        context.load_cert_chain(cert_path, key_path)
    return context
