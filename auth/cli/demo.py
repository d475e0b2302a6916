"""`kubejoin demo`: the embedded default; see auth/devtools/demo.py."""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from ..devtools.demo import run_demo


def register(sub: argparse._SubParsersAction[Any]) -> None:
    parser = sub.add_parser("demo", help="run the whole join story on loopback in one process")
    parser.set_defaults(handler=lambda args: asyncio.run(run_demo()))
