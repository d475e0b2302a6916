"""`kubejoin serve --config FILE [--workers N|auto]`: runs until SIGTERM or SIGINT, then drains
in-flight requests and exits 0. With more than one worker, this process supervises the workers
(auth/cli/supervisor.py) and each worker runs `serve` on the sockets it inherits."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import socket
import ssl
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any

from aiohttp import web

from ..service.config import Config, load_config, parse_workers, split_host_port
from ..service.files import ConfigError, write_private_file
from ..service.server import SERVICE, create_app, create_metrics_app
from .common import EXIT_OK, EXIT_USAGE, listening_on, say
from .supervisor import MULTIPROC_ENV, supervise

SHUTDOWN_TIMEOUT = 30.0
# After answering a request whose body it did not read (a refusal), aiohttp keeps reading and
# discarding that body for this long, so that a client still sending can read the answer. It does
# not notice a client that left meanwhile: each such request stays in memory for the whole time
# (its default, 10 s, let 20 looping connections pin 100 MiB). One second is enough for a body of
# at most 64 KiB on any working link.
LINGERING_TIME = 1.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("serve", help="run the join service")
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="processes serving the same listeners (default: the config's `workers`, else 1; auto: one per CPU)",
    )
    # Internal: set by the supervisor for each worker it starts (the inherited listening sockets).
    parser.add_argument("--worker-fds", help=argparse.SUPPRESS)
    parser.add_argument("--lifeline", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


class HandshakeBoundSite(web.BaseSite):
    """The join listener, on an address or on a socket a worker inherited, whose TLS handshakes
    must end within `handshake_timeout`: asyncio's default is 60 s, so silent or half-handshake
    sockets outlived idle_timeout fourfold, and aiohttp's TCPSite and SockSite do not pass
    ssl_handshake_timeout on (this start() is theirs with it)."""

    def __init__(
        self,
        runner: web.AppRunner,
        *,
        address: tuple[str, int] | None = None,
        sock: socket.socket | None = None,
        ssl_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        super().__init__(runner, ssl_context=ssl_context)
        self._address = address
        self._sock = sock
        self._handshake_timeout = handshake_timeout

    @property
    def name(self) -> str:
        scheme = "https" if self._ssl_context else "http"
        if self._address is not None:
            return f"{scheme}://{self._address[0]}:{self._address[1]}"
        return f"{scheme}://{self._sock.getsockname() if self._sock else '?'}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        options: dict[str, Any] = {"ssl": self._ssl_context, "backlog": self._backlog}
        if self._ssl_context is not None:
            options["ssl_handshake_timeout"] = self._handshake_timeout
        loop = asyncio.get_running_loop()
        if self._sock is not None:
            self._server = await loop.create_server(server, sock=self._sock, **options)
        else:
            assert self._address is not None
            host, port = self._address
            self._server = await loop.create_server(server, host, port, reuse_address=True, **options)


def make_runner(app: web.Application, config: Config) -> web.AppRunner:
    return web.AppRunner(
        app,
        shutdown_timeout=SHUTDOWN_TIMEOUT,
        keepalive_timeout=config.limits.idle_timeout,
        lingering_time=LINGERING_TIME,
        access_log=None,
    )


async def serve(
    app: web.Application,
    config: Config,
    stop: asyncio.Event,
    sockets: list[socket.socket] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serves until `stop` is set. A worker passes the listening sockets it inherited (the join
    listener, then the metrics listener if configured) and says nothing: its supervisor does.
    `on_ready` is called once every listener serves."""
    listen, metrics_listen = config.listen, config.metrics_listen
    runner = make_runner(app, config)
    await runner.setup()
    runners = [runner]
    quiet = sockets is not None
    try:
        host, port = split_host_port(listen)
        context = server_tls_context(config, app)
        site: web.BaseSite = HandshakeBoundSite(
            runner,
            address=None if sockets is not None else (host, port),
            sock=sockets[0] if sockets is not None else None,
            ssl_context=context,
            handshake_timeout=config.limits.idle_timeout,
        )
        await site.start()
        if not quiet:
            say(f"kubejoin serving joins on {listening_on(runner.addresses, 'https' if context else 'http')}")
            warn_if_clear(config)
        if metrics_listen:
            metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
            await metrics_runner.setup()
            runners.append(metrics_runner)
            host, port = split_host_port(metrics_listen)
            if sockets is not None:
                site = web.SockSite(metrics_runner, sockets[1])
            else:
                site = web.TCPSite(metrics_runner, host, port, reuse_address=True)
            await site.start()
            if not quiet:
                say(f"kubejoin serving metrics on {listening_on(metrics_runner.addresses)}")
        if on_ready is not None:
            on_ready()
        await stop.wait()
        if not quiet:
            say("kubejoin stopping: no new connections; draining requests in flight")
        await drain(app, runner)
    finally:
        for each in reversed(runners):
            await each.cleanup()


def warn_if_clear(config: Config) -> None:
    host, _ = split_host_port(config.listen)
    if config.tls is None and host not in ("127.0.0.1", "::1", "localhost"):
        say("kubejoin: WARNING: joins are served without TLS; ServiceAccount tokens cross the network in clear")


SELF_ISSUED_LIFETIME = datetime.timedelta(days=365)


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


async def drain(app: web.Application, runner: web.AppRunner) -> None:
    """Stops listening, then waits for joins in flight, including those whose body is still
    arriving (aiohttp's own shutdown stops reading from open connections)."""
    service = app[SERVICE]
    service.ready = False
    service.draining = True  # answers now say Connection: close
    service.metrics.ready.set(0)
    for site in list(runner.sites):
        await site.stop()
    if service.admission.active:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.admission.idle.wait(), SHUTDOWN_TIMEOUT)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        say(f"kubejoin serve: {exc}")
        return EXIT_USAGE
    if args.worker_fds:
        fds = [int(fd) for fd in args.worker_fds.split(",")]
        if len(fds) != 1 + bool(config.metrics_listen):  # the config changed since the supervisor bound them
            say("kubejoin serve: listen or metrics_listen changed since kubejoin started; restart it to apply")
            return EXIT_USAGE
        return run_worker(config, fds, int(args.lifeline), int(args.worker_index), int(args.ready_fd))
    if args.workers is not None:
        try:
            config = replace(config, workers=parse_workers(args.workers, "--workers"))
        except ConfigError as exc:
            say(f"kubejoin serve: {exc}")
            return EXIT_USAGE
    if config.workers > 1:
        return asyncio.run(supervise(args.config, config, args.log_level))
    return run_server(config)


def run_worker(config: Config, fds: list[int], lifeline: int, index: int, ready_fd: int) -> int:
    """One worker started by the supervisor: serves the inherited sockets, tells the supervisor
    once it serves (a line on `ready_fd`), and stops (draining) at SIGTERM or when the supervisor
    is gone (`lifeline`, a pipe only it writes to, reads EOF)."""
    sockets = [socket.socket(fileno=fd) for fd in fds]

    async def orphaned(stop: asyncio.Event) -> None:
        asyncio.get_running_loop().add_reader(lifeline, stop.set)

    def ready() -> None:
        with contextlib.suppress(OSError):  # a supervisor gone meanwhile: the lifeline tells
            os.write(ready_fd, b"ready\n")
        os.close(ready_fd)

    return run_server(config, sockets, os.environ.get(MULTIPROC_ENV), orphaned, index, ready)


def run_server(
    config: Config,
    sockets: list[socket.socket] | None = None,
    multiprocess_dir: str | None = None,
    watchdog: Callable[[asyncio.Event], Awaitable[None]] | None = None,
    worker: int | None = None,
    on_ready: Callable[[], None] | None = None,
) -> int:
    async def main() -> int:
        try:
            app = create_app(config, multiprocess_dir=multiprocess_dir, worker=worker)
        except (ConfigError, OSError) as exc:
            say(f"kubejoin serve: {exc}")
            return EXIT_USAGE
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        watching = asyncio.ensure_future(watchdog(stop)) if watchdog is not None else None
        reloads: set[asyncio.Future[Any]] = set()

        def reload_now() -> None:
            # SIGHUP's default action kills the process, and with it join log lines not yet
            # written. Here it means "re-read the join tokens now"; the join log is stdout and
            # needs no reopening.
            say("kubejoin: SIGHUP: re-reading the join tokens file and the clusters")
            task = asyncio.ensure_future(app[SERVICE].reload())
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, reload_now)
        try:
            await serve(app, config, stop, sockets, on_ready)
        except (OSError, ssl.SSLError) as exc:
            say(f"kubejoin serve: cannot listen: {exc}")
            return EXIT_USAGE
        finally:
            if watching is not None:
                watching.cancel()
        return EXIT_OK

    return asyncio.run(main())
