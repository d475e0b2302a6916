#!/usr/bin/env python3
"""Issue 20, item 3: junk TokenReviews against the JWS header memo, on loopback.

Sends --reviews TokenReviews (anyone may ask: no `reviewers`), each naming one of --sets
audience sets (each set gets a verifier of its own, with its own header memo) and carrying a
made-up token: a well-formed header of about 13 KB (alg ES256, a kid the issuer does not have, a
padding member), a small payload, a junk signature. Every one is refused (unknown_key). Reports the
server's resident memory before the flood, after it, and after a valid review that follows (which
must still be authenticated).

    python bench/attacks/header_memo.py [--reviews 12288] [--sets 24] [--concurrency 16] [--source DIR]

Before the fix each memo kept the first 256 headers it saw (13 KB each, per audience set); after
it, only headers whose token's signature verified are kept.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository root

import argparse
import asyncio
import base64
import json
import secrets
import time
from typing import Any

import aiohttp

from bench.attacks.harness import rss_mib, serve
from bench.http import AUDIENCE

REVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def junk_token() -> str:
    header = {"alg": "ES256", "kid": secrets.token_urlsafe(24), "pad": secrets.token_urlsafe(7200)}
    payload = {"iss": "x", "sub": "y"}
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(secrets.token_bytes(64))}"


def review(token: str, audiences: list[str] | None) -> bytes:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return json.dumps({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": spec}).encode()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reviews", type=int, default=12288)
    parser.add_argument("--sets", type=int, default=24)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--source", type=Path, help="run the server from the checkout in DIR")
    args = parser.parse_args()
    async with serve(args.source, token_review=True) as server:
        pid = server.process.pid
        url = server.base + REVIEW_PATH
        refused: dict[str, int] = {}
        async with aiohttp.ClientSession() as session:
            # one valid review per audience set first: every verifier exists before the flood
            valid = server.issuer.mint("team-a", "agent", audiences=[AUDIENCE], lifetime=900)
            for index in range(args.sets):
                async with session.post(url, data=review(valid, [AUDIENCE, f"set-{index}"])) as response:
                    assert response.status == 201, await response.text()
            await asyncio.sleep(0.5)
            before = rss_mib(pid)
            queue: asyncio.Queue[int] = asyncio.Queue()
            for index in range(args.reviews):
                queue.put_nowait(index)

            async def worker() -> None:
                while not queue.empty():
                    index = queue.get_nowait()
                    body = review(junk_token(), [AUDIENCE, f"set-{index % args.sets}"])
                    async with session.post(url, data=body) as response:
                        answer = await response.json()
                    error = answer.get("status", {}).get("error", "?").split(":")[0]
                    refused[error] = refused.get(error, 0) + 1

            started = time.monotonic()
            await asyncio.gather(*(worker() for _ in range(args.concurrency)))
            elapsed = time.monotonic() - started
            await asyncio.sleep(0.5)
            after = rss_mib(pid)
            async with session.post(url, data=review(valid, [AUDIENCE, "set-0"])) as response:
                status = (await response.json())["status"]
            final = rss_mib(pid)
    print(
        json.dumps(
            {
                "reviews": args.reviews,
                "audience_sets": args.sets,
                "seconds": round(elapsed, 1),
                "refusals": refused,
                "rss_mib_before": round(before, 1),
                "rss_mib_after": round(after, 1),
                "rss_mib_growth": round(after - before, 1),
                "valid_review_after_authenticated": status.get("authenticated"),
                "rss_mib_final": round(final, 1),
                "source": str(args.source or "this checkout"),
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
