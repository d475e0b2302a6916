"""One module per `kubejoin` subcommand; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import ca_cmd, demo_cmd, issuer_cmd, join_cmd, loadtest_cmd, serve_cmd, tokens_cmd, verify_cmd

Register = Callable[["argparse._SubParsersAction[Any]"], None]
REGISTRY: list[Register] = [
    serve_cmd.register,
    demo_cmd.register,
    join_cmd.register,
    tokens_cmd.register,
    verify_cmd.register,
    issuer_cmd.register,
    ca_cmd.register,
    loadtest_cmd.register,
]
