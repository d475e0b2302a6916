"""One serving process, alone or as a worker: builds the service, listens, reloads the join tokens
at SIGHUP, and at SIGTERM or SIGINT stops listening, drains the requests in flight and ends."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from ..service.config import Config, split_host_port
from ..service.files import ConfigError
from ..service.gcpolicy import freeze_after_start
from ..service.server import SERVICE, create_app, create_metrics_app
from .console import Exit, say
from .site import SHUTDOWN_TIMEOUT, HandshakeBoundSite, bound, make_runner, server_tls_context


@dataclass(frozen=True)
class Role:
    """What this process is: alone (it says where it serves), or a worker of `kubejoin serve
    --workers N` (its supervisor says it; it serves the sockets it inherited)."""

    sockets: list[socket.socket] | None = None  # the join listener, then the metrics listener if any
    worker: int | None = None
    multiprocess_dir: str | None = None
    # Runs beside the service until the service stops; may set the event it is given to stop it.
    watchdog: Callable[[asyncio.Event], Awaitable[None]] | None = None
    on_ready: Callable[[], None] = field(default=lambda: None)


async def serve(app: web.Application, config: Config, stop: asyncio.Event, role: Role) -> None:
    """Serves until `stop` is set, then drains. `role.on_ready` is called once every listener serves."""
    sockets = role.sockets
    quiet = sockets is not None
    runner = make_runner(app, config)
    await runner.setup()
    runners = [runner]
    try:
        context = server_tls_context(config, app)
        joins = HandshakeBoundSite(
            runner,
            sockets[0] if sockets is not None else split_host_port(config.listen),
            ssl_context=context,
            handshake_timeout=config.limits.idle_timeout,
        )
        await joins.start()
        if not quiet:
            say(f"kubejoin serving joins on {'https' if context else 'http'}://{bound(config.listen, joins.port)}")
            warn_if_clear(config)
        if config.metrics_listen:
            metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
            await metrics_runner.setup()
            runners.append(metrics_runner)
            site: web.BaseSite
            if sockets is not None:
                site = web.SockSite(metrics_runner, sockets[1])
            else:
                host, port = split_host_port(config.metrics_listen)
                site = web.TCPSite(metrics_runner, host, port, reuse_address=True)
            await site.start()
            if isinstance(site, web.TCPSite):
                say(f"kubejoin serving metrics on {bound(config.metrics_listen, site.port)}")
        freeze_after_start()  # start-up objects out of every later collection (auth/service/gcpolicy.py)
        role.on_ready()
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


def run_server(config: Config, role: Role | None = None) -> Exit:
    """Runs one serving process to its end; its exit status."""
    role = role or Role()

    async def main() -> Exit:
        try:
            app = create_app(config, multiprocess_dir=role.multiprocess_dir, worker=role.worker)
        except (ConfigError, OSError) as exc:
            say(f"kubejoin serve: {exc}")
            return Exit.USAGE
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        watching = asyncio.ensure_future(role.watchdog(stop)) if role.watchdog is not None else None
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
            await serve(app, config, stop, role)
        except (OSError, ssl.SSLError) as exc:
            say(f"kubejoin serve: cannot listen: {exc}")
            return Exit.USAGE
        finally:
            if watching is not None:
                watching.cancel()
        return Exit.OK

    return asyncio.run(main())
