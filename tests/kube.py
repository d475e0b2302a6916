"""A fake cluster (auth.devtools.kubeapi over real TLS on loopback) and kubejoin in front of it
with `binding.mode: watch`, for the binding tests."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from auth.devtools.devtls import LoopbackTLS, make_loopback_tls
from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.devtools.kubeapi import FakeKubeAPI
from auth.service.server import SERVICE, create_app
from tests.polling import wait_for
from tests.service import CLUSTER, AuditLog, make_config, token_doc, write_tokens
from verifier.k8s.binding import LiveBinding

Client = TestClient[web.Request, web.Application]
BEARER = "kubejoin-own-token"


@dataclass
class FakeCluster:
    api: FakeKubeAPI
    url: str
    tls: LoopbackTLS
    token_file: Path

    def mint(self, namespace: str, pod: str, **options: Any) -> str:
        options.setdefault("audiences", [CLUSTER])
        return self.api.mint(namespace, pod, **options)


async def start_cluster(directory: Path, aiohttp_server: Callable[..., Any]) -> FakeCluster:
    tls = make_loopback_tls(directory)
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    api = FakeKubeAPI(issuer, token=BEARER, bookmark_every=0.2)
    server: TestServer = await aiohttp_server(api.app(), ssl=tls.server_context())
    token_file = directory / "sa-token"
    token_file.write_text(BEARER)
    return FakeCluster(api, f"https://127.0.0.1:{server.port}", tls, token_file)


def in_cluster(cluster: FakeCluster) -> dict[str, str]:
    return {"api_server": cluster.url, "ca_file": str(cluster.tls.ca_file), "token_file": str(cluster.token_file)}


async def start_kubejoin(
    directory: Path,
    aiohttp_client: Callable[..., Any],
    cluster: FakeCluster,
    *,
    synced: bool = True,
    binding: dict[str, Any] | None = None,
    idle_timeout: float | None = None,
    tokens: list[dict[str, Any]] | None = None,
    audit: AuditLog | None = None,
    **overrides: Any,
) -> Client:
    """kubejoin with one in_cluster join token allowing teleport-agent:app; by default returns once
    the binding has listed everything and its watches are open. `idle_timeout` stands in for
    binding.watch_idle_timeout, whose smallest value (90 s) no test can wait for. `tokens`: other
    join token documents than that one."""
    write_tokens(directory / "tokens.yaml", *(tokens or [token_doc(kind="in_cluster")]))
    overrides.setdefault("in_cluster", in_cluster(cluster))
    config = make_config(directory, binding=binding or {"mode": "watch"}, **overrides)
    app = create_app(config, registry=CollectorRegistry(), audit=audit or AuditLog(), reload_interval=0.05)
    live = app[SERVICE].binding
    assert live is not None
    for reflector in live.reflectors.values():
        reflector.backoff = (0.01, 0.05)  # failures retry at once in tests
        if idle_timeout is not None:
            reflector.idle_timeout = idle_timeout
    client: Client = await aiohttp_client(app)
    if synced:
        async with asyncio.timeout(10):
            await live.wait_synced()
        await wait_for(lambda: cluster.api.watching == len(live.reflectors), "the watches")
    return client


def binding_of(client: Client) -> LiveBinding:
    live = client.app[SERVICE].binding
    assert live is not None
    return live
