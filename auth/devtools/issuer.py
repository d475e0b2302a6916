"""A local issuer that behaves like kube-apiserver's ServiceAccount token signer.

It serves the OIDC discovery document and the JWKS with kube-apiserver's exact document shapes,
content types and cache headers, and mints bound tokens the way kube-apiserver does: header
`{"alg","kid"}` with no `typ`, kid = unpadded base64url SHA-256 of the DER public key, and the
`kubernetes.io` claim naming namespace, service account, pod and node. Used by the demo, the tests
and load tests; it is not a production issuer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import web
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

DISCOVERY_PATH: Final = "/.well-known/openid-configuration"
JWKS_PATH: Final = "/openid/v1/jwks"
CACHE_CONTROL: Final = "public, max-age=3600"
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
_EC: Final = {
    "secp256r1": ("P-256", "ES256", hashes.SHA256(), 32),
    "secp384r1": ("P-384", "ES384", hashes.SHA384(), 48),
    "secp521r1": ("P-521", "ES512", hashes.SHA512(), 66),
}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int = 0) -> str:
    return b64url(value.to_bytes(size or max(1, (value.bit_length() + 7) // 8), "big"))


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


@dataclass(frozen=True)
class IssuerKey:
    """A signing key with kube-apiserver's key id."""

    private_key: PrivateKey

    @property
    def kid(self) -> str:
        der = self.private_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return b64url(hashlib.sha256(der).digest())

    @property
    def alg(self) -> str:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return "RS256"
        return _EC[self.private_key.curve.name][1]

    def jwk(self) -> dict[str, str]:
        """The public JWK, with members in the order kube-apiserver writes them."""
        public = self.private_key.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            numbers = public.public_numbers()
            return {
                "use": "sig",
                "kty": "RSA",
                "kid": self.kid,
                "alg": "RS256",
                "n": _uint(numbers.n),
                "e": _uint(numbers.e),
            }
        crv, alg, _, size = _EC[public.curve.name]
        point = public.public_numbers()
        return {
            "use": "sig",
            "kty": "EC",
            "kid": self.kid,
            "crv": crv,
            "alg": alg,
            "x": _uint(point.x, size),
            "y": _uint(point.y, size),
        }

    def sign(self, signing_input: bytes) -> bytes:
        if isinstance(self.private_key, rsa.RSAPrivateKey):
            return self.private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        _, _, hash_alg, size = _EC[self.private_key.curve.name]
        r, s = decode_dss_signature(self.private_key.sign(signing_input, ec.ECDSA(hash_alg)))
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    @classmethod
    def generate(cls, kind: str = "RSA") -> IssuerKey:
        if kind == "RSA":
            return cls(rsa.generate_private_key(public_exponent=65537, key_size=2048))
        curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
        return cls(ec.generate_private_key(curves[kind]))

    @classmethod
    def from_pem(cls, pem: bytes) -> IssuerKey:
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)):
            raise ValueError("issuer keys must be RSA or EC")
        return cls(key)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def _sorted_names(value: Any) -> Any:
    if isinstance(value, dict):
        return {name: _sorted_names(value[name]) for name in sorted(value)}
    return value


def sign_token(key: IssuerKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Signs arbitrary header and claims (tests use it to build hostile tokens)."""
    signing_input = b64url(_compact_json(header)) + "." + b64url(_compact_json(claims))
    return signing_input + "." + b64url(key.sign(signing_input.encode("ascii")))


class LocalIssuer:
    """A fake cluster issuer: its keys, discovery document and JWKS served like kube-apiserver
    serves them, and bound tokens minted like kube-apiserver mints them. Tests, the demo and load
    tests use it instead of a cluster; failure injection (status, hang) drives the outage tests."""

    def __init__(self, issuer: str, keys: list[IssuerKey] | None = None) -> None:
        self.issuer = issuer
        self.published: list[IssuerKey] = list(keys) if keys else [IssuerKey.generate()]
        self.signing_key = self.published[0]
        self.jwks_uri = issuer.rstrip("/") + JWKS_PATH
        # Failure injection for outage tests: answer this status, or never answer.
        self.fail_status: int | None = None
        self.hang = False
        self.bearer_token: str | None = None
        self.cache_control = CACHE_CONTROL
        self.requests: Counter[str] = Counter()

    def rotate(self, new_key: IssuerKey | None = None) -> IssuerKey:
        """Publishes a new key and signs with it; the old keys stay published."""
        key = new_key or IssuerKey.generate(
            "RSA" if isinstance(self.signing_key.private_key, rsa.RSAPrivateKey) else "P-256"
        )
        self.published.append(key)
        self.signing_key = key
        return key

    def retire(self, kid: str) -> None:
        self.published = [key for key in self.published if key.kid != kid]

    def discovery_document(self) -> bytes:
        algs = sorted({key.alg for key in self.published})
        return (
            _compact_json(
                {
                    "issuer": self.issuer,
                    "jwks_uri": self.jwks_uri,
                    "response_types_supported": ["id_token"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": algs,
                }
            )
            + b"\n"
        )

    def jwks_document(self) -> bytes:
        return _compact_json({"keys": [key.jwk() for key in self.published]}) + b"\n"

    def claims(
        self,
        namespace: str = "default",
        service_account: str = "default",
        *,
        audiences: list[str] | None = None,
        lifetime: int = 600,
        now: float | None = None,
        pod: str | None = None,
        node: str | None = "node-1",
    ) -> dict[str, Any]:
        issued = int(time.time() if now is None else now)
        account_uid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{namespace}/{service_account}"))
        binding: dict[str, Any] = {
            "namespace": namespace,
            "serviceaccount": {"name": service_account, "uid": account_uid},
            "pod": {"name": pod or f"{service_account}-pod", "uid": str(uuid.uuid4())},
        }
        if node is not None:
            binding["node"] = {"name": node, "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, node))}
        return {
            "aud": audiences or ["kubejoin"],
            "exp": issued + lifetime,
            "iat": issued,
            "iss": self.issuer,
            "jti": str(uuid.uuid4()),
            "kubernetes.io": binding,
            "nbf": issued,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }

    def mint(self, namespace: str = "default", service_account: str = "default", **options: Any) -> str:
        """A bound ServiceAccount token as kube-apiserver would issue it."""
        return self.sign(self.claims(namespace, service_account, **options))

    def sign(self, claims: dict[str, Any], key: IssuerKey | None = None) -> str:
        """Signs claims as kube-apiserver does: go-jose turns them into maps before marshalling,
        so every object's names come out sorted, nested ones included (see the real EKS token in
        the shared fixtures)."""
        key = key or self.signing_key
        return sign_token(key, {"alg": key.alg, "kid": key.kid}, _sorted_names(claims))

    # -- serving ----------------------------------------------------------------------------
    async def _serve(self, request: web.Request, body: bytes, content_type: str) -> web.Response:
        self.requests[request.path] += 1
        if self.hang:
            await asyncio.sleep(3600)
        if self.bearer_token is not None and request.headers.get("Authorization") != f"Bearer {self.bearer_token}":
            return web.Response(status=401, text="Unauthorized")
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="injected failure")
        response = web.Response(body=body, content_type=content_type)
        response.headers["Cache-Control"] = self.cache_control
        return response

    async def _discovery(self, request: web.Request) -> web.Response:
        return await self._serve(request, self.discovery_document(), "application/json")

    async def _jwks(self, request: web.Request) -> web.Response:
        return await self._serve(request, self.jwks_document(), "application/jwk-set+json")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get(DISCOVERY_PATH, self._discovery)
        app.router.add_get(JWKS_PATH, self._jwks)
        return app
