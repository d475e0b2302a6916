"""The audit log: bounded under floods (JunkLimiter, and the service using it with a hand-moved
clock), and lines of bounded size. Writing lines to stdout: test_joinlog.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service import auditlog
from auth.service.auditlog import UNVERIFIED_REFUSALS, JunkLimiter
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
    assert limiter.summary(101) == auditlog.Suppressed(second=100, counts={"bad_signature": 7})
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
    client.app[SERVICE].audit.flush()
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


@pytest.mark.parametrize(
    "message",
    ["x" * 60000, "\u2603\u0000" * 30000, "\U0001f600" * 20000],
    ids=["ascii", "escaped", "astral"],
)
def test_no_line_exceeds_8_kib_and_each_stays_json(message: str, clock: Clock) -> None:
    """Issue 20, item 1: a long field is cut with a marker; the other fields and JSON stay whole."""
    stream = AuditLog()
    audit = auditlog.AuditLog(stream, clock=clock, worker=3)
    record = {"event": "join", "reason": "bad_request", "remote": "127.0.0.1", "message": message}
    assert audit.write(record)
    [line] = stream.getvalue().splitlines(keepends=True)
    assert len(line.encode()) <= auditlog.MAX_LINE and line.endswith("\n")
    written = json.loads(line)
    assert written["message"].startswith(message[:500])
    assert written["message"].endswith(f" of {len(message):,} characters]")
    assert {k: v for k, v in written.items() if k != "message"} == {
        "event": "join",
        "reason": "bad_request",
        "remote": "127.0.0.1",
        "time": written["time"],
        "worker": 3,
    }


def test_a_line_of_many_long_fields_is_cut_field_by_field(clock: Clock) -> None:
    record: dict[str, Any] = {"event": "token_review", **{f"f{n}": "y" * 3000 for n in range(10)}, "n": 7}
    line = auditlog.bounded_line(record)
    assert len(line) < auditlog.MAX_LINE
    written = json.loads(line)
    assert written["event"] == "token_review" and written["n"] == 7
    assert sum("...[cut " in str(value) for value in written.values()) >= 7
    short = {"event": "join", "message": "fits"}
    assert auditlog.bounded_line(short) == '{"event":"join","message":"fits"}'  # the usual case: as it was
