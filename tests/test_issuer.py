"""The local issuer reproduces kube-apiserver's documents, headers and token shape."""

from __future__ import annotations

import base64
import json
from typing import Any

from auth.devtools.issuer import IssuerKey, LocalIssuer
from tests.conftest import KUBE_FIXTURES, ServeIssuer, kube_test_keys


def _decode(part: str) -> Any:
    return json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))


def test_documents_match_kube_apiserver_byte_for_byte() -> None:
    issuer = LocalIssuer("https://issuer.example.com", kube_test_keys())
    assert issuer.discovery_document() == (KUBE_FIXTURES / "openid-configuration.json").read_bytes()
    assert issuer.jwks_document() == (KUBE_FIXTURES / "jwks.json").read_bytes()


def test_key_ids_are_kube_apiserver_key_ids() -> None:
    assert [key.kid for key in kube_test_keys()] == [
        "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU",
        "SoABiieYuNx4UdqYvZRVeuC6SihxgLrhLy9peHMHpTc",
    ]


def test_token_has_kube_shape() -> None:
    issuer = LocalIssuer("https://issuer.example.com", kube_test_keys())
    header, payload, _ = issuer.mint("ns", "sa", audiences=["a"], now=1000, lifetime=600, pod="p").split(".")
    assert _decode(header) == {"alg": "RS256", "kid": "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU"}
    claims = _decode(payload)
    assert list(claims) == ["aud", "exp", "iat", "iss", "jti", "kubernetes.io", "nbf", "sub"]
    assert claims["sub"] == "system:serviceaccount:ns:sa"
    assert (claims["iat"], claims["nbf"], claims["exp"]) == (1000, 1000, 1600)
    assert set(claims["kubernetes.io"]) == {"namespace", "serviceaccount", "pod", "node"}
    assert claims["kubernetes.io"]["pod"]["name"] == "p"


def test_rotation_keeps_old_key_published() -> None:
    issuer = LocalIssuer("https://i", [IssuerKey.generate("P-256")])
    old = issuer.signing_key.kid
    new = issuer.rotate().kid
    kids = [key["kid"] for key in json.loads(issuer.jwks_document())["keys"]]
    assert kids == [old, new]
    assert _decode(issuer.mint().split(".")[0])["kid"] == new


async def test_served_with_kube_content_types_and_cache_header(serve_issuer: ServeIssuer, aiohttp_client: Any) -> None:
    issuer = LocalIssuer("https://issuer.example.com", kube_test_keys())
    client = await aiohttp_client(issuer.app())
    discovery = await client.get("/.well-known/openid-configuration")
    jwks = await client.get("/openid/v1/jwks")
    assert discovery.content_type == "application/json"
    assert jwks.content_type == "application/jwk-set+json"
    assert discovery.headers["Cache-Control"] == jwks.headers["Cache-Control"] == "public, max-age=3600"
    assert await jwks.read() == (KUBE_FIXTURES / "jwks.json").read_bytes()
