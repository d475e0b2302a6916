"""Issue 12, item 1: a body that is slow to arrive holds no join slot, and one address holds at
most `limits.max_pending_per_address` requests whose body is still arriving."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.server import SERVICE, create_app
from tests.polling import wait_for
from tests.service import (
    AuditLog,
    bound_port,
    join_body,
    make_config,
    pod_token,
    served_as_serve,
    token_doc,
    write_tokens,
)

Client = TestClient[web.Request, web.Application]
HEAD = b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])


async def start(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer, **limits: Any) -> Client:
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    app = create_app(make_config(tmp_path, limits=limits), registry=CollectorRegistry(), audit=AuditLog())
    client: Client = await aiohttp_client(app)
    return client


def port_of(client: Client) -> int:
    assert client.port is not None
    return client.port


async def slow_body(port: int, source: str = "127.0.0.1") -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Join headers and one byte of a 1000-byte body, and nothing more."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.write(HEAD)
    await writer.drain()
    return reader, writer


async def test_slow_bodies_take_no_join_slot(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    client = await start(tmp_path, aiohttp_client, issuer, max_in_flight=1, max_pending_per_address=8)
    admission = client.app[SERVICE].admission
    held = [await slow_body(port_of(client)) for _ in range(4)]
    await wait_for(lambda: admission.pending("127.0.0.1") == 4)
    assert admission.in_flight == 0
    # before the fix each slow body held one of the max_in_flight slots: this join got 429
    response = await client.post("/v1/join", json=join_body(pod_token(issuer)))
    assert response.status == 200
    for _, writer in held:
        writer.close()
    await wait_for(lambda: admission.pending("127.0.0.1") == 0)


async def test_one_address_cannot_hold_more_than_its_share(
    tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer
) -> None:
    client = await start(tmp_path, aiohttp_client, issuer, max_pending_per_address=2)
    service = client.app[SERVICE]
    held = [await slow_body(port_of(client), "127.0.0.2") for _ in range(2)]
    await wait_for(lambda: service.admission.pending("127.0.0.2") == 2)

    reader, writer = await slow_body(port_of(client), "127.0.0.2")
    head = await asyncio.wait_for(reader.read(4096), 5)
    assert head.startswith(b"HTTP/1.1 429 ")
    assert b"Connection: close" in head and b"Retry-After: 1" in head and b'"overloaded"' in head
    writer.close()

    # another address is not affected
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as session:
        url = str(client.make_url("/v1/join"))
        async with session.post(url, json=join_body(pod_token(issuer))) as response:
            assert response.status == 200
    labels = {"token": "unknown", "result": "failure", "reason": "overloaded"}
    assert service.metrics.registry.get_sample_value("kubejoin_join_attempts_total", labels) == 1
    for _, each in held:
        each.close()
    await wait_for(lambda: service.admission.pending("127.0.0.2") == 0)


@pytest.mark.parametrize(
    "head",
    [
        b"POST /nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{",
        b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 1000\r\n\r\n{",
        HEAD.replace(b"Host: x", b"Host: overloaded"),
    ],
    ids=["404", "415", "429"],
)
async def test_abandoned_requests_are_let_go(tmp_path: Path, issuer: LocalIssuer, head: bytes) -> None:
    """Issue 12, item 2: a client that sends headers and one body byte, is refused and leaves must
    not leave its request in memory for aiohttp's default lingering time (10 s)."""
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    overloaded = b"overloaded" in head
    config = make_config(tmp_path, limits={"max_pending_per_address": 1} if overloaded else {})
    async with served_as_serve(config) as runner:
        port = bound_port(runner)
        held = await slow_body(port) if overloaded else None  # takes the address's only place
        if held is not None:
            await wait_for(lambda: runner.app[SERVICE].admission.pending("127.0.0.1") == 1, "the held body")
        before = asyncio.all_tasks()  # the service's own, the held connection's, the test's

        def left() -> set[asyncio.Task[Any]]:
            return asyncio.all_tasks() - before

        for _ in range(20):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(head)
            assert (await asyncio.wait_for(reader.readline(), 5)).split(b" ")[1] in (b"404", b"415", b"429")
            writer.close()
        # every refused request's handler (the task aiohttp runs for its connection) ends within
        # LINGERING_TIME of the client leaving
        assert runner.server is not None
        await wait_for(
            lambda: not left(),
            "every refused connection's handler ended",
            within=5,
            detail=lambda: f"{len(left())} left, e.g. {min(map(repr, left()), default=None)}",
        )
        if held is not None:
            held[1].close()
