"""`kubejoin serve --config FILE`: runs until SIGTERM or SIGINT, then drains in-flight requests
and exits 0."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import signal
import ssl
import tempfile
from typing import Any

from aiohttp import web

from ..service.config import Config, ConfigError, load_config
from ..service.server import SERVICE, create_app, create_metrics_app
from .common import EXIT_OK, EXIT_USAGE, say
from .issuer import split_host_port

SHUTDOWN_TIMEOUT = 30.0


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("serve", help="run the join service")
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.set_defaults(handler=run)


async def serve(app: web.Application, config: Config, stop: asyncio.Event) -> None:
    listen, metrics_listen = config.listen, config.metrics_listen
    runner = web.AppRunner(
        app, shutdown_timeout=SHUTDOWN_TIMEOUT, keepalive_timeout=config.limits.idle_timeout, access_log=None
    )
    await runner.setup()
    runners = [runner]
    try:
        host, port = split_host_port(listen)
        context = server_tls_context(config, app)
        await web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context).start()
        say(f"kubejoin serving joins on {'https' if context else 'http'}://{listen}")
        if context is None and host not in ("127.0.0.1", "::1", "localhost"):
            say("kubejoin: WARNING: joins are served without TLS; ServiceAccount tokens cross the network in clear")
        if metrics_listen:
            metrics_runner = web.AppRunner(create_metrics_app(app), access_log=None)
            await metrics_runner.setup()
            runners.append(metrics_runner)
            host, port = split_host_port(metrics_listen)
            await web.TCPSite(metrics_runner, host, port, reuse_address=True).start()
            say(f"kubejoin serving metrics on {metrics_listen}")
        await stop.wait()
        say("kubejoin stopping: no new connections; draining requests in flight")
        await drain(app, runner)
    finally:
        for each in reversed(runners):
            await each.cleanup()


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
        descriptor = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(key)
        context.load_cert_chain(cert_path, key_path)
    return context


async def drain(app: web.Application, runner: web.AppRunner) -> None:
    """Stops listening, then waits for joins in flight, including those whose body is still
    arriving (aiohttp's own shutdown stops reading from open connections)."""
    service = app[SERVICE]
    service.ready = False
    service.metrics.ready.set(0)
    for site in list(runner.sites):
        await site.stop()
    if service.in_flight:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(service.idle.wait(), SHUTDOWN_TIMEOUT)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        say(f"kubejoin serve: {exc}")
        return EXIT_USAGE

    async def main() -> int:
        try:
            app = create_app(config)
        except (ConfigError, OSError) as exc:
            say(f"kubejoin serve: {exc}")
            return EXIT_USAGE
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        try:
            await serve(app, config, stop)
        except (OSError, ssl.SSLError) as exc:
            say(f"kubejoin serve: cannot listen: {exc}")
            return EXIT_USAGE
        return EXIT_OK

    return asyncio.run(main())
