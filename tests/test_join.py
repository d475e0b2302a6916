"""POST /v1/join over HTTP: each status and reason, the three token types, glob rules, expiry,
the certificate, hot reload, limits."""

from __future__ import annotations

import asyncio
import datetime
import functools
import json
import operator
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.ca import CA_LIFETIME, CertificateAuthority
from auth.service.server import SERVICE, Reload, create_app
from tests.conftest import Clock, ServeIssuer
from tests.polling import wait_for
from tests.service import (
    CLUSTER,
    AuditLog,
    bound_port,
    join_body,
    make_config,
    pod_token,
    public_key_pem,
    served_as_serve,
    token_doc,
    write_tokens,
)
from verifier.sources import RemoteKeySource

Client = TestClient[web.Request, web.Application]
StartService = Callable[..., Awaitable[Client]]


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer("https://kubernetes.default.svc.cluster.local", [IssuerKey.generate("P-256")])


@pytest.fixture
def start_service(tmp_path: Path, aiohttp_client: Any) -> StartService:
    async def start(*tokens: dict[str, Any], **overrides: Any) -> Client:
        write_tokens(tmp_path / "tokens.yaml", *tokens)
        audit = AuditLog()
        app = create_app(
            make_config(tmp_path, **overrides), registry=CollectorRegistry(), audit=audit, reload_interval=0.02
        )
        client: Client = await aiohttp_client(app)
        client.audit = audit  # type: ignore[attr-defined]
        return client

    return start


async def refused(client: Client, body: Any, status: int, **kwargs: Any) -> dict[str, Any]:
    response = (
        await client.post("/v1/join", json=body, **kwargs)
        if body is not None
        else await client.post("/v1/join", **kwargs)
    )
    answer = await response.json()
    assert response.status == status, answer
    assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}
    return dict(answer["error"])


async def test_join_issues_a_certificate(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer), certificate_ttl="2h")
    response = await client.post("/v1/join", json=join_body(pod_token(issuer, pod="app-5f6c"), role="app"))
    assert response.status == 200
    answer = await response.json()
    assert set(answer) == {"host_id", "role", "identity", "certificate", "ca_certificates", "expires_at"}
    assert answer["role"] == "App"
    assert answer["identity"]["username"] == "system:serviceaccount:teleport-agent:app"
    assert answer["identity"]["pod"]["name"] == "app-5f6c"
    assert answer["identity"]["issuer"] == issuer.issuer

    certificate = x509.load_pem_x509_certificate(answer["certificate"].encode())
    ca = x509.load_pem_x509_certificate(answer["ca_certificates"][0].encode())
    certificate.verify_directly_issued_by(ca)
    assert certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == answer["host_id"]
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == CLUSTER
    assert certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)[0].value == "App"
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [f"spiffe://{CLUSTER}/ns/teleport-agent/sa/app"]
    eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH}
    lifetime = certificate.not_valid_after_utc - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=1, minutes=59) < lifetime <= datetime.timedelta(hours=2)
    assert answer["expires_at"] == certificate.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M:%SZ")

    [record] = client.audit.records()  # type: ignore[attr-defined]
    assert record["event"] == "join" and record["reason"] == "ok" and record["pod"] == "app-5f6c"
    assert record["service_account"] == "teleport-agent:app" and record["remote"] == "127.0.0.1"


async def test_certificate_never_outlives_the_join_token(start_service: StartService, issuer: LocalIssuer) -> None:
    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(minutes=10)
    client = await start_service(token_doc(issuer=issuer, expires=soon.strftime("%Y-%m-%dT%H:%M:%SZ")))
    answer = await (await client.post("/v1/join", json=join_body(pod_token(issuer)))).json()
    assert answer["expires_at"] == soon.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize("kind", ["P-256", "P-384", "Ed25519", "RSA2048"])
async def test_accepted_public_keys(start_service: StartService, issuer: LocalIssuer, kind: str) -> None:
    client = await start_service(token_doc(issuer=issuer))
    response = await client.post("/v1/join", json=join_body(pod_token(issuer), public_key=public_key_pem(kind)))
    assert response.status == 200


BAD_REQUESTS: list[tuple[str, Callable[[str], Any]]] = [
    ("not-an-object", lambda t: ["token_name"]),
    ("missing-id-token", lambda t: {k: v for k, v in join_body(t).items() if k != "id_token"}),
    ("role-not-a-string", lambda t: join_body(t, role=7)),
    ("unknown-field", lambda t: join_body(t, admin=True)),
    ("unknown-role", lambda t: join_body(t, role="Superuser")),
    ("public-key-not-pem", lambda t: join_body(t, public_key="ssh-ed25519 AAAA")),
    ("public-key-rsa-1024", lambda t: join_body(t, public_key=public_key_pem("RSA1024"))),
    ("public-key-p521", lambda t: join_body(t, public_key=public_key_pem("P-521"))),
    ("host-name-not-a-string", lambda t: join_body(t, host_name=["a"])),
]


@pytest.mark.parametrize("make", [b[1] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS])
async def test_bad_requests(start_service: StartService, issuer: LocalIssuer, make: Any) -> None:
    client = await start_service(token_doc(issuer=issuer))
    error = await refused(client, make(pod_token(issuer)), 400)
    assert error["code"] == "bad_request"


async def test_body_that_is_not_json(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer))
    error = await refused(client, None, 400, data=b"{not json", headers={"Content-Type": "application/json"})
    assert error["code"] == "bad_request"


def _raw_body(token: str, tail: str) -> bytes:
    """A join body with its members written out by hand, then `tail` before the closing brace."""
    members = ",".join(f'"{k}":{json.dumps(v)}' for k, v in join_body(token).items())
    return ("{" + members + tail + "}").encode()


JUNK_BODIES: list[tuple[str, Callable[[str], bytes], str]] = [
    ("65000-brackets", lambda t: b"[" * 65_000, "not valid JSON"),
    ("nested-objects", lambda t: b'{"a":' * 8_000 + b"1" + b"}" * 8_000, "not valid JSON"),
    ("duplicate-role", lambda t: _raw_body(t, ',"role":"App"'), "duplicate member 'role'"),
    ("duplicate-token-name", lambda t: _raw_body(t, ',"token_name":"other"'), "duplicate member 'token_name'"),
    ("nan", lambda t: _raw_body(t, ',"host_name":NaN'), "NaN is not JSON"),
    ("infinity", lambda t: _raw_body(t, ',"host_name":-Infinity'), "-Infinity is not JSON"),
    ("latin-1", lambda t: _raw_body(t, "")[:-1] + b',"host_name":"caf\xe9"}', "not UTF-8"),
    ("not-utf-8", lambda t: b'{"token_name": "\xff\xfe"}', "not UTF-8"),
]


@pytest.mark.parametrize(("make", "message"), [j[1:] for j in JUNK_BODIES], ids=[j[0] for j in JUNK_BODIES])
async def test_junk_bodies_are_bad_requests_not_500s(
    start_service: StartService, issuer: LocalIssuer, make: Any, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: 65,000 `[` gave a 500 and a RecursionError traceback; a duplicate role silently
    became the last one; NaN and non-UTF-8 bytes were taken."""
    client = await start_service(token_doc(issuer=issuer))
    raw = make(pod_token(issuer))
    error = await refused(client, None, 400, data=raw, headers={"Content-Type": "application/json"})
    assert error["code"] == "bad_request" and message in error["message"]
    registry = client.app[SERVICE].metrics.registry
    labels = {"token": "unknown", "result": "failure", "reason": "bad_request"}
    assert registry.get_sample_value("kubejoin_join_attempts_total", labels) == 1
    [record] = client.audit.records()  # type: ignore[attr-defined]
    assert record["reason"] == "bad_request"
    assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_client_leaving_mid_body_is_not_a_server_error(
    tmp_path: Path, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: a traceback in the log and an HTTP 500 in the metrics. Served as `kubejoin serve`
    serves (aiohttp's test server cancels handlers whose client left; serve does not)."""
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    config = make_config(tmp_path)
    audit = AuditLog()
    async with served_as_serve(config, audit) as runner:
        service = runner.app[SERVICE]
        _, writer = await asyncio.open_connection("127.0.0.1", bound_port(runner))
        writer.write(b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        writer.write(b"Content-Length: 1000\r\n\r\n{")
        await wait_for(lambda: service.admission.active == 1)
        writer.close()
        await wait_for(lambda: service.admission.active == 0)
        registry = service.metrics.registry
        labels = {"token": "unknown", "result": "failure", "reason": "bad_request"}
        assert registry.get_sample_value("kubejoin_join_attempts_total", labels) == 1
        http = {"route": "/v1/join", "method": "POST", "status": "500"}
        assert registry.get_sample_value("kubejoin_http_requests_total", http) is None
        [record] = audit.records()
        assert record["message"] == "the connection closed before the whole body arrived"
        assert not [r for r in caplog.records if r.exc_info], "no traceback"


@pytest.mark.parametrize(
    ("make", "code"),
    [
        (lambda i: pod_token(i)[:-4] + "AAAA", "bad_signature"),
        (lambda i: "x.y", "malformed_token"),
        (lambda i: pod_token(i, audiences=["sts.amazonaws.com"]), "invalid_audience"),
        (lambda i: pod_token(i, now=0), "token_expired"),
        (lambda i: pod_token(i, lifetime=86400), "token_ttl_too_long"),
        (lambda i: LocalIssuer(i.issuer).mint("teleport-agent", "app", audiences=[CLUSTER]), "unknown_key"),
    ],
    ids=["bad_signature", "malformed_token", "invalid_audience", "token_expired", "token_ttl_too_long", "unknown_key"],
)
async def test_unverifiable_tokens_are_401(
    start_service: StartService, issuer: LocalIssuer, make: Any, code: str
) -> None:
    client = await start_service(token_doc(issuer=issuer))
    error = await refused(client, join_body(make(issuer)), 401)
    assert error["code"] == code
    assert "eyJ" not in error["message"]


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        (lambda t: join_body(t, token_name="nope"), "join_token_not_found", "no join token"),
        (lambda t: join_body(t, token_name="expired"), "join_token_expired", "expired at 2020-01-01T00:00:00Z"),
        (lambda t: join_body(t, token_name="iam"), "wrong_join_method", "uses join method iam"),
        (
            lambda t: join_body(t, role="Db"),
            "role_not_allowed",
            "role Db not granted by join token kubernetes-token, which grants App",
        ),
        (lambda t: join_body(t, role="Auth"), "role_not_allowed", "role Auth not granted"),
    ],
    ids=["join_token_not_found", "join_token_expired", "wrong_join_method", "role_not_allowed", "auth_role"],
)
async def test_forbidden(start_service: StartService, issuer: LocalIssuer, body: Any, code: str, message: str) -> None:
    client = await start_service(
        token_doc(issuer=issuer),
        token_doc("expired", issuer=issuer, expires="2020-01-01T00:00:00Z"),
        token_doc("iam", join_method="iam"),
    )
    error = await refused(client, body(pod_token(issuer)), 403)
    assert (error["code"], message in error["message"]) == (code, True)


async def test_service_account_not_allowed(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer))
    error = await refused(client, join_body(pod_token(issuer, "teleport-agent", "debug")), 403)
    assert error == {
        "code": "no_matching_allow_rule",
        "message": "service account teleport-agent:debug is not allowed by join token kubernetes-token: "
        "rule 1: service account teleport-agent:debug is not teleport-agent:app",
    }


@pytest.mark.parametrize(
    ("namespace", "account", "allowed"),
    [
        ("team-a", "agent-1", True),
        ("team-bcd", "agent-x", True),
        ("team-a", "agent-12", False),
        ("teamx", "agent-1", False),
        ("other", "agent-1", False),
    ],
)
async def test_glob_rules(
    start_service: StartService, issuer: LocalIssuer, namespace: str, account: str, allowed: bool
) -> None:
    rule = {"service_account_namespace": "team-*", "service_account_name": "agent-?"}
    client = await start_service(token_doc(issuer=issuer, allow=[rule]))
    response = await client.post("/v1/join", json=join_body(pod_token(issuer, namespace, account)))
    assert response.status == (200 if allowed else 403)


async def test_oidc_token_type(start_service: StartService, serve_issuer: ServeIssuer) -> None:
    live = await serve_issuer()
    client = await start_service(token_doc(issuer=live, kind="oidc"))
    response = await client.post("/v1/join", json=join_body(pod_token(live)))
    assert response.status == 200
    assert (await response.json())["identity"]["issuer"] == live.issuer


async def test_oidc_issuer_down_from_the_start_is_503(start_service: StartService, serve_issuer: ServeIssuer) -> None:
    live = await serve_issuer()
    live.fail_status = 500
    client = await start_service(token_doc(issuer=live, kind="oidc"))
    response = await client.post("/v1/join", json=join_body(pod_token(live)))
    assert response.status == 503
    assert (await response.json())["error"]["code"] == "keys_unavailable"
    assert response.headers["Retry-After"]


async def test_wrong_content_type_is_415(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer))
    error = await refused(
        client, None, 415, data=b"token_name=x", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert error["code"] == "unsupported_media_type"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_large_body_is_413(start_service: StartService, issuer: LocalIssuer, chunked: bool) -> None:
    client = await start_service(token_doc(issuer=issuer))
    payload = b'{"token_name": "' + b"x" * 70_000 + b'"}'

    async def stream() -> Any:
        yield payload

    data: Any = stream() if chunked else payload
    error = await refused(client, None, 413, data=data, headers={"Content-Type": "application/json"})
    assert error["code"] == "payload_too_large"


async def _hold_open(client: Client, body_length: int = 1000) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Starts a join whose body never finishes arriving."""
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    writer.write(
        b"POST /v1/join HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n{" % body_length
    )
    await writer.drain()
    return reader, writer


async def test_too_many_in_flight_is_429(
    start_service: StartService, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_service(token_doc(issuer=issuer), limits={"max_in_flight": 1})
    service = client.app[SERVICE]
    release = asyncio.Event()
    judge = service.join.join

    async def slow_join(body: Any, remote: str | None) -> Any:
        await release.wait()
        return await judge(body, remote)

    monkeypatch.setattr(service.join, "join", slow_join)
    first = asyncio.ensure_future(client.post("/v1/join", json=join_body(pod_token(issuer))))
    await wait_for(lambda: service.admission.in_flight == 1)
    response = await client.post("/v1/join", json=join_body(pod_token(issuer)))
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert (await response.json())["error"]["code"] == "overloaded"
    release.set()
    assert (await first).status == 200
    assert service.admission.in_flight == 0
    assert (await client.post("/v1/join", json=join_body(pod_token(issuer)))).status == 200


async def test_slow_body_times_out(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer), limits={"request_timeout": "200ms"})
    reader, writer = await _hold_open(client)
    status_line = await asyncio.wait_for(reader.readline(), 5)
    assert b" 408 " in status_line
    writer.close()


async def test_health_and_readiness(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer))
    assert (await client.get("/healthz")).status == 200
    ready = await client.get("/readyz")
    assert ready.status == 200
    assert (await ready.json())["join_tokens"] == 1


async def test_hot_reload_and_broken_edit(start_service: StartService, issuer: LocalIssuer, tmp_path: Path) -> None:
    client = await start_service(token_doc(issuer=issuer))
    service = client.app[SERVICE]
    tokens_file = tmp_path / "tokens.yaml"
    write_tokens(tokens_file, token_doc(issuer=issuer), token_doc("db-token", issuer=issuer, roles=["Db"]))
    await wait_for(lambda: "db-token" in service.tokens.tokens)
    assert (
        await client.post("/v1/join", json=join_body(pod_token(issuer), token_name="db-token", role="Db"))
    ).status == 200

    # a typo an operator could make (in the roles only: the random JWKS may hold "Db" too)
    write_tokens(tokens_file, token_doc(issuer=issuer), token_doc("db-token", issuer=issuer, roles=["Auth"]))
    await wait_for(lambda: bool(service.tokens.last_error))
    assert "spec.roles[0]" in service.tokens.last_error
    # nothing lost: the last good tokens still work
    assert (
        await client.post("/v1/join", json=join_body(pod_token(issuer), token_name="db-token", role="Db"))
    ).status == 200
    assert (await (await client.get("/readyz")).json())["last_reload_error"]
    registry = service.metrics.registry
    assert registry.get_sample_value("kubejoin_config_reloads_total", {"result": "failure"}) == 1
    assert registry.get_sample_value("kubejoin_config_reloads_total", {"result": "success"}) == 1


async def test_a_reload_says_what_it_did(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog(), reload_interval=3600)
    service = (await aiohttp_client(app)).app[SERVICE]  # no reload but those asked for here
    tokens_file = tmp_path / "tokens.yaml"
    assert await service.reload_tokens() is Reload.UNCHANGED
    tokens_file.write_text(tokens_file.read_text().replace("App", "Auth"))
    assert await service.reload_tokens() is Reload.REFUSED
    assert await service.reload_tokens() is Reload.UNCHANGED  # refused once, not again and again
    write_tokens(tokens_file, token_doc(issuer=issuer), token_doc("db-token", issuer=issuer, roles=["Db"]))
    assert await service.reload_tokens() is Reload.CHANGED and "db-token" in service.tokens.tokens


async def test_reload_closes_sources_no_token_uses(
    start_service: StartService, serve_issuer: ServeIssuer, tmp_path: Path
) -> None:
    live = await serve_issuer()
    client = await start_service(token_doc(issuer=live, kind="oidc"))
    service = client.app[SERVICE]
    assert (await client.post("/v1/join", json=join_body(pod_token(live)))).status == 200
    verifier = service.keyring.verifier_for("kubernetes-token")
    assert verifier is not None and isinstance(verifier.source, RemoteKeySource)
    source = verifier.source
    write_tokens(tmp_path / "tokens.yaml", token_doc("other", issuer=live))
    await wait_for(lambda: service.keyring.verifier_for("kubernetes-token") is None)
    # the source no token names any more is closed right after the swap: its refresher stops
    await wait_for(lambda: source._refresher is None)


async def test_unexpected_failure_is_a_json_500_and_counted(
    start_service: StartService, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = await start_service(token_doc(issuer=issuer))
    service = client.app[SERVICE]

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(service.ca, "issue", broken)
    error = await refused(client, join_body(pod_token(issuer), host_name="node-a.example"), 500)
    assert error["code"] == "internal_error" and "disk on fire" not in error["message"]
    registry = service.metrics.registry
    labels = {"token": "kubernetes-token", "result": "failure", "reason": "internal_error"}
    assert registry.get_sample_value("kubejoin_join_attempts_total", labels) == 1
    [record] = client.audit.records()  # type: ignore[attr-defined]
    assert (record["reason"], record["host_name"]) == ("internal_error", "node-a.example")


def test_host_ids_are_random_version_4_uuids() -> None:
    from auth.service.join import new_host_id

    ids = {new_host_id() for _ in range(200)}
    assert len(ids) == 200
    for host_id in ids:
        parsed = uuid.UUID(host_id)
        assert (str(parsed), parsed.version, parsed.variant) == (host_id, 4, uuid.RFC_4122)
    # each of the 122 random bits is 1 in some id and 0 in another (a fixed byte would not be)
    values = [uuid.UUID(host_id).int for host_id in ids]
    random_bits = ((1 << 128) - 1) & ~(0xF << 76 | 0x3 << 62)  # all but version and variant
    assert functools.reduce(operator.or_, values) & random_bits == random_bits
    assert functools.reduce(operator.and_, values) & random_bits == 0


async def test_no_certificate_once_the_ca_expired_while_serving(
    tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer
) -> None:
    """A CA that was valid at start and expired since: a leaf would be born dead (notAfter before
    notBefore). It used to be issued with a 200."""
    now = datetime.datetime.now(datetime.UTC)
    CertificateAuthority.generate(CLUSTER, now - CA_LIFETIME + datetime.timedelta(minutes=10)).save(
        str(tmp_path / "ca.pem"), str(tmp_path / "ca-key.pem")
    )
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    clock = Clock(now.timestamp())
    app = create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog(), clock=clock)
    client: Client = await aiohttp_client(app)
    clock.advance(20 * 60)  # the CA expired 10 minutes ago
    response = await client.post("/v1/join", json=join_body(pod_token(issuer, now=clock.now)))
    assert response.status == 500
    assert "CA has expired" in (await response.json())["error"]["message"]


async def test_readyz_says_why_it_is_not_ready(start_service: StartService, issuer: LocalIssuer) -> None:
    client = await start_service(token_doc(issuer=issuer))
    service = client.app[SERVICE]
    service.ready, service.draining = False, True  # as at SIGTERM, seen on a kept-alive connection
    response = await client.get("/readyz")
    assert (response.status, (await response.json())["reason"]) == (503, "draining")  # was "starting"


async def test_a_cancelled_join_is_no_internal_error(
    start_service: StartService, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 20, item 7: before, a join cancelled (its client gone, or still running at the end of
    the drain) was counted and logged as internal_error. aiohttp's test server cancels the handler
    of a client that leaves."""
    client = await start_service(token_doc(issuer=issuer))
    service = client.app[SERVICE]
    verifier = service.keyring.verifier_for("kubernetes-token")
    assert verifier is not None
    entered = asyncio.Event()

    async def hanging(token: str) -> Any:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(verifier, "verify", hanging)
    posted = asyncio.ensure_future(client.post("/v1/join", json=join_body(pod_token(issuer))))
    async with asyncio.timeout(5):
        await entered.wait()
    posted.cancel()
    await wait_for(lambda: service.admission.active == 0)
    labels = {"token": "kubernetes-token", "result": "failure", "reason": "internal_error"}
    assert service.metrics.registry.get_sample_value("kubejoin_join_attempts_total", labels) is None
    assert client.audit.records() == []  # type: ignore[attr-defined]
