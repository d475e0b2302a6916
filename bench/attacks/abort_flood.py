#!/usr/bin/env python3
"""Issue 12, item 2: requests abandoned after one body byte, on loopback.

`--connections` loops each open a connection, send headers with `Content-Length: 1000` and one
body byte for a path that kubejoin refuses without reading the body (404 unknown route, 415 wrong
Content-Type, a join whose body never completes), then leave (close, or --abort rst). Reports the server's resident
memory idle and at its peak during the flood.

    python bench/attacks/abort_flood.py [--connections 20] [--duration 12] [--source DIR]
        [--limits JSON --hold]      # for the 429 path: one held join and limits that refuse the rest

The 429 path before item 1's fix: `--limits '{"max_in_flight": 1}' --hold`; after it (slow bodies
hold no slot): `--limits '{"max_pending_per_address": 1}' --hold`.

Bounded: at most --connections sockets at once, for --duration seconds, loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

import argparse
import asyncio
import json
import socket
import struct
import time
from pathlib import Path

from bench.attacks.harness import rss_mib, serve

REQUESTS = [
    b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
    b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{",
    b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
]


async def flood(port: int, index: int, deadline: float, rst: bool) -> int:
    sent = 0
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.01)
            continue
        writer.write(REQUESTS[(index + sent) % len(REQUESTS)])
        await writer.drain()
        await asyncio.sleep(0.001)
        if rst:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            writer.transport.abort()
        else:
            writer.close()
        sent += 1
    return sent


async def main(args: argparse.Namespace) -> dict[str, object]:
    async with serve(args.source, json.loads(args.limits) if args.limits else None) as server:
        if args.hold:  # one join whose body never ends: with tight limits, joins then get 429
            _, holder = await asyncio.open_connection("127.0.0.1", server.port)
            holder.write(REQUESTS[2])
        await asyncio.sleep(1)
        idle = rss_mib(server.process.pid)
        deadline = time.monotonic() + args.duration
        rst = args.abort == "rst"
        tasks = [asyncio.ensure_future(flood(server.port, i, deadline, rst)) for i in range(args.connections)]
        peak = idle
        while time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            peak = max(peak, rss_mib(server.process.pid))
        sent = sum(await asyncio.gather(*tasks))
        peak = max(peak, rss_mib(server.process.pid))
        alive = server.process.returncode is None
    return {
        "requests": sent,
        "rss_idle_mib": round(idle, 1),
        "rss_peak_mib": round(peak, 1),
        "growth_mib": round(peak - idle, 1),
        "server_alive": alive,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--connections", type=int, default=20)
    parser.add_argument("--duration", type=float, default=12.0)
    parser.add_argument("--limits", help='the config\'s limits as JSON, e.g. {"max_in_flight": 1}')
    parser.add_argument("--hold", action="store_true", help="keep one join body open all along")
    parser.add_argument("--abort", choices=["rst", "fin"], default="fin", help="how the client leaves")
    parser.add_argument("--source", type=Path, help="run the server from this checkout (for a before/after)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
