#!/usr/bin/env python3
"""The baseline for bench/http.py: a minimal aiohttp POST endpoint with kubejoin's server settings
(one process, no access log, same body limit), which parses the JSON body and answers JSON.
Run it with python -P: from bench/, bench/http.py would shadow the standard http package."""

from __future__ import annotations

import sys

from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    body = await request.json()
    return web.json_response({"ok": True, "fields": len(body)})


def main() -> None:
    host, port = sys.argv[1].rsplit(":", 1)
    app = web.Application(client_max_size=64 * 1024)
    app.router.add_post("/v1/join", handle)
    web.run_app(app, host=host, port=int(port), access_log=None, print=None, keepalive_timeout=15)


if __name__ == "__main__":
    main()
