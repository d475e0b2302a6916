"""One module per `kubejoin` subcommand; each exposes `register(subparsers)`."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from . import issuer_cmd, verify_cmd

Register = Callable[["argparse._SubParsersAction[Any]"], None]
REGISTRY: list[Register] = [verify_cmd.register, issuer_cmd.register]
