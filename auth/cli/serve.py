"""`kubejoin serve --config FILE [--workers N|auto]`: runs until SIGTERM or SIGINT, then drains
in-flight requests and exits 0. The command line only reads its arguments and the config; how
the service runs (listeners, drain, the supervisor of N workers) is auth/runtime/."""

from __future__ import annotations

import argparse
import asyncio
import logging
from dataclasses import replace
from typing import Any

from ..runtime import Inherited, run_server, run_worker, supervise
from ..service.config import load_config, parse_workers
from ..service.files import ConfigError
from .common import EXIT_USAGE, say


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("serve", help="run the join service")
    parser.add_argument("--config", required=True, metavar="FILE")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument(
        "--workers",
        metavar="N|auto",
        help="processes serving the same listeners (default: the config's `workers`, else 1; auto: one per CPU)",
    )
    # Internal: set by the supervisor for each worker it starts (auth/runtime/worker.py).
    parser.add_argument("--worker-fds", help=argparse.SUPPRESS)
    parser.add_argument("--lifeline", help=argparse.SUPPRESS)
    parser.add_argument("--worker-index", help=argparse.SUPPRESS)
    parser.add_argument("--ready-fd", help=argparse.SUPPRESS)
    parser.set_defaults(handler=run)


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
        inherited = Inherited(fds, int(args.lifeline), int(args.ready_fd), int(args.worker_index))
        return run_worker(config, inherited)
    if args.workers is not None:
        try:
            config = replace(config, workers=parse_workers(args.workers, "--workers"))
        except ConfigError as exc:
            say(f"kubejoin serve: {exc}")
            return EXIT_USAGE
    if config.workers > 1:
        return asyncio.run(supervise(args.config, config, args.log_level))
    return run_server(config)
