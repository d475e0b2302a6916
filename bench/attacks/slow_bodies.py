#!/usr/bin/env python3
"""Issue 12, item 1: slow bodies against real joins, on loopback.

`--sockets` connections from 127.0.0.2 each send join headers with `Content-Length: 1000` and one
body byte, then wait; whenever the server answers or closes one, it is opened again. Meanwhile
real joins (complete bodies, valid tokens) leave from 127.0.0.1 at `--rate` per second. Reports
the share of real joins that got a certificate and how many attacker requests were answered.

    python bench/attacks/slow_bodies.py [--sockets 1100] [--duration 25] [--rate 2.5] [--source DIR]

Bounded: at most --sockets connections, for --duration seconds, loopback only.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

import argparse
import asyncio
import json
import time
from collections import Counter
from multiprocessing import Process, Queue
from pathlib import Path

import aiohttp

from bench.attacks.harness import serve

HEAD = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"


async def attacker(port: int, deadline: float, answered: Counter[str]) -> None:
    while time.monotonic() < deadline:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.2", 0))
        except OSError:
            answered["connect_error"] += 1
            await asyncio.sleep(0.1)
            continue
        try:
            writer.write(HEAD)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), max(0.01, deadline - time.monotonic()))
            answered[line.split(b" ")[1].decode() if line.count(b" ") >= 2 else "closed"] += 1
        except (TimeoutError, OSError):
            pass
        finally:
            writer.close()


async def attack(port: int, sockets: int, duration: float) -> Counter[str]:
    answered: Counter[str] = Counter()
    deadline = time.monotonic() + duration
    await asyncio.gather(*(attacker(port, deadline, answered) for _ in range(sockets)))
    return answered


def attack_process(port: int, sockets: int, duration: float, out: Queue[dict[str, int]]) -> None:
    out.put(dict(asyncio.run(attack(port, sockets, duration))))


async def main(args: argparse.Namespace) -> dict[str, object]:
    async with serve(args.source) as server:
        bodies = [server.join_body(i) for i in range(int(args.rate * args.duration) + 1)]
        # the attacker runs in a process of its own, so it does not slow the real joins' pacing
        answers: Queue[dict[str, int]] = Queue()
        process = Process(target=attack_process, args=(server.port, args.sockets, args.duration, answers))
        process.start()
        deadline = time.monotonic() + args.duration
        await asyncio.sleep(2)  # let the attack take hold first
        results: Counter[str] = Counter()
        timeout = aiohttp.ClientTimeout(total=15)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def real(body: bytes) -> None:
                try:
                    async with session.post(
                        server.base + "/v1/join", data=body, headers={"Content-Type": "application/json"}
                    ) as response:
                        results[str(response.status)] += 1
                except (aiohttp.ClientError, TimeoutError):
                    results["error"] += 1

            joins = []
            for body in bodies:
                if time.monotonic() >= deadline:
                    break
                joins.append(asyncio.ensure_future(real(body)))
                await asyncio.sleep(1 / args.rate)
            await asyncio.gather(*joins)
        answered = await asyncio.to_thread(answers.get, True, args.duration + 30)
        process.join()
        overloaded = await server.metric("kubejoin_join_attempts_total", {"reason": "overloaded"})
        log_lines = sum(1 for _ in (server.work / "join.log").open("rb"))
    sent = sum(results.values())
    return {
        "real_joins": sent,
        "real_ok": results["200"],
        "real_ok_ratio": round(results["200"] / sent, 3) if sent else 0.0,
        "real_by_status": dict(results),
        "attacker_answers": dict(answered),
        "overloaded_refusals": overloaded,
        "join_log_lines": log_lines,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sockets", type=int, default=1100)
    parser.add_argument("--duration", type=float, default=25.0)
    parser.add_argument("--rate", type=float, default=2.5)
    parser.add_argument("--source", type=Path, help="run the server from this checkout (for a before/after)")
    print(json.dumps(asyncio.run(main(parser.parse_args())), indent=2))
