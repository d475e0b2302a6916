"""Helpers to run the join service in-process against a local issuer."""

from __future__ import annotations

import asyncio
import contextlib
import io
import re
from collections.abc import AsyncIterator
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
from tests.polling import wait_for

CLUSTER = "example.teleport.sh"


def token_doc(
    name: str = "kubernetes-token",
    *,
    issuer: LocalIssuer | None = None,
    kind: str = "static_jwks",
    allow: list[dict[str, Any]] | None = None,
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


def listening_port(line: bytes) -> int:
    """The port in a server's start-up line: a server told to listen on 127.0.0.1:0 says which
    port it got (`kubejoin serving joins on http://127.0.0.1:PORT`, Prometheus's `msg="Listening
    on" address=127.0.0.1:PORT`), so no test guesses a free port that another process may take."""
    found = re.search(rb"127\.0\.0\.1:(\d+)", line)
    if found is None:
        raise AssertionError(f"no 127.0.0.1:port in {line!r}")
    return int(found.group(1))


async def wait_until_ok(url: str, process: asyncio.subprocess.Process, what: str, within: float = 30.0) -> None:
    """Until url answers 200 (bounded); fails early if the process exits."""
    async with aiohttp.ClientSession() as session:

        async def ok() -> bool:
            if process.returncode is not None:
                raise AssertionError(f"{what} exited with {process.returncode}")
            async with session.get(url) as response:
                return response.status == 200

        await wait_for(ok, f"{what} answering 200 at {url}", within=within, every=0.05, ignoring=(aiohttp.ClientError,))


def bound_port(runner: web.AppRunner) -> int:
    """The port a runner's only listener got (it bound port 0)."""
    [address] = runner.addresses
    return int(address[1])


@contextlib.asynccontextmanager
async def served_as_serve(config: Config, audit: Any = None) -> AsyncIterator[web.AppRunner]:
    """The service on a port of 127.0.0.1 that it binds itself (`bound_port`) with `kubejoin
    serve`'s runner settings: aiohttp's test server cancels a handler whose client left, serve
    does not."""
    app = create_app(config, registry=CollectorRegistry(), audit=audit if audit is not None else AuditLog())
    runner = make_runner(app, config)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        yield runner
    finally:
        await runner.cleanup()
