"""The TokenReview endpoint driven by clients nobody here wrote: the official Kubernetes Python client
(`AuthenticationV1Api().create_token_review`) and `kubectl create --raw`, over HTTPS with a serving
certificate from kubejoin's own CA (`tls: {dns_names: [localhost]}`; kubectl sends credentials only
over HTTPS). Each asserts the fields the client reads, the refusals, and 401/403."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.runtime import server_tls_context
from auth.service.server import SERVICE, create_app
from tests.polling import wait_for
from tests.service import AuditLog, make_config, token_doc, write_tokens

API = "https://kubernetes.default.svc.cluster.local"
REVIEWER = ("vault", "vault-auth")


@dataclass
class Endpoint:
    url: str  # https://localhost:PORT
    ca_file: Path  # kubejoin's CA, which issued the serving certificate
    issuer: LocalIssuer
    audit: AuditLog
    work: Path
    registry: CollectorRegistry

    def token(self, namespace: str = "team-a", account: str = "reader", **options: Any) -> str:
        options.setdefault("audiences", [API])
        options.setdefault("pod", "reader-7d9f")
        return self.issuer.mint(namespace, account, **options)

    def caller(self, namespace: str = REVIEWER[0], account: str = REVIEWER[1]) -> str:
        return self.issuer.mint(namespace, account, audiences=[API])


@pytest.fixture
async def endpoint(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Endpoint]:
    issuer = LocalIssuer(API, [IssuerKey.generate("P-256")])
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuer))
    config = make_config(
        tmp_path,
        tls={"dns_names": ["localhost"]},
        token_review={
            "source": {"type": "static_jwks", "static_jwks": {"jwks": issuer.jwks_document().decode()}},
            "audiences": [API],
            "reviewers": [{"service_account": ":".join(REVIEWER)}],
        },
    )
    audit, registry = AuditLog(), CollectorRegistry()
    app = create_app(config, registry=registry, audit=audit)
    server = await aiohttp_server(app, ssl=server_tls_context(config, app))
    assert app[SERVICE].ca is not None
    yield Endpoint(f"https://localhost:{server.port}", Path(config.ca_cert_file), issuer, audit, tmp_path, registry)
    # The clients have exited or closed their pools; let the server see their TLS connections end
    # before it stops, or their transports outlive the event loop.
    assert server.runner.server is not None
    await wait_for(lambda: not server.runner.server.connections, "the clients' connections closed", within=5)


# -- the official Python client ---------------------------------------------------------------


def python_client(endpoint: Endpoint, bearer: str | None) -> k8s.ApiClient:
    configuration = k8s.Configuration()
    configuration.host = endpoint.url
    configuration.ssl_ca_cert = str(endpoint.ca_file)
    if bearer is not None:
        configuration.api_key = {"authorization": bearer}
        configuration.api_key_prefix = {"authorization": "Bearer"}
    return k8s.ApiClient(configuration)


def create_review(api_client: k8s.ApiClient, token: str, audiences: list[str] | None = None) -> Any:
    """AuthenticationV1Api().create_token_review, as a program using the client calls it."""
    review = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=audiences))
    with api_client:
        # Connection: close because the client leaves the connection of an error answer open (its
        # pool does not get it back), and the test server must stop with no TLS connection left.
        return k8s.AuthenticationV1Api(api_client).create_token_review(
            review, _request_timeout=10, _headers={"Connection": "close"}
        )


async def test_python_client_reads_the_whole_answer(endpoint: Endpoint) -> None:
    claims = endpoint.issuer.claims("team-a", "reader", audiences=[API, "vault"], pod="reader-7d9f", node="node-3")
    token = endpoint.issuer.sign(claims)
    api = python_client(endpoint, endpoint.caller())
    review = await asyncio.to_thread(create_review, api, token, ["vault", "elsewhere"])
    assert review.api_version == "authentication.k8s.io/v1" and review.kind == "TokenReview"
    assert review.spec.token == "" and review.spec.audiences == ["vault", "elsewhere"]
    status = review.status
    assert status.authenticated is True and status.error is None
    assert status.audiences == ["vault"]
    assert status.user.username == "system:serviceaccount:team-a:reader"
    assert status.user.uid == claims["kubernetes.io"]["serviceaccount"]["uid"]
    assert status.user.groups == ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"]
    assert status.user.extra == {
        "authentication.kubernetes.io/pod-name": ["reader-7d9f"],
        "authentication.kubernetes.io/pod-uid": [claims["kubernetes.io"]["pod"]["uid"]],
        "authentication.kubernetes.io/node-name": ["node-3"],
        "authentication.kubernetes.io/node-uid": [claims["kubernetes.io"]["node"]["uid"]],
        "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
    }


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda e: e.token(now=0), "token_expired"),
        (lambda e: e.token()[:-4] + "AAAA", "bad_signature"),
        (lambda e: e.token(audiences=["sts.amazonaws.com"]), "invalid_audience"),
        (
            lambda e: LocalIssuer(API, [IssuerKey.generate("P-256")]).mint("team-a", "reader", audiences=[API]),
            "unknown_key",
        ),
    ],
    ids=["token_expired", "bad_signature", "invalid_audience", "unknown_key"],
)
async def test_python_client_reads_refusals(endpoint: Endpoint, make: Callable[[Endpoint], str], reason: str) -> None:
    token = make(endpoint)
    review = await asyncio.to_thread(create_review, python_client(endpoint, endpoint.caller()), token)
    assert review.status.authenticated is False
    assert review.status.error.startswith(f"{reason}: ")
    assert review.status.user.username is None and review.status.audiences is None
    assert token not in endpoint.audit.getvalue()


@pytest.mark.parametrize(
    ("bearer", "code", "reason"),
    [
        (lambda e: None, 401, "Unauthorized"),
        (lambda e: e.token(now=0), 401, "Unauthorized"),
        (lambda e: e.caller("team-a", "reader"), 403, "Forbidden"),
    ],
    ids=["no-token", "expired-caller", "not-a-reviewer"],
)
async def test_python_client_sees_caller_errors(
    endpoint: Endpoint, bearer: Callable[[Endpoint], str | None], code: int, reason: str
) -> None:
    api = python_client(endpoint, bearer(endpoint))
    with pytest.raises(k8s.ApiException) as caught:
        await asyncio.to_thread(create_review, api, endpoint.token())
    assert caught.value.status == code
    body = caught.value.body
    assert isinstance(body, str)
    status = json.loads(body)
    assert status["kind"] == "Status" and status["reason"] == reason and status["code"] == code
    assert "reader-7d9f" not in body  # nothing about the reviewed token


# -- kubectl ----------------------------------------------------------------------------------

KUBECTL = shutil.which("kubectl")


async def kubectl(endpoint: Endpoint, bearer: str, *args: str) -> tuple[int, str, str]:
    assert KUBECTL is not None, "kubectl is installed on these machines"
    kubeconfig = endpoint.work / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "kubejoin",
                        "cluster": {"server": endpoint.url, "certificate-authority": str(endpoint.ca_file)},
                    }
                ],
                "users": [{"name": "reviewer", "user": {"token": bearer}}],
                "contexts": [{"name": "kubejoin", "context": {"cluster": "kubejoin", "user": "reviewer"}}],
                "current-context": "kubejoin",
            }
        )
    )
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        "--kubeconfig",
        str(kubeconfig),
        "--request-timeout=20s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(endpoint.work), "PATH": "/usr/bin:/bin"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def review_file(endpoint: Endpoint, token: str, version: str = "v1") -> str:
    path = endpoint.work / f"review-{version}.json"
    path.write_text(
        json.dumps({"apiVersion": f"authentication.k8s.io/{version}", "kind": "TokenReview", "spec": {"token": token}})
    )
    return str(path)


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_kubectl_create_raw(endpoint: Endpoint, version: str) -> None:
    claims = endpoint.issuer.claims("team-a", "reader", audiences=[API], pod="reader-7d9f", node=None)
    token = endpoint.issuer.sign(claims)
    path = f"/apis/authentication.k8s.io/{version}/tokenreviews"
    code, out, err = await kubectl(
        endpoint, endpoint.caller(), "create", "--raw", path, "-f", review_file(endpoint, token, version)
    )
    assert code == 0, err
    answer = json.loads(out)
    assert answer["apiVersion"] == f"authentication.k8s.io/{version}" and answer["spec"] == {"token": ""}
    assert answer["status"] == {
        "authenticated": True,
        "user": {
            "username": "system:serviceaccount:team-a:reader",
            "uid": claims["kubernetes.io"]["serviceaccount"]["uid"],
            "groups": ["system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated"],
            "extra": {
                "authentication.kubernetes.io/pod-name": ["reader-7d9f"],
                "authentication.kubernetes.io/pod-uid": [claims["kubernetes.io"]["pod"]["uid"]],
                "authentication.kubernetes.io/credential-id": [f"JTI={claims['jti']}"],
            },
        },
        "audiences": [API],
    }
    assert token not in out and token not in endpoint.audit.getvalue()
    [record] = endpoint.audit.records()
    assert record["caller"] == "system:serviceaccount:vault:vault-auth" and record["reason"] == "ok"


@pytest.mark.slow
async def test_kubectl_refused_token(endpoint: Endpoint) -> None:
    token = endpoint.token(lifetime=7200)
    code, out, err = await kubectl(
        endpoint,
        endpoint.caller(),
        "create",
        "--raw",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "-f",
        review_file(endpoint, token),
    )
    assert code == 0, err
    status = json.loads(out)["status"]
    assert status["authenticated"] is False and status["user"] == {}
    assert status["error"].startswith("token_ttl_too_long: ")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("bearer", "message"),
    [
        (lambda e: e.token(now=0), "error: You must be logged in to the server (Unauthorized"),
        (
            lambda e: e.caller("team-a", "reader"),
            "Error from server (Forbidden): tokenreviews.authentication.k8s.io is forbidden: "
            'User "system:serviceaccount:team-a:reader"',
        ),
    ],
    ids=["unauthorized", "forbidden"],
)
async def test_kubectl_caller_errors(endpoint: Endpoint, bearer: Callable[[Endpoint], str], message: str) -> None:
    token = endpoint.token()
    code, out, err = await kubectl(
        endpoint,
        bearer(endpoint),
        "create",
        "--raw",
        "/apis/authentication.k8s.io/v1/tokenreviews",
        "-f",
        review_file(endpoint, token),
    )
    assert code == 1 and out == ""
    assert message in err
    assert "reader-7d9f" not in err and token not in err
