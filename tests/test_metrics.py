"""Metrics read through the registry after real joins and refusals; exposition formats; promtool
lint of a real scrape; bounded label values under a flood of junk."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import subprocess
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer, sign_token
from auth.service.errors import JOIN_REASONS
from auth.service.server import SERVICE, create_app
from metrics import Metrics
from tests.service import CLUSTER, AuditLog, join_body, make_config, pod_token, token_doc, write_tokens
from tests.test_binding import BINDING_CODES

Client = TestClient[Any, Any]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])


@pytest.fixture
async def client(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> Client:
    write_tokens(
        tmp_path / "tokens.yaml",
        token_doc(issuer=issuer),
        token_doc("db", issuer=issuer, roles=["Db"], allow=[{"service_account": "db:agent"}]),
    )
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog())
    result: Client = await aiohttp_client(app)
    return result


def value(client: Client, name: str, **labels: str) -> float:
    return client.app[SERVICE].metrics.registry.get_sample_value(name, labels) or 0.0


def attempt_series(client: Client) -> dict[tuple[str, str, str], float]:
    """Every kubejoin_join_attempts_total series with its value."""
    series = {}
    for family in client.app[SERVICE].metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "kubejoin_join_attempts_total":
                series[(sample.labels["token"], sample.labels["result"], sample.labels["reason"])] = sample.value
    return series


async def test_configured_tokens_start_at_zero(client: Client) -> None:
    assert attempt_series(client) == {("kubernetes-token", "success", "ok"): 0.0, ("db", "success", "ok"): 0.0}
    assert value(client, "kubejoin_join_tokens") == 2


async def test_each_attempt_lands_in_its_series_and_only_there(client: Client, issuer: LocalIssuer) -> None:
    good = pod_token(issuer)
    attempts = [
        (join_body(good), "kubernetes-token", "ok"),
        (join_body(good, token_name="db", role="Db"), "db", "no_matching_allow_rule"),
        (join_body(good, role="Db"), "kubernetes-token", "role_not_allowed"),
        (join_body(good, token_name="secret-name-1"), "unknown", "join_token_not_found"),
        (join_body(good[:-4] + "AAAA"), "kubernetes-token", "bad_signature"),
        (join_body(pod_token(issuer, now=0)), "kubernetes-token", "token_expired"),
        ({"token_name": "kubernetes-token"}, "unknown", "bad_request"),
    ]
    for body, _, _ in attempts:
        await client.post("/v1/join", json=body)
    await client.post("/v1/join", data=b"x", headers={"Content-Type": "text/plain"})
    expected = {("kubernetes-token", "success", "ok"): 1.0, ("db", "success", "ok"): 0.0}
    for _, token, reason in attempts[1:]:
        expected[(token, "failure", reason)] = expected.get((token, "failure", reason), 0.0) + 1
    expected[("unknown", "failure", "unsupported_media_type")] = 1.0
    assert attempt_series(client) == expected
    assert value(client, "kubejoin_join_duration_seconds_count", result="success") == 1
    assert value(client, "kubejoin_join_duration_seconds_count", result="failure") == 7
    assert value(client, "kubejoin_certificates_issued_total", role="App") == 1
    assert value(client, "kubejoin_token_verifications_total", result="success", reason="ok") == 3
    assert value(client, "kubejoin_token_verifications_total", result="failure", reason="bad_signature") == 1
    assert value(client, "kubejoin_http_requests_total", route="/v1/join", method="POST", status="403") == 3
    # the good token is verified once per join token's key source, then found in that cache
    assert value(client, "kubejoin_verified_token_cache_requests_total", result="hit") == 1
    assert value(client, "kubejoin_verified_token_cache_requests_total", result="miss") == 4


async def test_static_keys_report_freshness(client: Client) -> None:
    assert value(client, "kubejoin_jwks_keys", issuer="static:kubernetes-token") == 1
    assert value(client, "kubejoin_jwks_last_success_timestamp_seconds", issuer="static:db") > 1.7e9
    assert value(client, "kubejoin_jwks_fetches_total", issuer="static:db", result="success") == 1


async def test_junk_flood_creates_no_new_series(client: Client, issuer: LocalIssuer) -> None:
    await client.post("/v1/join", json=join_body(pod_token(issuer)))
    await client.post("/v1/join", json=join_body("junk", token_name="nope"))

    def count() -> int:
        return sum(
            len(family.samples)
            for family in client.app[SERVICE].metrics.registry.collect()
            if family.name.startswith("kubejoin_")
        )

    before = count()
    for _ in range(50):
        stranger = sign_token(
            IssuerKey.generate("P-256"),
            {"alg": "ES256", "kid": secrets.token_hex(8)},
            issuer.claims("ns-" + secrets.token_hex(4), "sa-" + secrets.token_hex(4), audiences=[CLUSTER]),
        )
        await client.post("/v1/join", json=join_body(stranger, token_name=secrets.token_hex(6)))
    assert count() == before


def test_join_reason_codes_cover_the_contract() -> None:
    assert (
        set(JOIN_REASONS)
        >= {
            "bad_request",
            "malformed_token",
            "token_too_large",
            "unsupported_algorithm",
            "unknown_key",
            "bad_signature",
            "invalid_issuer",
            "invalid_audience",
            "token_expired",
            "token_not_yet_valid",
            "token_issued_in_future",
            "token_ttl_too_long",
            "missing_claim",
            "not_pod_bound",
            "legacy_token",
            "subject_mismatch",
            "join_token_not_found",
            "join_token_expired",
            "wrong_join_method",
            "no_matching_allow_rule",
            "role_not_allowed",
            "payload_too_large",
            "unsupported_media_type",
            "overloaded",
            "keys_unavailable",
        }
        | BINDING_CODES
    )


async def test_openmetrics_when_asked(client: Client) -> None:
    response = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert response.headers["Content-Type"].startswith("application/openmetrics-text")
    assert (await response.text()).endswith("# EOF\n")
    plain = await client.get("/metrics")
    assert plain.headers["Content-Type"].startswith("text/plain")
    assert "process_resident_memory_bytes" in await plain.text()


async def test_gzip_when_asked(client: Client) -> None:
    compressed = await client.get("/metrics", headers={"Accept-Encoding": "gzip"})
    assert compressed.headers["Content-Encoding"] == "gzip"
    assert "kubejoin_join_attempts_total" in await compressed.text()
    plain = await client.get("/metrics", headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers


async def test_metrics_on_their_own_listener(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    from auth.service.server import create_metrics_app

    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    app = create_app(
        make_config(tmp_path, metrics_listen="127.0.0.1:0"), registry=CollectorRegistry(), audit=AuditLog()
    )
    main = await aiohttp_client(app)
    assert (await main.get("/metrics")).status == 404
    metrics = await aiohttp_client(create_metrics_app(app))
    assert "kubejoin_join_attempts_total" in await (await metrics.get("/metrics")).text()


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if __import__("os").environ.get("CI"):
            pytest.fail("promtool is required in CI (.ci/run installs the prometheus package)")
        pytest.skip("promtool is not installed here (apt-get install prometheus)")
    return found


@pytest.mark.slow
async def test_promtool_lints_a_real_scrape(client: Client, issuer: LocalIssuer) -> None:
    tool = promtool()
    await client.post("/v1/join", json=join_body(pod_token(issuer)))
    await client.post("/v1/join", json=join_body("x.y.z"))
    scrape = await (await client.get("/metrics")).read()
    result = await asyncio.to_thread(
        subprocess.run, [tool, "check", "metrics"], input=scrape, capture_output=True, timeout=60
    )
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()
    assert b"kubejoin_" in scrape


class ReorderedBindingStats(NamedTuple):
    """The binding's record with its fields in another order: read by name, nothing moves."""

    restarts: dict[str, int]
    lookups: dict[tuple[str, str], int]
    synced: dict[str, bool]
    objects: dict[str, int]


def test_binding_stats_are_read_by_field_name() -> None:
    """They were bridged by position (`BindingStats(*binding.stats())`): a reordered field would
    have shown restarts as objects."""
    metrics = Metrics(CollectorRegistry(), process=False)
    lookups = {("pod", "api"): 2}
    metrics.watch_binding(
        lambda: {"local": ReorderedBindingStats({"pod": 3}, dict(lookups), {"pod": False}, {"pod": 7})}
    )

    def sample(name: str, **labels: str) -> float | None:
        return metrics.registry.get_sample_value(name, {"cluster": "local", "kind": "pod", **labels})

    assert sample("kubejoin_binding_objects") == 7
    assert sample("kubejoin_binding_synced") == 0
    assert sample("kubejoin_binding_lookups_total", result="api") == 2
    assert sample("kubejoin_binding_watch_restarts_total") == 3
    lookups[("pod", "api")] = 5  # counts read again at the next scrape
    assert sample("kubejoin_binding_lookups_total", result="api") == 5
