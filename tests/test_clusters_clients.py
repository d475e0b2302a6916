"""TokenReview at /clusters/NAME driven by clients nobody here wrote: the official Kubernetes
Python client and kubectl, each told that the API server is `https://kubejoin/clusters/NAME`."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pytest
from kubernetes import client as k8s
from prometheus_client import CollectorRegistry

from auth.devtools.issuer import IssuerKey, LocalIssuer
from auth.runtime.site import server_tls_context
from auth.service.server import create_app
from tests.polling import wait_for
from tests.service import AuditLog, make_config, token_doc, write_tokens

AUDIENCE: Final = "https://kubernetes.default.svc"
REVIEWER: Final = ("vault", "vault-auth")
KUBECTL = shutil.which("kubectl")


@dataclass
class Endpoint:
    url: str  # https://localhost:PORT
    ca_file: Path
    issuers: dict[str, LocalIssuer]
    audit: AuditLog
    work: Path

    def token(self, cluster: str, namespace: str = "team-a", account: str = "reader") -> str:
        return self.issuers[cluster].mint(namespace, account, audiences=[AUDIENCE], pod="reader-0")

    def caller(self, cluster: str) -> str:
        return self.issuers[cluster].mint(*REVIEWER, audiences=[AUDIENCE])


@pytest.fixture
async def endpoint(tmp_path: Path, aiohttp_server: Any) -> AsyncIterator[Endpoint]:
    issuers = {
        name: LocalIssuer(f"https://{name}.oidc.example", [IssuerKey.generate("P-256")]) for name in ("eu", "us")
    }
    write_tokens(tmp_path / "tokens.yaml", token_doc(issuer=issuers["eu"]))
    clusters = [
        {
            "name": name,
            "issuer": issuer.issuer,
            "keys": {"type": "static_jwks", "jwks": issuer.jwks_document().decode()},
            "audiences": [AUDIENCE],
        }
        for name, issuer in issuers.items()
    ]
    config = make_config(
        tmp_path,
        tls={"dns_names": ["localhost"]},
        clusters=clusters,
        token_review={
            "source": {"type": "static_jwks", "static_jwks": {"jwks": issuers["eu"].jwks_document().decode()}},
            "audiences": ["reviews"],
            "reviewers": [{"service_account": ":".join(REVIEWER)}],
        },
    )
    audit = AuditLog()
    app = create_app(config, registry=CollectorRegistry(), audit=audit)
    server = await aiohttp_server(app, ssl=server_tls_context(config, app))
    yield Endpoint(f"https://localhost:{server.port}", Path(config.ca_cert_file), issuers, audit, tmp_path)
    assert server.runner.server is not None
    await wait_for(lambda: not server.runner.server.connections, "the clients' connections closed", within=5)


def create_review(endpoint: Endpoint, cluster: str, bearer: str, token: str) -> Any:
    """AuthenticationV1Api().create_token_review with the cluster's URL as the API server."""
    configuration = k8s.Configuration()
    configuration.host = f"{endpoint.url}/clusters/{cluster}"
    configuration.ssl_ca_cert = str(endpoint.ca_file)
    configuration.api_key = {"authorization": bearer}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    review = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token))
    with k8s.ApiClient(configuration) as api_client:
        return k8s.AuthenticationV1Api(api_client).create_token_review(
            review, _request_timeout=10, _headers={"Connection": "close"}
        )


async def test_python_client_per_cluster(endpoint: Endpoint) -> None:
    review = await asyncio.to_thread(create_review, endpoint, "us", endpoint.caller("us"), endpoint.token("us"))
    assert review.status.authenticated is True
    assert review.status.user.username == "system:serviceaccount:team-a:reader"
    assert review.status.user.extra["kubejoin.dev/cluster"] == ["us"]
    assert review.status.audiences == [AUDIENCE]
    # a token of another cluster: not authenticated here
    review = await asyncio.to_thread(create_review, endpoint, "us", endpoint.caller("us"), endpoint.token("eu"))
    assert review.status.authenticated is False and review.status.error.startswith("unknown_key: ")
    # a caller of another cluster is no reviewer of this one
    with pytest.raises(k8s.ApiException) as caught:
        await asyncio.to_thread(create_review, endpoint, "us", endpoint.caller("eu"), endpoint.token("us"))
    assert caught.value.status == 401
    with pytest.raises(k8s.ApiException) as caught:
        await asyncio.to_thread(create_review, endpoint, "mars", endpoint.caller("us"), endpoint.token("us"))
    assert caught.value.status == 404
    assert json.loads(str(caught.value.body))["reason"] == "NotFound"
    clusters = [r.get("cluster") for r in endpoint.audit.records() if r.get("event") == "token_review"]
    assert clusters == ["us", "us", "us"]  # the 404 is no review of any cluster


async def kubectl(endpoint: Endpoint, cluster: str, bearer: str, *args: str) -> tuple[int, str, str]:
    assert KUBECTL is not None, "kubectl is installed on these machines"
    process = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--server={endpoint.url}/clusters/{cluster}",
        f"--certificate-authority={endpoint.ca_file}",
        f"--token={bearer}",
        "--request-timeout=20s",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"HOME": str(endpoint.work), "PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@pytest.mark.slow
@pytest.mark.parametrize("version", ["v1", "v1beta1"])
async def test_kubectl_create_raw_per_cluster(endpoint: Endpoint, version: str) -> None:
    body = endpoint.work / "review.json"
    body.write_text(json.dumps({"kind": "TokenReview", "spec": {"token": endpoint.token("eu")}}))

    def path(cluster: str) -> str:
        # `create --raw` takes the path from the server's root: kubectl drops the path of --server
        # there (client-go's AbsPath), so the raw path names the cluster too.
        return f"/clusters/{cluster}/apis/authentication.k8s.io/{version}/tokenreviews"

    code, out, err = await kubectl(
        endpoint, "eu", endpoint.caller("eu"), "create", "--raw", path("eu"), "-f", str(body)
    )
    assert code == 0, err
    status = json.loads(out)["status"]
    assert status["authenticated"] is True and status["user"]["extra"]["kubejoin.dev/cluster"] == ["eu"]
    code, out, err = await kubectl(
        endpoint, "us", endpoint.caller("us"), "create", "--raw", path("us"), "-f", str(body)
    )
    assert code == 0, err
    assert json.loads(out)["status"]["authenticated"] is False  # eu's token at us
    code, out, err = await kubectl(
        endpoint, "mars", endpoint.caller("us"), "create", "--raw", path("mars"), "-f", str(body)
    )
    assert code == 1 and "Error from server (NotFound)" in err, err
