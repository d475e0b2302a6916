#!/usr/bin/env python3
"""Tail latency under an open-loop load, and the garbage collector's pauses on both sides (issue 21).

Starts `kubejoin serve` (one process, a static_jwks join token) and drives it with `kubejoin
loadtest` in a process of its own, at --rate valid joins per second for --duration seconds, each
with a token of its own (every join verifies a signature and issues a certificate, and the
verified-token cache grows all along, as in a restart wave). Latency counts from when each request
was due. The server runs under a recorder that times every collection its garbage collector makes
(gc.callbacks); only those during the load count. Reports, per run:
  p50 / p99 / p99.9 / max      the client's latencies, and p99.9 / p50 (goal: at most 4)
  generator lag p99.9         how late requests left the client (its own tail, not the server's)
  client gc                   the client's longest collection and its gen-2 count during the run
  server gc                   the server's gen-2 collections during the load, and the longest
                              collection of any generation

    python bench/tail.py [--rate 800] [--duration 20] [--runs 3] [--source DIR] [--json]

--source DIR runs the server from another checkout (e.g. `git archive e90c027 | tar -x -C DIR`);
the client is always this checkout's `kubejoin loadtest`.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
sys.path.insert(0, str(ROOT))

import argparse
import json
import os
import signal
import statistics
import subprocess
import tempfile
import time
from typing import Any

from auth.devtools.loadtest import mint_tokens
from bench.http import AUDIENCE, ISSUER, free_port, issuer_for, wait_ready

# Runs `python -m auth ...` with every collection timed; the log is written at exit (SIGTERM
# drains and returns, so atexit runs). Wall-clock times, to compare with the load's window.
RECORDER = """
import atexit, gc, json, os, runpy, sys, time
log, started = [], [0.0]
def timed(phase, info):
    if phase == "start":
        started[0] = time.perf_counter()
    else:
        log.append((time.time(), info["generation"], time.perf_counter() - started[0]))
gc.callbacks.append(timed)
def write():
    with open(os.environ["KUBEJOIN_GC_LOG"], "w") as handle:
        json.dump(log, handle)
atexit.register(write)
sys.argv = ["kubejoin", *sys.argv[1:]]
runpy.run_module("auth", run_name="__main__", alter_sys=True)
"""


def one_run(work: Path, tokens_file: Path, count: int, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    (work / "config.yaml").write_text(f"cluster_name: {AUDIENCE}\nlisten: 127.0.0.1:{port}\ntokens_file: tokens.yaml\n")
    source = str(Path(args.source).resolve()) if args.source else str(ROOT)
    gc_log = work / "server-gc.json"
    env = {**os.environ, "PYTHONPATH": source, "KUBEJOIN_GC_LOG": str(gc_log)}
    command = [sys.executable, "-c", RECORDER, "serve", "--config", "config.yaml", "--log-level", "WARNING"]
    with (work / "join.log").open("wb") as log:
        server = subprocess.Popen(command, stdout=log, stderr=subprocess.DEVNULL, cwd=work, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/readyz", server)
        time.sleep(1)  # past start-up (its own collection and freeze)
        load = [
            sys.executable, "-m", "auth", "loadtest", "--server", f"http://127.0.0.1:{port}",
            "--token-name", "tail", "--tokens-file", str(tokens_file), "--pods", str(count),
            "--rate", str(args.rate), "--duration", f"{args.duration}s", "--connections", "64", "--json",
        ]  # fmt: skip
        began = time.time()
        done = subprocess.run(load, capture_output=True, text=True, check=True, cwd=ROOT, timeout=args.duration + 120)
        ended = time.time()
        summary = json.loads(done.stdout)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
    recorded = json.loads(gc_log.read_text())
    pauses = [(at, generation, seconds) for at, generation, seconds in recorded if began <= at <= ended]
    latency = summary["latency_ms"]
    return {
        "requests": summary["requests"],
        "by_status": summary["by_status"],
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
        "p99.9_ms": latency["p99.9"],
        "max_ms": latency["max"],
        "p99.9_over_p50": round(latency["p99.9"] / latency["p50"], 2),
        "generator_lag_p99.9_ms": summary["generator_lag_ms"]["p99.9"],
        "client_gc_longest_ms": max(summary["client_gc"]["longest_ms"]),
        "client_gen2": summary["client_gc"]["collections"][2],
        "server_gen2": sum(1 for _, generation, _ in pauses if generation == 2),
        "server_gen2_longest_ms": round(max((s for _, g, s in pauses if g == 2), default=0.0) * 1000, 2),
        "server_gc_longest_ms": round(max((s for _, _, s in pauses), default=0.0) * 1000, 2),
        "server_collections": len(pauses),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=800)
    parser.add_argument("--duration", type=int, default=20)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--source", help="run the server from the checkout in DIR")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    count = args.rate * args.duration
    with tempfile.TemporaryDirectory(prefix="kubejoin-tail-") as scratch:
        work = Path(scratch)
        key, _ = issuer_for(work, "tail")
        print(f"minting {count} unique RS256 tokens...", file=sys.stderr)
        tokens = mint_tokens(key.private_pem(), ISSUER, AUDIENCE, "loadtest", count, count, lambda _: None)
        tokens_file = work / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")
        runs = [one_run(work, tokens_file, count, args) for _ in range(args.runs)]
    medians = {name: statistics.median(run[name] for run in runs) for name in runs[0] if name != "by_status"}
    if args.json:
        print(json.dumps({"runs": runs, "median": medians}, indent=2))
        return 0
    print(
        f"{args.rate} valid joins/s for {args.duration} s, unique tokens, one kubejoin serve"
        f"{' from ' + args.source if args.source else ''}; Python {sys.version.split()[0]}"
    )
    names = [name for name in runs[0] if name != "by_status"]
    print(f"{'':26}" + "".join(f"{'run ' + str(i + 1):>10}" for i in range(len(runs))) + f"{'median':>10}")
    for name in names:
        print(f"{name:26}" + "".join(f"{run[name]:10g}" for run in runs) + f"{medians[name]:10g}")
    for index, run in enumerate(runs):
        print(f"run {index + 1} statuses: {run['by_status']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
