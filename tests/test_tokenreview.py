"""POST /apis/authentication.k8s.io/{v1,v1beta1}/tokenreviews over HTTP: the whole answer, audience
semantics as kube-apiserver's, each refusal, the caller checks, strict parsing, the log and the
metrics. Real clients (the official Python client, kubectl) are in test_tokenreview_clients.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from prometheus_client import CollectorRegistry

from auth.devtools.devtls import make_loopback_tls
from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.service.server import SERVICE, create_app
from tests.conftest import Clock
from tests.kube import binding_of, start_cluster, start_kubejoin
from tests.polling import wait_for
from tests.service import (
    CLUSTER,
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
StartReview = Callable[..., Awaitable[Client]]
V1 = "/apis/authentication.k8s.io/v1/tokenreviews"
V1BETA1 = "/apis/authentication.k8s.io/v1beta1/tokenreviews"
API = "https://kubernetes.default.svc.cluster.local"  # the default audience configured below
VAULT = "vault"


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(API, [IssuerKey.generate("P-256")])


def static_source(issuer: LocalIssuer) -> dict[str, Any]:
    return {"type": "static_jwks", "static_jwks": {"jwks": issuer.jwks_document().decode(), "issuer": issuer.issuer}}


@pytest.fixture
def start_review(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> StartReview:
    """kubejoin with a token_review section (static_jwks source of `issuer` unless given)."""

    async def start(**review: Any) -> Client:
        write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
        review.setdefault("source", static_source(issuer))
        review.setdefault("audiences", [API])
        overrides = review.pop("overrides", {})
        clock = review.pop("clock", time.time)
        audit = AuditLog()
        config = make_config(tmp_path, token_review=review, **overrides)
        app = create_app(config, registry=CollectorRegistry(), audit=audit, clock=clock)
        client: Client = await aiohttp_client(app)
        client.audit = audit  # type: ignore[attr-defined]
        return client

    return start


def review_body(token: str, audiences: list[str] | None = None, version: str = "v1") -> dict[str, Any]:
    spec: dict[str, Any] = {"token": token}
    if audiences is not None:
        spec["audiences"] = audiences
    return {"apiVersion": f"authentication.k8s.io/{version}", "kind": "TokenReview", "spec": spec}


async def post(client: Client, body: Any, path: str = V1, **kwargs: Any) -> tuple[int, dict[str, Any]]:
    """Posts raw JSON bytes with no Content-Type, as the Python client and kubectl may."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = await client.post(path, data=data, **kwargs)
    return response.status, await response.json()


def kube_status(answer: dict[str, Any], reason: str, code: int) -> dict[str, Any]:
    """The Status object kube-apiserver answers with, with the answer's own message."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": answer["message"],
        "reason": reason,
        "code": code,
    }


def records(client: Client) -> list[dict[str, Any]]:
    return client.audit.records()  # type: ignore[attr-defined,no-any-return]


def reviews(client: Client, result: str, reason: str) -> float | None:
    registry = client.app[SERVICE].metrics.registry
    return registry.get_sample_value("kubejoin_token_reviews_total", {"result": result, "reason": reason})


def claims_of(issuer: LocalIssuer, **options: Any) -> dict[str, Any]:
    options.setdefault("audiences", [API])
    return issuer.claims("team-a", "reader", pod="reader-7d9f", node="node-3", **options)


async def test_valid_token_gets_kube_apiservers_answer(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    claims = claims_of(issuer, audiences=[API, "other"])
    binding = claims["kubernetes.io"]
    token = issuer.sign(claims)
    status, answer = await post(client, review_body(token))
    assert status == 201
    assert answer == {
        "kind": "TokenReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": None},
        "spec": {"token": ""},
        "status": {
            "authenticated": True,
            "user": {
                "username": "system:serviceaccount:team-a:reader",
                "uid": binding["serviceaccount"]["uid"],
                "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"],
                "extra": {
                    "authentication.kubernetes.io/pod-name": ["reader-7d9f"],
                    "authentication.kubernetes.io/pod-uid": [binding["pod"]["uid"]],
                    "authentication.kubernetes.io/node-name": ["node-3"],
                    "authentication.kubernetes.io/node-uid": [binding["node"]["uid"]],
                    "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
                },
            },
            "audiences": [API],
        },
    }


async def test_no_node_and_no_jti_leave_their_extra_keys_out(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    claims = issuer.claims("team-a", "reader", audiences=[API], node=None)
    del claims["jti"]
    _, answer = await post(client, review_body(issuer.sign(claims)))
    assert set(answer["status"]["user"]["extra"]) == {
        "authentication.kubernetes.io/pod-name",
        "authentication.kubernetes.io/pod-uid",
    }


async def test_v1beta1_is_answered_in_its_own_version(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer)), version="v1beta1"), V1BETA1)
    assert status == 201
    assert answer["apiVersion"] == "authentication.k8s.io/v1beta1" and answer["status"]["authenticated"] is True
    # a v1 object posted to the v1beta1 URL is refused, as kube-apiserver refuses it
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))), V1BETA1)
    assert status == 400 and "does not match the expected API version" in answer["message"]


AUDIENCES = [
    # (token's aud, the review's spec.audiences, status.audiences or the refusal)
    ([API, VAULT], [VAULT], [VAULT]),
    ([API, VAULT], ["elsewhere", VAULT, API], [API, VAULT]),
    ([VAULT], ["elsewhere", VAULT], [VAULT]),
    ([VAULT], None, "invalid_audience"),  # names none: the configured ones, which the token lacks
    ([API], [VAULT], "invalid_audience"),  # names some: the configured ones do not count
    ([API, VAULT], None, [API]),
    ([API], [], [API]),  # an empty list names none
]


@pytest.mark.parametrize(("token_audiences", "asked", "expected"), AUDIENCES)
async def test_audiences_as_kube_apiserver_decides_them(
    start_review: StartReview, issuer: LocalIssuer, token_audiences: list[str], asked: list[str] | None, expected: Any
) -> None:
    client = await start_review()
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer, audiences=token_audiences)), asked))
    assert status == 201
    if asked:
        assert answer["spec"]["audiences"] == asked
    else:
        assert "audiences" not in answer["spec"]
    if isinstance(expected, list):
        assert answer["status"]["authenticated"] is True
        assert answer["status"]["audiences"] == expected
    else:
        assert answer["status"] == {"authenticated": False, "user": {}, "error": answer["status"]["error"]}
        assert answer["status"]["error"].startswith(f"{expected}: ")


def _unbound(claims: dict[str, Any]) -> dict[str, Any]:
    del claims["kubernetes.io"]["pod"]
    return claims


REFUSALS: list[tuple[str, Callable[[LocalIssuer], str]]] = [
    ("bad_signature", lambda i: i.sign(claims_of(i))[:-4] + "AAAA"),
    ("malformed_token", lambda i: "not-a-jwt"),
    ("unknown_key", lambda i: LocalIssuer(i.issuer, [IssuerKey.generate("P-256")]).sign(claims_of(i))),
    ("invalid_issuer", lambda i: i.sign({**claims_of(i), "iss": "https://elsewhere"})),
    ("token_expired", lambda i: i.sign(claims_of(i, now=0))),
    ("token_ttl_too_long", lambda i: i.sign(claims_of(i, lifetime=7200))),
    ("not_pod_bound", lambda i: i.sign(_unbound(claims_of(i)))),
    ("subject_mismatch", lambda i: i.sign({**claims_of(i), "sub": "system:serviceaccount:kube-system:admin"})),
]


@pytest.mark.parametrize("make", [r[1] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
async def test_refused_tokens_say_why_in_status_error(
    start_review: StartReview, issuer: LocalIssuer, make: Callable[[LocalIssuer], str], request: Any
) -> None:
    reason = request.node.callspec.id
    client = await start_review()
    token = make(issuer)
    status, answer = await post(client, review_body(token))
    assert status == 201
    assert answer["spec"] == {"token": ""}
    assert answer["status"]["authenticated"] is False and answer["status"]["user"] == {}
    assert set(answer["status"]) == {"authenticated", "user", "error"}
    assert answer["status"]["error"].startswith(f"{reason}: ")
    assert reviews(client, "failure", reason) == 1
    [record] = records(client)
    assert record["event"] == "token_review" and record["result"] == "failure" and record["reason"] == reason
    assert token not in json.dumps(answer) and token not in client.audit.getvalue()  # type: ignore[attr-defined]


async def test_review_ttl_cap_is_its_own(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review(max_token_ttl="2h")
    token = issuer.sign(claims_of(issuer, lifetime=5400, audiences=[API, CLUSTER]))
    _, answer = await post(client, review_body(token))
    assert answer["status"]["authenticated"] is True
    # joins keep verification.max_token_ttl (30m by default)
    join = await client.post("/v1/join", json=join_body(token))
    assert (await join.json())["error"]["code"] == "token_ttl_too_long"


async def test_stale_tokens_are_accepted_and_counted(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    registry = client.app[SERVICE].metrics.registry
    assert registry.get_sample_value("kubejoin_stale_tokens_total") == 0
    fresh, stale = claims_of(issuer), claims_of(issuer)
    fresh["kubernetes.io"]["warnafter"] = fresh["iat"] + 3600
    stale["kubernetes.io"]["warnafter"] = stale["iat"] - 1
    for claims in (fresh, stale):
        _, answer = await post(client, review_body(issuer.sign(claims)))
        assert answer["status"]["authenticated"] is True
    assert registry.get_sample_value("kubejoin_stale_tokens_total") == 1
    assert [r.get("stale") for r in records(client)] == [None, True]


BAD_BODIES: list[tuple[str, bytes]] = [
    ("not-json", b"{not json"),
    ("not-utf8", b'{"spec": {"token": "\xff"}}'),
    ("an-array", b"[]"),
    ("duplicate-member", b'{"spec": {"token": "a.b.c", "token": "d.e.f"}}'),
    ("nan", b'{"spec": {"token": "a.b.c"}, "metadata": {"x": NaN}}'),
    ("infinity", b'{"spec": {"token": "a.b.c", "audiences": [Infinity]}}'),
    ("deeply-nested", b'{"spec": {"token": "a.b.c"}, "metadata": ' + b"[" * 30000 + b"]" * 30000 + b"}"),
    ("no-spec", b'{"kind": "TokenReview"}'),
    ("no-token", b'{"spec": {"audiences": ["a"]}}'),
    ("empty-token", b'{"spec": {"token": ""}}'),
    ("token-not-a-string", b'{"spec": {"token": 5}}'),
    ("audiences-not-a-list", b'{"spec": {"token": "a.b.c", "audiences": "vault"}}'),
    ("audience-not-a-string", b'{"spec": {"token": "a.b.c", "audiences": [1]}}'),
    ("unknown-spec-field", b'{"spec": {"token": "a.b.c", "audience": "vault"}}'),
    ("unknown-top-field", b'{"spec": {"token": "a.b.c"}, "extra": 1}'),
    ("wrong-kind", b'{"kind": "SubjectAccessReview", "spec": {"token": "a.b.c"}}'),
    ("wrong-group", b'{"apiVersion": "authorization.k8s.io/v1", "spec": {"token": "a.b.c"}}'),
    ("metadata-not-an-object", b'{"metadata": [], "spec": {"token": "a.b.c"}}'),
]


@pytest.mark.parametrize("body", [b[1] for b in BAD_BODIES], ids=[b[0] for b in BAD_BODIES])
async def test_malformed_reviews_are_400_status_objects(start_review: StartReview, body: bytes) -> None:
    client = await start_review()
    status, answer = await post(client, body)
    assert status == 400
    assert answer == kube_status(answer, "BadRequest", 400)
    assert reviews(client, "failure", "bad_request") == 1


async def test_no_api_version_nor_kind_any_content_type(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    token = issuer.sign(claims_of(issuer))
    body = json.dumps({"spec": {"token": token}}).encode()
    for headers in ({}, {"Content-Type": "application/json"}, {"Content-Type": "text/plain"}):
        status, answer = await post(client, body, headers=headers)
        assert status == 201 and answer["status"]["authenticated"] is True, headers

    async def chunks() -> AsyncIterator[bytes]:  # a chunked body, as kubectl sends it
        for start in range(0, len(body), 100):
            yield body[start : start + 100]

    response = await client.post(V1, data=chunks())
    assert response.status == 201 and (await response.json())["status"]["authenticated"] is True


async def test_body_over_64_kib_is_413(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    padded = review_body(issuer.sign(claims_of(issuer)))
    padded["metadata"] = {"annotations": {"pad": "x" * 70000}}
    status, answer = await post(client, padded)
    assert status == 413 and answer["reason"] == "RequestEntityTooLarge" and answer["kind"] == "Status"


async def test_the_route_exists_only_when_configured(tmp_path: Path, aiohttp_client: Any, issuer: LocalIssuer) -> None:
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    client = await aiohttp_client(create_app(make_config(tmp_path), registry=CollectorRegistry(), audit=AuditLog()))
    assert (await client.post(V1, json=review_body(issuer.sign(claims_of(issuer))))).status == 404


async def test_success_series_exists_at_zero_and_counts(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    assert reviews(client, "success", "ok") == 0
    await post(client, review_body(issuer.sign(claims_of(issuer))))
    await post(client, review_body(issuer.sign(claims_of(issuer))))
    assert reviews(client, "success", "ok") == 2
    exposition = await (await client.get("/metrics")).text()
    assert 'kubejoin_token_reviews_total{reason="ok",result="success"} 2.0' in exposition


async def test_one_audit_line_per_review_never_the_token(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review()
    token = issuer.sign(claims_of(issuer))
    await post(client, review_body(token))
    await post(client, review_body(token[:-3] + "AAA"))
    await post(client, b"{")
    ok, refused, bad = records(client)
    assert ok["event"] == "token_review" and ok["result"] == "success" and ok["reason"] == "ok"
    assert ok["user"] == "system:serviceaccount:team-a:reader" and ok["pod"] == "reader-7d9f"
    assert ok["node"] == "node-3" and ok["caller"] is None and ok["remote"] == "127.0.0.1"
    assert ok["duration_ms"] >= 0 and ok["time"].endswith("Z") and ok["version"] == "v1"
    assert refused["reason"] == "bad_signature" and refused["user"] is None
    assert refused["message"].startswith("bad_signature: ")
    assert bad["reason"] == "bad_request"
    assert token.split(".")[2][:-3] not in client.audit.getvalue()  # type: ignore[attr-defined]


# -- the caller: token_review.reviewers ---------------------------------------------------------


def caller_token(issuer: LocalIssuer, namespace: str = "vault", account: str = "vault-auth", **options: Any) -> str:
    options.setdefault("audiences", [API])
    return issuer.mint(namespace, account, **options)


async def test_allowed_reviewer_gets_the_answer(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review(reviewers=[{"service_account": "vault:vault-auth"}])
    headers = {"Authorization": f"Bearer {caller_token(issuer)}"}
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))), headers=headers)
    assert status == 201 and answer["status"]["authenticated"] is True
    [record] = records(client)
    assert record["caller"] == "system:serviceaccount:vault:vault-auth"


CALLERS: list[tuple[str, Callable[[LocalIssuer], dict[str, str]], int]] = [
    ("no-authorization", lambda i: {}, 401),
    ("basic-auth", lambda i: {"Authorization": "Basic dmF1bHQ6cGFzcw=="}, 401),
    ("empty-bearer", lambda i: {"Authorization": "Bearer "}, 401),
    ("expired-caller", lambda i: {"Authorization": f"Bearer {caller_token(i, now=0)}"}, 401),
    ("caller-other-audience", lambda i: {"Authorization": f"Bearer {caller_token(i, audiences=[VAULT])}"}, 401),
    (
        "caller-of-another-cluster",
        lambda i: {"Authorization": f"Bearer {caller_token(LocalIssuer(API, [IssuerKey.generate('P-256')]))}"},
        401,
    ),
    ("caller-not-a-reviewer", lambda i: {"Authorization": f"Bearer {caller_token(i, 'team-a', 'reader')}"}, 403),
]


@pytest.mark.parametrize(("headers", "code"), [(c[1], c[2]) for c in CALLERS], ids=[c[0] for c in CALLERS])
async def test_refused_callers_learn_nothing_about_the_reviewed_token(
    start_review: StartReview, issuer: LocalIssuer, headers: Callable[[LocalIssuer], dict[str, str]], code: int
) -> None:
    client = await start_review(reviewers=[{"service_account": "vault:vault-auth"}])
    reason = {401: "Unauthorized", 403: "Forbidden"}[code]
    answers = []
    # a valid, a refused and a malformed review: the caller's refusal is the same for all three
    for body in (review_body(issuer.sign(claims_of(issuer))), review_body("x.y.z"), b"{"):
        status, answer = await post(client, body, headers=headers(issuer))
        assert status == code
        assert answer["kind"] == "Status" and answer["reason"] == reason and answer["code"] == code
        answers.append(answer)
    assert answers[0] == answers[1] == answers[2]
    assert "team-a" not in json.dumps(answers[0]).replace("system:serviceaccount:team-a:reader", "")
    assert reviews(client, "failure", reason.lower()) == 3
    assert all(r["user"] is None and r["reason"] == reason.lower() for r in records(client))


async def test_forbidden_names_the_caller_like_kube_apiserver(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review(reviewers=[{"service_account_namespace": "vault", "service_account_name": "vault-*"}])
    ok = {"Authorization": f"Bearer {caller_token(issuer, 'vault', 'vault-agent')}"}
    assert (await post(client, review_body(issuer.sign(claims_of(issuer))), headers=ok))[0] == 201
    other = {"Authorization": f"Bearer {caller_token(issuer, 'vault', 'agent')}"}
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))), headers=other)
    assert status == 403
    assert answer["message"].startswith(
        'tokenreviews.authentication.k8s.io is forbidden: User "system:serviceaccount:vault:agent" cannot create'
    )


async def test_caller_token_never_logged(start_review: StartReview, issuer: LocalIssuer) -> None:
    client = await start_review(reviewers=[{"service_account": "vault:vault-auth"}])
    caller = caller_token(issuer, now=0)
    await post(client, review_body(issuer.sign(claims_of(issuer))), headers={"Authorization": f"Bearer {caller}"})
    [record] = records(client)
    assert record["caller_error"].startswith("token_expired: ")
    assert caller.split(".")[2] not in client.audit.getvalue()  # type: ignore[attr-defined]


# -- sharing the join tokens' key source; the in-flight limit ----------------------------------


async def test_in_cluster_review_shares_the_join_tokens_key_fetches(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    tls = make_loopback_tls(tmp_path)
    issuer = LocalIssuer(API, [IssuerKey.generate("P-256")])
    issuer.bearer_token = issuer.mint("kubejoin", "kubejoin", audiences=[API])
    (tmp_path / "sa-token").write_text(issuer.bearer_token)
    server = await aiohttp_server(issuer.app(), ssl=tls.server_context())
    write_tokens(tmp_path / "tokens.yaml", token_doc(kind="in_cluster"))
    config = make_config(
        tmp_path,
        in_cluster={
            "api_server": f"https://127.0.0.1:{server.port}",
            "ca_file": str(tls.ca_file),
            "token_file": str(tmp_path / "sa-token"),
        },
        token_review={"source": {"type": "in_cluster"}, "audiences": [API]},
    )
    client = await aiohttp_client(create_app(config, registry=CollectorRegistry(), audit=AuditLog()))
    assert (await client.post("/v1/join", json=join_body(pod_token(issuer)))).status == 200
    for asked in (None, [VAULT]):
        token = issuer.sign(claims_of(issuer, audiences=[API, VAULT]))
        _, answer = await post(client, review_body(token, asked))
        assert answer["status"]["authenticated"] is True
    assert issuer.requests["/openid/v1/jwks"] == 1
    # the join token goes away; the review keeps its (the same) source
    service = client.app[SERVICE]
    for source in service.keyring.update({}):
        await source.close()
    _, answer = await post(client, review_body(issuer.sign(claims_of(issuer))))
    assert answer["status"]["authenticated"] is True
    assert issuer.requests["/openid/v1/jwks"] == 1


async def test_audience_verifiers_are_bounded(start_review: StartReview, issuer: LocalIssuer) -> None:
    from auth.service.keyring import MAX_AUDIENCE_VERIFIERS

    client = await start_review()
    for n in range(MAX_AUDIENCE_VERIFIERS + 8):
        _, answer = await post(client, review_body(issuer.sign(claims_of(issuer, audiences=[f"a{n}"])), [f"a{n}"]))
        assert answer["status"]["audiences"] == [f"a{n}"]
    keyring = client.app[SERVICE].keyring
    assert len(keyring._others) == MAX_AUDIENCE_VERIFIERS
    stats = keyring.cache_stats()
    assert stats.misses == MAX_AUDIENCE_VERIFIERS + 8  # evicted verifiers' counts are kept


async def test_slow_review_bodies_hold_no_slot_and_share_the_address_bound(
    start_review: StartReview, issuer: LocalIssuer
) -> None:
    """As for joins (issue 12, item 1): a body still arriving holds one of its address's reading
    places, never one of the max_in_flight slots; reviews and joins share both bounds."""
    client = await start_review(overrides={"limits": {"max_in_flight": 1, "max_pending_per_address": 2}})
    admission = client.app[SERVICE].admission
    release = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield b'{"spec": {"token": '
        await release.wait()
        yield json.dumps(issuer.sign(claims_of(issuer))).encode() + b"}}"

    first = asyncio.ensure_future(client.post(V1, data=slow_body()))
    await wait_for(lambda: admission.pending("127.0.0.1") == 1)
    assert admission.in_flight == 0
    # the one slot is free: before, the slow body held it and this review got 429
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))))
    assert status == 201 and answer["status"]["authenticated"] is True
    second = asyncio.ensure_future(client.post(V1, data=slow_body()))
    await wait_for(lambda: admission.pending("127.0.0.1") == 2)
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))))
    assert status == 429 and answer["reason"] == "TooManyRequests"
    join = await client.post("/v1/join", json=join_body(pod_token(issuer)))
    assert join.status == 429
    release.set()
    for held in (first, second):
        response = await held
        assert response.status == 201 and (await response.json())["status"]["authenticated"] is True
    assert (admission.in_flight, admission.pending("127.0.0.1")) == (0, 0)
    assert reviews(client, "failure", "overloaded") == 1


async def test_other_methods_on_the_review_paths_are_405(start_review: StartReview) -> None:
    client = await start_review()
    for path in (V1, V1BETA1):
        response = await client.get(path)
        assert response.status == 405 and response.headers["Allow"] == "POST"
    assert (await client.post("/apis/authentication.k8s.io/v2/tokenreviews", data=b"{}")).status == 404


async def test_a_flood_of_unauthorized_callers_is_bounded_in_the_log(
    start_review: StartReview, issuer: LocalIssuer, clock: Clock
) -> None:
    client = await start_review(reviewers=[{"service_account": "vault:vault-auth"}], clock=clock)
    for _ in range(12):
        assert (await post(client, review_body("x.y.z")))[0] == 401
    assert reviews(client, "failure", "unauthorized") == 12
    assert len(records(client)) == 5  # the first 5 of a reason in a second, as for junk joins
    clock.advance(1)
    client.app[SERVICE].audit.flush()
    [summary] = [r for r in records(client) if r["event"] == "join_refusals_suppressed"]
    assert summary["suppressed"] == {"unauthorized": 7}
    # an allowed caller's reviews are never bounded
    headers = {"Authorization": f"Bearer {caller_token(issuer)}"}
    for _ in range(8):
        assert (await post(client, review_body("x.y.z"), headers=headers))[0] == 201
    assert len([r for r in records(client) if r.get("caller")]) == 8


# -- live binding (binding.mode: watch) -----------------------------------------------------------


async def test_binding_refuses_reviews_of_deleted_pods(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """As kube-apiserver's TokenReview: kubelet's year-long tokens (max_token_ttl: 0) are accepted
    only while their pod exists; reviewed tokens and the caller's own token are both checked."""
    cluster = await start_cluster(tmp_path, aiohttp_server)
    cluster.api.add_pod("team-a", "reader-0", service_account="reader")
    cluster.api.add_pod("vault", "vault-0", service_account="vault-auth")
    review = {
        "source": {"type": "in_cluster"},
        "audiences": [API],
        "max_token_ttl": 0,
        "reviewers": [{"service_account": "vault:vault-auth"}],
    }
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, token_review=review)
    year = 365 * 24 * 3600
    token = cluster.mint("team-a", "reader-0", audiences=[API], lifetime=year)
    caller = {"Authorization": f"Bearer {cluster.mint('vault', 'vault-0', audiences=[API])}"}
    status, answer = await post(client, review_body(token), headers=caller)
    assert status == 201 and answer["status"]["authenticated"] is True
    assert answer["status"]["user"]["uid"] == cluster.api.uid("serviceaccounts", "team-a", "reader")
    assert answer["status"]["user"]["extra"]["authentication.kubernetes.io/pod-uid"] == [
        cluster.api.uid("pods", "team-a", "reader-0")
    ]

    gone = cluster.api.uid("pods", "team-a", "reader-0")
    cluster.api.delete("pods", "team-a", "reader-0")
    await wait_for(lambda: gone not in binding_of(client).stores["pod"])
    status, answer = await post(client, review_body(token), headers=caller)
    assert status == 201 and answer["status"]["authenticated"] is False and answer["status"]["user"] == {}
    assert answer["status"]["error"].startswith("pod_deleted: ")
    assert reviews(client, "failure", "pod_deleted") == 1

    cluster.api.add_pod("team-a", "reader-1", service_account="reader")
    other = cluster.mint("team-a", "reader-1", audiences=[API])
    gone = cluster.api.uid("pods", "team-a", "reader-1")
    cluster.api.delete("pods", "team-a", "reader-1")  # before kubejoin ever looked it up
    await wait_for(lambda: gone not in binding_of(client).stores["pod"])
    _, answer = await post(client, review_body(other), headers=caller)
    assert answer["status"]["error"].split(":")[0] in ("pod_not_found", "pod_deleted")

    # the caller's own pod goes away: the caller is refused, whatever it asks about
    gone = cluster.api.uid("pods", "vault", "vault-0")
    cluster.api.delete("pods", "vault", "vault-0")
    await wait_for(lambda: gone not in binding_of(client).stores["pod"])
    status, answer = await post(client, review_body(token), headers=caller)
    assert status == 401 and answer["reason"] == "Unauthorized"
    assert reviews(client, "failure", "unauthorized") == 1


async def test_a_caller_leaving_mid_body_is_a_bad_request_not_a_500(
    tmp_path: Path, issuer: LocalIssuer, caplog: pytest.LogCaptureFixture
) -> None:
    """Served as `kubejoin serve` serves (aiohttp's test server cancels the handler instead)."""
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    config = make_config(tmp_path, token_review={"source": static_source(issuer), "audiences": [API]})
    async with served_as_serve(config) as runner:
        service = runner.app[SERVICE]
        _, writer = await asyncio.open_connection("127.0.0.1", bound_port(runner))
        writer.write(b"POST " + V1.encode() + b' HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{"spec":')
        await wait_for(lambda: service.admission.active == 1)
        writer.close()
        await wait_for(lambda: service.admission.active == 0)
        registry = service.metrics.registry
        failures = {"result": "failure", "reason": "bad_request"}
        assert registry.get_sample_value("kubejoin_token_reviews_total", failures) == 1
        internal = {"result": "failure", "reason": "internal_error"}
        assert registry.get_sample_value("kubejoin_token_reviews_total", internal) is None  # was 1
        assert not [r for r in caplog.records if r.exc_info], "no traceback"


async def test_a_reviewer_whose_token_cannot_be_checked_now_gets_503(
    start_review: StartReview, issuer: LocalIssuer
) -> None:
    unreachable = {"type": "oidc", "oidc": {"issuer": "http://127.0.0.1:9/none", "insecure_allow_http_issuer": True}}
    client = await start_review(source=unreachable, reviewers=[{"service_account": "vault:vault-auth"}])
    headers = {"Authorization": f"Bearer {caller_token(issuer)}"}
    status, answer = await post(client, review_body(issuer.sign(claims_of(issuer))), headers=headers)
    # an outage, not bad credentials: 401 would tell the caller its own token is wrong
    assert (status, answer["reason"]) == (503, "ServiceUnavailable")


async def test_caller_named_audiences_do_not_push_out_the_default_verifier(
    start_review: StartReview, issuer: LocalIssuer
) -> None:
    client = await start_review()
    token = issuer.sign(claims_of(issuer))
    assert (await post(client, review_body(token)))[0] == 201
    keyring = client.app[SERVICE].keyring
    misses = keyring.cache_stats().misses
    for index in range(40):  # more than the verifiers kept for named audience sets
        await post(client, review_body(token, audiences=[f"https://made-up-{index}"]))
    misses_after_flood = keyring.cache_stats().misses
    assert (await post(client, review_body(token)))[0] == 201
    assert keyring.cache_stats().misses == misses_after_flood  # a hit: was a miss, its cache evicted
    assert misses_after_flood > misses


# -- issue 20: bounded answers and lines, Status on every review path, no API request for refused
# callers, cancellation is no error, no join audience among the review audiences --------------


async def test_many_audiences_give_an_answer_and_a_log_line_of_fixed_size(
    start_review: StartReview, issuer: LocalIssuer
) -> None:
    """Before: 6,000 audiences the token lacks (a 50 KB body) were answered with a 118 KB
    status.error and logged as one 65 KB line, naming every audience."""
    client = await start_review()
    asked = [f"a{n}" for n in range(6000)]
    body = json.dumps(review_body(issuer.sign(claims_of(issuer)), asked)).encode()
    assert len(body) < 64 * 1024
    response = await client.post(V1, data=body)
    answer = await response.json()
    assert response.status == 201 and answer["spec"]["audiences"] == asked  # echoed as kube-apiserver does
    error = answer["status"]["error"]
    assert error.startswith("invalid_audience: expected one of 6,000 audiences ('a0', 'a1', 'a10', ...), got [")
    assert len(error) < 400
    assert len(await response.read()) < len(body) + 1024  # the echo of the body, and a fixed size beyond it
    [line] = client.audit.getvalue().splitlines()  # type: ignore[attr-defined]
    assert len(line) < 1024 and json.loads(line)["message"] == error


@pytest.mark.parametrize(
    ("method", "path", "code", "reason"),
    [
        ("GET", V1, 405, "MethodNotAllowed"),
        ("PUT", V1BETA1, 405, "MethodNotAllowed"),
        ("POST", "/apis/authentication.k8s.io/v2/tokenreviews", 404, "NotFound"),
        ("GET", "/apis/authentication.k8s.io/v1", 404, "NotFound"),
    ],
    ids=["get-v1", "put-v1beta1", "unknown-version", "group-version"],
)
async def test_other_requests_on_review_paths_get_a_status_as_from_kube_apiserver(
    start_review: StartReview, method: str, path: str, code: int, reason: str
) -> None:
    """Before: aiohttp's plain-text 404 and 405, which Kubernetes clients cannot read."""
    client = await start_review()
    response = await client.request(method, path, data=b"{}")
    assert response.status == code and response.content_type == "application/json"
    answer = await response.json()
    assert answer == kube_status(answer, reason, code)
    if code == 405:
        assert response.headers["Allow"] == "POST"
    assert (await client.get("/nowhere")).content_type == "text/plain"  # outside /apis/: as before


async def test_a_cancelled_review_is_no_internal_error(
    start_review: StartReview, issuer: LocalIssuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: counted (and logged) as internal_error. aiohttp's test server cancels the handler
    of a client that leaves, as `serve` does for requests still running at shutdown."""
    client = await start_review()
    service = client.app[SERVICE]
    reviewer = service.reviewer
    assert reviewer is not None
    entered = asyncio.Event()

    async def hanging(*args: Any) -> Any:
        entered.set()
        await asyncio.Event().wait()

    monkeypatch.setattr(reviewer, "judge", hanging)
    posted = asyncio.ensure_future(client.post(V1, json=review_body(issuer.sign(claims_of(issuer)))))
    async with asyncio.timeout(5):
        await entered.wait()
    posted.cancel()
    await wait_for(lambda: service.admission.active == 0)
    assert reviews(client, "failure", "internal_error") is None
    assert records(client) == []


def test_review_audiences_must_not_include_the_join_audience(tmp_path: Path) -> None:
    """Before: accepted, and a token meant for joins then passed reviews and served as a
    reviewer's credential."""
    from auth.service.files import ConfigError

    review = {"audiences": [API, CLUSTER], "reviewers": [{"service_account": "vault:vault-auth"}]}
    with pytest.raises(ConfigError, match=r"token_review\.audiences: 'example\.teleport\.sh' is cluster_name"):
        make_config(tmp_path, token_review=review)


async def test_a_caller_the_reviewers_rule_refuses_costs_no_api_request(
    tmp_path: Path, aiohttp_client: Any, aiohttp_server: Any
) -> None:
    """Before: the caller's own pod, unknown to the watch, was looked up with a GET before the rule
    refused the caller (and 100 such requests with the pod list forbidden were 300 GETs)."""
    cluster = await start_cluster(tmp_path, aiohttp_server)
    review = {"source": {"type": "in_cluster"}, "audiences": [API], "reviewers": [{"service_account": "vault:vault"}]}
    client = await start_kubejoin(tmp_path, aiohttp_client, cluster, token_review=review)
    # signed by the cluster's key, for a pod the cluster does not have: only a GET could tell
    stranger = cluster.api.issuer.mint("team-a", "reader", pod="reader-0", audiences=[API])
    reviewed = review_body(cluster.api.issuer.mint("team-a", "reader", pod="reader-1", audiences=[API]))

    def gets() -> int:
        return sum(count for (verb, _), count in cluster.api.requests.items() if verb == "get")

    before = gets()
    for _ in range(3):
        status, answer = await post(client, reviewed, headers={"Authorization": f"Bearer {stranger}"})
        assert (status, answer["reason"]) == (403, "Forbidden")
    assert gets() == before
    # an allowed caller's objects are still looked up, and the caller refused when they do not exist
    ghost = cluster.api.issuer.mint("vault", "vault", pod="vault-0", audiences=[API])
    status, answer = await post(client, reviewed, headers={"Authorization": f"Bearer {ghost}"})
    assert (status, answer["reason"]) == (401, "Unauthorized")
    assert gets() > before
    client.app[SERVICE].audit.flush()
    captured = client.app[SERVICE].audit.writer.stream
    assert isinstance(captured, AuditLog)
    record = captured.records()[-1]
    assert record["caller"] is None and record["caller_error"].split(":")[0].endswith("_not_found")
