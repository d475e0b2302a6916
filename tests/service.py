"""Helpers to run the join service in-process against a local issuer."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import io
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import LocalIssuer
from auth.runtime import make_runner
from auth.service.config import Config, parse_config
from auth.service.server import create_app

CLUSTER = "example.teleport.sh"


def token_doc(
    name: str = "kubernetes-token",
    *,
    issuer: LocalIssuer | None = None,
    kind: str = "static_jwks",
    allow: list[dict[str, str]] | None = None,
    roles: list[str] | None = None,
    expires: str | None = None,
    join_method: str = "kubernetes",
) -> dict[str, Any]:
    """A join token document; static_jwks tokens carry the issuer's JWKS, oidc ones its URL."""
    kubernetes: dict[str, Any] = {"type": kind, "allow": allow or [{"service_account": "teleport-agent:app"}]}
    if join_method != "kubernetes":
        pass
    elif kind == "static_jwks":
        assert issuer is not None
        kubernetes["static_jwks"] = {"jwks": issuer.jwks_document().decode(), "issuer": issuer.issuer}
    elif kind == "oidc":
        assert issuer is not None
        kubernetes["oidc"] = {"issuer": issuer.issuer, "insecure_allow_http_issuer": True}
    metadata: dict[str, Any] = {"name": name}
    if expires:
        metadata["expires"] = expires
    spec: dict[str, Any] = {"roles": roles or ["App"], "join_method": join_method}
    if join_method == "kubernetes":
        spec["kubernetes"] = kubernetes
    return {"kind": "token", "version": "v2", "metadata": metadata, "spec": spec}


def write_tokens(path: Path, *documents: dict[str, Any]) -> None:
    path.write_text(yaml.safe_dump_all(documents))


def make_config(directory: Path, **overrides: Any) -> Config:
    document: dict[str, Any] = {"cluster_name": CLUSTER, "tokens_file": "tokens.yaml"}
    document.update(overrides)
    return parse_config(document, directory)


def public_key_pem(kind: str = "P-256") -> str:
    key: ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    if kind == "P-256":
        key = ec.generate_private_key(ec.SECP256R1())
    elif kind == "P-384":
        key = ec.generate_private_key(ec.SECP384R1())
    elif kind == "P-521":
        key = ec.generate_private_key(ec.SECP521R1())
    elif kind == "Ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        key = rsa.generate_private_key(public_exponent=65537, key_size=int(kind.removeprefix("RSA")))
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


_P256 = public_key_pem()


def join_body(
    id_token: str, *, token_name: str = "kubernetes-token", role: object = "App", **extra: Any
) -> dict[str, Any]:
    return {"token_name": token_name, "id_token": id_token, "role": role, "public_key": _P256, **extra}


def pod_token(issuer: LocalIssuer, namespace: str = "teleport-agent", account: str = "app", **options: Any) -> str:
    options.setdefault("audiences", [CLUSTER])
    return issuer.mint(namespace, account, **options)


class AuditLog(io.StringIO):
    """Captures the service's JSON join lines."""

    def records(self) -> list[dict[str, Any]]:
        import json

        return [json.loads(line) for line in self.getvalue().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_for(
    condition: Callable[[], bool | Awaitable[bool]], what: str = "condition", within: float = 10.0
) -> None:
    """Returns as soon as condition() holds; fails after `within` seconds. For states that
    signal nothing one could await (another task's counter, another process's metrics), so they
    are checked every 10 ms instead of sleeping a guessed time."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = condition()
        if await result if inspect.isawaitable(result) else result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not reached within {within} s")
        await asyncio.sleep(0.01)


async def metric_value(base: str, name: str) -> float | None:
    """One unlabelled sample from a running kubejoin's /metrics."""
    async with aiohttp.ClientSession() as session, session.get(base + "/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return None


async def read_line_containing(stream: asyncio.StreamReader, text: bytes, within: float = 10.0) -> bytes:
    """Reads a process's output until a line containing text (for at most `within` seconds)."""
    async with asyncio.timeout(within):
        while line := await stream.readline():
            if text in line:
                return line
    raise AssertionError(f"the output ended without a line containing {text!r}")


async def wait_until_ok(url: str, process: asyncio.subprocess.Process, what: str) -> None:
    """Polls url until it answers 200 (bounded: 30 s); fails early if the process exits."""
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            try:
                async with session.get(url) as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if process.returncode is not None:
                raise AssertionError(f"{what} exited with {process.returncode}")
            await asyncio.sleep(0.1)
    raise AssertionError(f"{what} did not become ready")


@contextlib.asynccontextmanager
async def served_as_serve(config: Config, port: int, audit: Any = None) -> AsyncIterator[web.AppRunner]:
    """The service on 127.0.0.1:`port` with `kubejoin serve`'s runner settings: aiohttp's test
    server cancels a handler whose client left, serve does not."""
    app = create_app(config, registry=CollectorRegistry(), audit=audit if audit is not None else AuditLog())
    runner = make_runner(app, config)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", port).start()
        yield runner
    finally:
        await runner.cleanup()
