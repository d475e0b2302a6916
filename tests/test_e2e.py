"""End to end with real parts: an HTTPS issuer that requires a bearer token (as kube-apiserver does
for in_cluster), `kubejoin serve` and `kubejoin join` as subprocesses writing real files."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import signal
import stat
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from auth.devtools.devtls import make_loopback_tls
from auth.devtools.issuer import IssuerKey, LocalIssuer
from tests.polling import wait_for
from tests.service import (
    CLUSTER,
    listening_port,
    metric_value,
    read_line_containing,
    token_doc,
    wait_until_ok,
    write_tokens,
)
from tests.test_tokens import SEED

# Every test here starts `kubejoin serve` (or another kubejoin command) as a process.
pytestmark = pytest.mark.slow


async def run_cli(*argv: str, limit: float = 60) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth", *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), limit)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


class Cluster:
    def __init__(self, issuer: LocalIssuer, base: str, work: Path, process: asyncio.subprocess.Process) -> None:
        self.issuer, self.base, self.work, self.process = issuer, base, work, process

    async def join(self, namespace: str, account: str, out: Path) -> tuple[int, str, str]:
        """`kubejoin join` as a pod of namespace/account would run it, with its projected token."""
        token_file = self.work / f"{namespace}-{account}.jwt"
        token_file.write_text(self.issuer.mint(namespace, account, audiences=[CLUSTER]) + "\n")
        return await run_cli(
            "join",
            "--server",
            self.base,
            "--token-name",
            "kubernetes-token",
            "--sa-token-file",
            str(token_file),
            "--role",
            "App",
            "--out",
            str(out),
        )


@pytest.fixture
async def cluster(aiohttp_server: Any, tmp_path: Path) -> AsyncIterator[Cluster]:
    tls = make_loopback_tls(tmp_path)
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate()])
    issuer.bearer_token = issuer.mint("kubejoin", "kubejoin", audiences=["https://kubernetes.default.svc"])
    server = await aiohttp_server(issuer.app(), ssl=tls.server_context())
    (tmp_path / "sa-token").write_text(issuer.bearer_token)
    (tmp_path / "tokens.yaml").write_text(SEED)
    (tmp_path / "config.yaml").write_text(
        f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\ntokens_file: tokens.yaml\n"
        f"in_cluster:\n  api_server: https://127.0.0.1:{server.port}\n  ca_file: {tls.ca_file}\n"
        f"  token_file: {tmp_path / 'sa-token'}\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth",
        "serve",
        "--config",
        str(tmp_path / "config.yaml"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stderr is not None
        port = listening_port(await read_line_containing(process.stderr, b"serving joins on", 30))
        base = f"http://127.0.0.1:{port}"
        await wait_until_ok(base + "/readyz", process, "kubejoin serve")
    except BaseException:
        process.kill()
        raise
    yield Cluster(issuer, base, tmp_path, process)
    if process.returncode is None:
        process.kill()
        await process.wait()


async def test_pod_joins_and_gets_a_real_certificate(cluster: Cluster) -> None:
    out = cluster.work / "identity"
    code, _, stderr = await cluster.join("teleport-agent", "teleport-app-service", out)
    assert code == 0, stderr
    assert stat.S_IMODE(os.stat(out / "key.pem").st_mode) == 0o600
    certificate = x509.load_pem_x509_certificate((out / "cert.pem").read_bytes())
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    certificate.verify_directly_issued_by(ca)
    key = serialization.load_pem_private_key((out / "key.pem").read_bytes(), password=None)
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    assert key.public_key().public_bytes(serialization.Encoding.DER, public) == certificate.public_key().public_bytes(
        serialization.Encoding.DER, public
    )
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [
        f"spiffe://{CLUSTER}/ns/teleport-agent/sa/teleport-app-service"
    ]
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "App"
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    assert (
        ExtendedKeyUsageOID.CLIENT_AUTH in certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    )
    now = datetime.datetime.now(datetime.UTC)
    assert (
        certificate.not_valid_before_utc <= now < certificate.not_valid_after_utc <= now + datetime.timedelta(hours=1)
    )
    assert cluster.issuer.requests["/openid/v1/jwks"] >= 1  # keys came from the API server, with the bearer token
    # the join log line reaches stdout while the service runs (it is flushed twice a second)
    assert cluster.process.stdout is not None
    line = json.loads(await asyncio.wait_for(cluster.process.stdout.readline(), 10))
    assert (line["event"], line["reason"], line["pod"]) == ("join", "ok", "teleport-app-service-pod")


async def test_refused_join_exits_1_with_reason(cluster: Cluster) -> None:
    code, stdout, stderr = await cluster.join("teleport-agent", "debug-shell", cluster.work / "x")
    assert code == 1
    assert '"no_matching_allow_rule"' in stdout
    assert "teleport-agent:debug-shell is not allowed" in stderr
    assert not (cluster.work / "x" / "key.pem").exists()


async def test_sigterm_drains_the_request_in_flight(cluster: Cluster) -> None:
    from tests.service import join_body

    body = (
        __import__("json")
        .dumps(join_body(cluster.issuer.mint("teleport-agent", "teleport-app-service", audiences=[CLUSTER])))
        .encode()
    )
    port = int(cluster.base.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body[:10]
    )
    await writer.drain()

    async def body_awaited() -> bool:
        return await metric_value(cluster.base, "kubejoin_joins_in_flight") == 1

    await wait_for(body_awaited, "the handler waits for the rest of the body")
    cluster.process.send_signal(signal.SIGTERM)
    assert cluster.process.stderr is not None
    await read_line_containing(cluster.process.stderr, b"kubejoin stopping")
    assert cluster.process.returncode is None  # still draining
    writer.write(body[10:])
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert b" 200 " in head.split(b"\r\n")[0]
    # issue 12, item 8: while draining, the answer tells the client not to reuse the connection
    assert b"Connection: close" in head
    writer.close()
    assert await asyncio.wait_for(cluster.process.wait(), 30) == 0
    # nothing of the join log is lost at shutdown
    assert cluster.process.stdout is not None
    lines = [json.loads(line) for line in (await cluster.process.stdout.read()).splitlines()]
    assert [(line["event"], line["reason"]) for line in lines] == [("join", "ok")]


@contextlib.asynccontextmanager
async def serving(tmp_path: Path, extra_config: str) -> AsyncIterator[tuple[LocalIssuer, int, bytes]]:
    """`kubejoin serve` with one static_jwks join token; yields the issuer, the port it got and the
    line saying so. Stops it at the end and checks that it exits 0."""
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer, allow=[{"service_account": "teleport-agent:app"}]))
    (tmp_path / "config.yaml").write_text(
        f"cluster_name: {CLUSTER}\nlisten: 127.0.0.1:0\ntokens_file: tokens.yaml\n{extra_config}"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "auth", "serve", "--config", str(tmp_path / "config.yaml"), stderr=asyncio.subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        line = await read_line_containing(process.stderr, b"serving joins on", 30)
        yield issuer, listening_port(line), line
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 30) == 0


async def test_silent_connection_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, "limits:\n  idle_timeout: 1s\n") as (_, port, _line):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        started = time.monotonic()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the server, no bytes
        assert time.monotonic() - started < 5
        writer.close()


async def test_demo_tells_the_story() -> None:
    started = time.monotonic()
    code, stdout, stderr = await run_cli("demo")
    assert code == 0, stderr
    assert time.monotonic() - started < 10
    for expected in (
        "kind: token",
        "joined as system:serviceaccount:teleport-agent:teleport-app-service",
        "SAN URI:   spiffe://example.teleport.sh/ns/teleport-agent/sa/teleport-app-service",
        "HTTP 403 no_matching_allow_rule",
        'kubejoin_join_attempts_total{reason="ok",result="success",token="kubernetes-token"} 1.0',
        'kubejoin_join_attempts_total{reason="no_matching_allow_rule",result="failure",token="kubernetes-token"} 1.0',
        "payments/api-7c9d8's token: HTTP 201, authenticated: true",
        "username system:serviceaccount:payments:api, groups system:serviceaccounts, "
        "system:serviceaccounts:payments, system:authenticated",
        "the deleted pod's token: HTTP 201, authenticated: false",
        "error: pod_deleted: ",
        'kubejoin_token_reviews_total{reason="ok",result="success"} 1.0',
        'kubejoin_token_reviews_total{reason="pod_deleted",result="failure"} 1.0',
        'kubejoin_jwks_fetches_total{issuer="https://kubernetes.default.svc.cluster.local",result="success"} 1.0',
        # the second cluster, registered at run time: its pod joins, then is refused once deleted
        "eu-west-1 pod teleport-app-service-58f7c-eu1 joined as system:serviceaccount:teleport-agent:",
        "deleted, then: HTTP 401 pod_deleted: ",
        "requests to eu-west-1's API server for this refusal: 0",
        'kubejoin_binding_objects{cluster="eu-west-1",kind="pod"} 0.0',
        # the label rule: refused with the reason, relabelled, the same token joins
        "HTTP 403 no_matching_allow_rule: service account teleport-agent:teleport-app-service is not allowed by "
        'join token prod-pods-token: rule 1: pod label tier is "canary", not "prod"',
        "PATCH /api/v1/namespaces/teleport-agent/pods/teleport-app-service-canary: HTTP 200",
        "requests to the API server for both joins (the PATCH aside): 0",
        'kubejoin_join_attempts_total{reason="ok",result="success",token="prod-pods-token"} 1.0',
    ):
        assert expected in stdout


async def test_https_with_a_certificate_from_kubejoins_own_ca(tmp_path: Path) -> None:
    async with serving(tmp_path, "tls:\n  dns_names: [localhost]\n") as (issuer, port, line):
        assert b"https://" in line
        token_file = tmp_path / "pod-token"
        token_file.write_text(issuer.mint("teleport-agent", "app", audiences=[CLUSTER]))
        argv = [
            "join",
            "--server",
            f"https://localhost:{port}",
            "--token-name",
            "kubernetes-token",
            "--sa-token-file",
            str(token_file),
            "--role",
            "App",
            "--out",
            str(tmp_path / "id"),
        ]
        code, _, stderr = await run_cli(*argv)
        assert code == 2 and "certificate" in stderr.lower()  # the CA is not trusted yet: no join
        code, _, stderr = await run_cli(*argv, "--ca-file", str(tmp_path / "ca.pem"))
        assert code == 0, stderr
        assert (tmp_path / "id" / "ca.pem").read_bytes() == (tmp_path / "ca.pem").read_bytes()


async def test_header_trickle_is_cut_off(tmp_path: Path) -> None:
    async with serving(tmp_path, "limits:\n  idle_timeout: 1s\n") as (_, port, _line):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /v1/join HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        closed_after = None
        for index in range(40):  # one header line every 0.25 s: never a complete request
            try:
                writer.write(b"X-Slow-%d: y\r\n" % index)
                await writer.drain()
                if await asyncio.wait_for(reader.read(100), 0.25) == b"":
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
            except ConnectionError:
                closed_after = time.monotonic() - started
                break
        writer.close()
        assert closed_after is not None and closed_after < 5


@pytest.mark.parametrize("sent", [b"", b"\x16\x03\x01\x02\x00\x01"], ids=["silent", "half-client-hello"])
async def test_https_handshake_is_bounded_by_idle_timeout(tmp_path: Path, sent: bytes) -> None:
    """Issue 12, item 8: before, asyncio's 60 s TLS handshake timeout applied."""
    config = "tls:\n  dns_names: [localhost]\nlimits:\n  idle_timeout: 1s\n"
    async with serving(tmp_path, config) as (_, port, line):
        assert b"https://" in line
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(sent)
        started = time.monotonic()
        with contextlib.suppress(ConnectionError):
            assert await asyncio.wait_for(reader.read(), 20) == b""
        assert time.monotonic() - started < 5
        writer.close()
