#!/usr/bin/env python3
"""Where a running `kubejoin serve` spends its time under a wrk load: py-spy samples of the server
process (and of bench/minimal_server.py for comparison), grouped by room.

Starts the server as bench/http.py does, drives it with the same wrk script and bodies for
--duration seconds, and records it with `py-spy record --pid` meanwhile (pip install py-spy;
it needs ptrace rights: root or CAP_SYS_PTRACE). Prints the share of samples by room (the
verifier, each auth.service module, aiohttp, asyncio, prometheus_client, cryptography, json,
other) and the functions with the most samples of their own.

    python bench/serve_profile.py [--case valid|malformed|minimal] [--duration 8] [--tokens 20000]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import os
import secrets
import shutil
import subprocess
import tempfile
from collections import Counter

from auth.devtools.loadtest import mint_tokens
from bench.http import AUDIENCE, ISSUER, _wait_port, free_port, issuer_for, run_wrk, wait_ready, write_bodies

# First matching marker in a frame's file names its room.
ROOMS = (
    ("verifier/", "verifier"),
    ("auth/service/", "auth.service"),
    ("metrics/", "metrics (kubejoin)"),
    ("prometheus_client", "prometheus_client"),
    ("aiohttp/", "aiohttp"),
    ("asyncio/", "asyncio"),
    ("cryptography", "cryptography"),
    ("json/", "json"),
    ("logging/", "logging"),
)


def room(frame: str) -> str:
    for marker, name in ROOMS:
        if marker in frame:
            return name if name != "auth.service" else "auth.service." + frame.split("auth/service/")[1].split(".py")[0]
    return "other"


def summarize(raw: Path, top: int) -> None:
    """Each sample counts once for the innermost room among its frames (its self time by room),
    and once for each function at its top."""
    rooms: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        n = int(count)
        total += n
        rooms[room(frames[-1])] += n
        functions[frames[-1]] += n
    print(f"{total} samples; share by room (self time):")
    for name, n in rooms.most_common():
        print(f"  {100 * n / total:5.1f} %  {name}")
    print("functions with the most samples of their own:")
    for name, n in functions.most_common(top):
        print(f"  {100 * n / total:5.1f} %  {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", choices=["valid", "malformed", "minimal"], default="valid")
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists() or shutil.which("wrk") is None:
        print("needs py-spy (pip install py-spy) and wrk", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="kubejoin-profile-") as scratch:
        work = Path(scratch)
        key, _ = issuer_for(work, "bench")
        if args.case == "malformed":
            bodies = write_bodies(work / "bodies.jsonl", [f"not.a.{secrets.token_urlsafe(600)}" for _ in range(2000)])
        else:
            count = args.tokens if args.case == "valid" else 300  # the minimal endpoint only parses them
            tokens = mint_tokens(key.private_pem(), ISSUER, AUDIENCE, "loadtest", count, count, lambda _: None)
            bodies = write_bodies(work / "bodies.jsonl", tokens)
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.case == "minimal":
            command = [sys.executable, "-P", str(ROOT / "bench" / "minimal_server.py"), f"127.0.0.1:{port}"]
        else:
            (work / "config.yaml").write_text(
                f"cluster_name: {AUDIENCE}\nlisten: 127.0.0.1:{port}\ntokens_file: tokens.yaml\n"
            )
            command = [sys.executable, "-m", "auth", "serve", "--config", "config.yaml", "--log-level", "WARNING"]
        with (work / "join.log").open("wb") as log:
            server = subprocess.Popen(command, stdout=log, stderr=subprocess.DEVNULL, cwd=work, env=env)
        try:
            if args.case == "minimal":
                _wait_port(port, server)
            else:
                wait_ready(f"http://127.0.0.1:{port}/readyz", server)
            raw = work / "profile.txt"
            recorder = subprocess.Popen(
                [spy, "record", "--pid", str(server.pid), "--rate", "500", "--duration", str(args.duration - 1),
                 "--format", "raw", "--output", str(raw), "--nonblocking"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            result = run_wrk(port, bodies, argparse.Namespace(connections=args.connections, duration=args.duration))
            recorder.wait(60)
        finally:
            server.terminate()
            server.wait(60)
        print(f"{args.case}: {result['rps']:.0f} req/s (wrk -t1 -c{args.connections} -d{args.duration}s)")
        summarize(raw, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
