"""kubejoin join --renew: keeps re-joining before the certificate expires, re-reading the token."""

from __future__ import annotations

import asyncio
import random
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from auth.agent.client import renewal_delay, retry_delay, write_atomically
from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.server import create_app
from tests.service import CLUSTER, AuditLog, make_config, token_doc, write_tokens


@pytest.mark.slow
async def test_renew_rejoins_with_the_rotated_token(tmp_path: Path, aiohttp_client: Any) -> None:
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    audit = AuditLog()
    app = create_app(make_config(tmp_path, certificate_ttl="2s"), registry=CollectorRegistry(), audit=audit)
    client = await aiohttp_client(app)
    token_file = tmp_path / "token"
    token_file.write_text(issuer.mint("teleport-agent", "app", audiences=[CLUSTER], pod="first"))
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "auth",
        "join",
        "--server",
        str(client.make_url("")),
        "--token-name",
        "kubernetes-token",
        "--sa-token-file",
        str(token_file),
        "--role",
        "App",
        "--out",
        str(tmp_path / "id"),
        "--renew",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stderr is not None
    try:
        assert b"joined as" in await asyncio.wait_for(process.stderr.readline(), 30)
        first_cert = (tmp_path / "id" / "cert.pem").read_bytes()
        # the kubelet rotates the projected token: the next join must present the new one
        write_atomically(
            str(token_file), issuer.mint("teleport-agent", "app", audiences=[CLUSTER], pod="second").encode(), 0o600
        )
        assert b"joined as" in await asyncio.wait_for(process.stderr.readline(), 30)
        assert (tmp_path / "id" / "cert.pem").read_bytes() != first_cert
        assert [record["pod"] for record in audit.records()] == ["first", "second"]
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 30) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def test_write_atomically_leaves_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    write_atomically(str(target), b"secret", 0o600)
    assert target.read_bytes() == b"secret" and (target.stat().st_mode & 0o777) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]  # no temporary file left behind


def test_renewals_and_retries_are_spread() -> None:
    """Issue 12, item 8: before, every pod renewed at exactly 2/3 of its certificate's lifetime and
    retried after exactly 2, 4, 8... s: a fleet started together stayed in step."""
    rng = random.Random(12)
    renewals = [renewal_delay(3600, rng) for _ in range(1000)]
    assert 1800 <= min(renewals) < 1850 and 2830 < max(renewals) <= 2880
    assert len({round(r) for r in renewals}) > 500
    retries = [retry_delay(8, rng) for _ in range(1000)]
    assert 4 <= min(retries) < 4.1 and 7.9 < max(retries) <= 8
    assert renewal_delay(0.5, rng) == 1.0  # never a busy loop
