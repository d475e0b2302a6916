"""The join log under floods (JunkLimiter, and the service using it with a hand-moved clock) and
whole-line writes (WholeLineWriter)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.auditlog import UNVERIFIED_REFUSALS, JunkLimiter, WholeLineWriter
from auth.service.errors import JOIN_REASONS
from auth.service.server import SERVICE, create_app
from tests.conftest import Clock
from tests.service import AuditLog, join_body, make_config, pod_token, token_doc, write_tokens


def test_limiter_admits_the_first_few_per_reason_and_second() -> None:
    limiter = JunkLimiter(per_second=3)
    admitted = [limiter.admit("bad_signature", 100) for _ in range(10)]
    assert admitted == [True] * 3 + [False] * 7
    assert limiter.admit("malformed_token", 100)  # each reason has its own allowance
    assert limiter.summary(100) is None  # the second is not over
    assert limiter.summary(101) == (100, {"bad_signature": 7})
    assert limiter.summary(102) is None  # reported once
    assert limiter.admit("bad_signature", 101)  # a new second, a new allowance


def test_limiter_without_suppression_reports_nothing() -> None:
    limiter = JunkLimiter(per_second=3)
    assert all(limiter.admit("unknown_key", 5) for _ in range(3))
    assert limiter.summary(6) is None


def test_unverified_refusals_are_join_reasons_decided_before_a_signature() -> None:
    assert UNVERIFIED_REFUSALS.issubset(JOIN_REASONS)
    # refusals of a verified identity and internal errors are never limited
    for kept in (
        "ok",
        "no_matching_allow_rule",
        "role_not_allowed",
        "token_expired",
        "invalid_issuer",
        "internal_error",
    ):
        assert kept not in UNVERIFIED_REFUSALS


def test_writer_writes_whole_lines_at_most_limit_bytes_each(monkeypatch: pytest.MonkeyPatch) -> None:
    writes: list[bytes] = []
    real_write = os.write

    def recording(fd: int, data: Any) -> int:
        writes.append(bytes(data))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", recording)  # the module object auditlog writes through
    reader, writer_fd = os.pipe()
    try:
        writer = WholeLineWriter(writer_fd, limit=100)
        lines = [f'{{"n":{i},"pad":"{"x" * (i % 40)}"}}\n' for i in range(50)]
        for line in lines:
            writer.write(line)
        writer.flush()
        assert writes and all(len(chunk) <= 100 and chunk.endswith(b"\n") for chunk in writes)
        assert os.read(reader, 1 << 16).decode() == "".join(lines)
    finally:
        os.close(reader)
        os.close(writer_fd)


Client = TestClient[Any, Any]


@pytest.fixture
async def flooded(tmp_path: Path, aiohttp_client: Callable[..., Any], clock: Clock) -> tuple[Client, LocalIssuer]:
    issuer = LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer, allow=[{"service_account": "teleport-agent:app"}]))
    audit = AuditLog()
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=audit, clock=clock)
    client: Client = await aiohttp_client(app)
    client.audit = audit  # type: ignore[attr-defined]
    return client, issuer


async def test_a_junk_flood_is_logged_as_a_few_lines_and_a_count(
    flooded: tuple[Client, LocalIssuer], clock: Clock
) -> None:
    client, issuer = flooded
    audit: AuditLog = client.audit  # type: ignore[attr-defined]
    for _ in range(40):
        assert (await client.post("/v1/join", json=join_body("not.a.jwt"))).status == 401
    for _ in range(8):  # verified identities: every one in full, however many
        assert (await client.post("/v1/join", json=join_body(pod_token(issuer)))).status == 200
        other = pod_token(issuer, account="intruder")
        assert (await client.post("/v1/join", json=join_body(other))).status == 403
    clock.advance(1.0)
    client.app[SERVICE].join.flush_audit()
    records = audit.records()
    by_reason = [r["reason"] for r in records if r["event"] == "join"]
    assert by_reason.count("malformed_token") == 5
    assert by_reason.count("ok") == 8
    assert by_reason.count("no_matching_allow_rule") == 8
    summaries = [r for r in records if r["event"] == "join_refusals_suppressed"]
    assert [(s["suppressed"], s["total"]) for s in summaries] == [({"malformed_token": 35}, 35)]
    # every attempt is counted all the same
    registry = client.app[SERVICE].metrics.registry
    labels = {"token": "kubernetes-token", "result": "failure", "reason": "malformed_token"}
    assert registry.get_sample_value("kubejoin_join_attempts_total", labels) == 40
