"""The verifier: one test per REASON code, the attack table, and the real EKS token."""

from __future__ import annotations

import base64
import gc
import json
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hmac, serialization

from auth.devtools.issuer import IssuerKey, LocalIssuer, b64url, sign_token
from tests.conftest import AUDIENCE, EKS_FIXTURES, Clock, kube_test_keys
from verifier import StaticKeySource, VerificationError, Verifier, parse_jwks
from verifier.errors import VERIFICATION_CODES

ISSUER = "https://issuer.example.com"


@pytest.fixture
def issuer() -> LocalIssuer:
    return LocalIssuer(ISSUER, kube_test_keys())


def verifier_for(issuer: LocalIssuer, clock: Clock, **options: Any) -> Verifier:
    source = StaticKeySource(parse_jwks(issuer.jwks_document()), label="static:test", issuer=ISSUER)
    return Verifier(source, [AUDIENCE], clock=clock, **options)


def claims(issuer: LocalIssuer, clock: Clock, **changes: Any) -> dict[str, Any]:
    result = issuer.claims("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    for name, value in changes.items():
        if value is _DROP:
            result.pop(name, None)
        else:
            result[name] = value
    return result


_DROP = object()


def raw_token(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, signature: bytes = b"sig") -> str:
    def part(value: dict[str, Any] | bytes) -> str:
        return b64url(value if isinstance(value, bytes) else json.dumps(value).encode())

    return f"{part(header)}.{part(payload)}.{b64url(signature)}"


async def refusal(verifier: Verifier, token: str) -> str:
    with pytest.raises(VerificationError) as caught:
        await verifier.verify(token)
    assert token not in caught.value.message
    return caught.value.code


def _secret_bound(issuer: LocalIssuer, clock: Clock) -> dict[str, Any]:
    result = claims(issuer, clock)
    binding = result["kubernetes.io"]
    del binding["pod"], binding["node"]
    binding["secret"] = {"name": "agent-token", "uid": "1234"}
    return result


def _legacy(issuer: LocalIssuer, clock: Clock) -> dict[str, Any]:
    return {
        "iss": "kubernetes/serviceaccount",
        "kubernetes.io/serviceaccount/namespace": "team-a",
        "kubernetes.io/serviceaccount/secret.name": "agent-token-abcde",
        "kubernetes.io/serviceaccount/service-account.name": "agent",
        "kubernetes.io/serviceaccount/service-account.uid": "1234",
        "sub": "system:serviceaccount:team-a:agent",
    }


# Each REASON code with a token that provokes it. Tokens are signed by the issuer's RSA key
# unless the case builds raw bytes.
REASON_CASES: list[tuple[str, Callable[[LocalIssuer, Clock], str]]] = [
    ("malformed_token", lambda i, c: "not-a-jwt"),
    ("token_too_large", lambda i, c: i.sign(claims(i, c, padding="x" * 17000))),
    ("unsupported_algorithm", lambda i, c: raw_token({"alg": "HS256", "kid": "k"}, claims(i, c))),
    ("unknown_key", lambda i, c: i.sign(claims(i, c), key=IssuerKey.generate())),
    ("bad_signature", lambda i, c: i.mint("team-a", "agent", audiences=[AUDIENCE], now=c.now)[:-6] + "AAAAAA"),
    ("invalid_issuer", lambda i, c: i.sign(claims(i, c, iss="https://other.example.com"))),
    ("invalid_audience", lambda i, c: i.sign(claims(i, c, aud=["someone-else"]))),
    ("token_expired", lambda i, c: i.sign(claims(i, c, iat=c.now - 900, nbf=c.now - 900, exp=c.now - 300))),
    ("token_not_yet_valid", lambda i, c: i.sign(claims(i, c, nbf=c.now + 300, exp=c.now + 900))),
    ("token_issued_in_future", lambda i, c: i.sign(claims(i, c, iat=c.now + 300, nbf=_DROP, exp=c.now + 900))),
    ("token_ttl_too_long", lambda i, c: i.sign(claims(i, c, exp=c.now + 3600))),
    ("missing_claim", lambda i, c: i.sign(claims(i, c, exp=_DROP))),
    ("not_pod_bound", lambda i, c: i.sign(_secret_bound(i, c))),
    ("legacy_token", lambda i, c: i.sign(_legacy(i, c))),
    ("subject_mismatch", lambda i, c: i.sign(claims(i, c, sub="system:serviceaccount:kube-system:admin"))),
]


@pytest.mark.parametrize(("code", "make"), REASON_CASES, ids=[case[0] for case in REASON_CASES])
async def test_each_reason_code_is_provoked(issuer: LocalIssuer, clock: Clock, code: str, make: Any) -> None:
    assert await refusal(verifier_for(issuer, clock), make(issuer, clock)) == code


def test_reason_table_covers_every_code() -> None:
    # keys_unavailable needs a remote source; it is provoked in test_sources.py. The binding's
    # codes need a cluster; test_binding.py provokes each of them over HTTP.
    from tests.test_binding import BINDING_CODES

    assert {code for code, _ in REASON_CASES} | {"keys_unavailable"} | BINDING_CODES == set(VERIFICATION_CODES)


async def test_valid_token_gives_identity(issuer: LocalIssuer, clock: Clock) -> None:
    token = issuer.mint("team-a", "agent", audiences=["other", AUDIENCE], now=clock.now, pod="agent-7f9c")
    identity = await verifier_for(issuer, clock).verify(token)
    assert identity.username == "system:serviceaccount:team-a:agent"
    assert identity.pod.name == "agent-7f9c"
    assert identity.node is not None and identity.node.name == "node-1"
    assert identity.issuer == ISSUER
    assert identity.audiences == ("other", AUDIENCE)


async def test_ec_token_verifies(issuer: LocalIssuer, clock: Clock) -> None:
    ec_key = issuer.published[1]
    token = issuer.sign(claims(issuer, clock), key=ec_key)
    assert json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "==")) == {"alg": "ES256", "kid": ec_key.kid}
    assert (await verifier_for(issuer, clock).verify(token)).namespace == "team-a"


async def test_leeway_is_applied_and_configurable(issuer: LocalIssuer, clock: Clock) -> None:
    token = issuer.sign(claims(issuer, clock, exp=clock.now - 5))
    assert (await verifier_for(issuer, clock).verify(token)).namespace == "team-a"
    assert await refusal(verifier_for(issuer, clock, leeway=1), token) == "token_expired"


# -- attacks ------------------------------------------------------------------------------------
def _hs256_with_public_key(issuer: LocalIssuer, clock: Clock) -> str:
    rsa_key = issuer.published[0]
    secret = rsa_key.private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signing_input = raw_token({"alg": "HS256", "kid": rsa_key.kid}, claims(issuer, clock)).rsplit(".", 1)[0]
    mac = hmac.HMAC(secret, hashes.SHA256())
    mac.update(signing_input.encode())
    return signing_input + "." + b64url(mac.finalize())


def _rs256_for_ec_key(issuer: LocalIssuer, clock: Clock) -> str:
    rsa_key, ec_key = issuer.published
    return sign_token(rsa_key, {"alg": "RS256", "kid": ec_key.kid}, claims(issuer, clock))


def _es256(issuer: LocalIssuer, clock: Clock, signature: bytes) -> str:
    ec_key = issuer.published[1]
    unsigned = issuer.sign(claims(issuer, clock), key=ec_key).rsplit(".", 1)[0]
    return unsigned + "." + b64url(signature)


def _header_swap(issuer: LocalIssuer, clock: Clock, header: dict[str, Any]) -> str:
    rsa_key = issuer.published[0]
    return sign_token(rsa_key, {"alg": "RS256", "kid": rsa_key.kid, **header}, claims(issuer, clock))


def _dup_header(issuer: LocalIssuer, clock: Clock) -> str:
    rsa_key = issuer.published[0]
    header = f'{{"alg":"RS256","kid":"{rsa_key.kid}","alg":"none"}}'.encode()
    signing_input = b64url(header) + "." + b64url(json.dumps(claims(issuer, clock)).encode())
    return signing_input + "." + b64url(rsa_key.sign(signing_input.encode()))


def _dup_payload(issuer: LocalIssuer, clock: Clock) -> str:
    rsa_key = issuer.published[0]
    body = json.dumps(claims(issuer, clock))[:-1] + ',"sub":"system:serviceaccount:kube-system:admin"}'
    signing_input = b64url(json.dumps({"alg": "RS256", "kid": rsa_key.kid}).encode()) + "." + b64url(body.encode())
    return signing_input + "." + b64url(rsa_key.sign(signing_input.encode()))


def _non_utf8_payload(issuer: LocalIssuer, clock: Clock) -> str:
    rsa_key = issuer.published[0]
    signing_input = b64url(json.dumps({"alg": "RS256", "kid": rsa_key.kid}).encode()) + "." + b64url(b'{"a":"\xff"}')
    return signing_input + "." + b64url(rsa_key.sign(signing_input.encode()))


def _padded(issuer: LocalIssuer, clock: Clock) -> str:
    header, payload, signature = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now).split(".")
    return f"{header}.{payload}.{signature}=="


def _embedded_jwk(issuer: LocalIssuer, clock: Clock, *, real_kid: bool) -> str:
    """Signed by the attacker's key, which the header carries as `jwk`: it must be ignored."""
    attacker = IssuerKey.generate()
    kid = issuer.published[0].kid if real_kid else attacker.kid
    return sign_token(attacker, {"alg": "RS256", "kid": kid, "jwk": attacker.jwk()}, claims(issuer, clock))


def _other_cluster_same_kid(issuer: LocalIssuer, clock: Clock) -> str:
    stranger = IssuerKey.generate()
    return sign_token(stranger, {"alg": "RS256", "kid": issuer.published[0].kid}, claims(issuer, clock))


def _other_issuer(issuer: LocalIssuer, clock: Clock) -> str:
    other = LocalIssuer("https://other-cluster.example.com")
    return other.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)


def _jwe(issuer: LocalIssuer, clock: Clock) -> str:
    return ".".join(b64url(part) for part in (b'{"alg":"RSA-OAEP","enc":"A256GCM"}', b"k", b"iv", b"ct", b"tag"))


def _json_serialization(issuer: LocalIssuer, clock: Clock) -> str:
    header, payload, signature = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now).split(".")
    return json.dumps({"payload": payload, "protected": header, "signature": signature})


def _non_canonical_signature(issuer: LocalIssuer, clock: Clock) -> str:
    """The same signature bytes spelled differently: the unused low bits of the last character set."""
    token = issuer.sign(claims(issuer, clock), key=issuer.published[1])  # ES256: 86 chars, 4 spare bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    return token[:-1] + alphabet[alphabet.index(token[-1]) | 0x01]  # canonical: those bits are 0


def _infinite_exp(issuer: LocalIssuer, clock: Clock) -> str:
    key = issuer.published[0]
    body = json.dumps(claims(issuer, clock, exp="__inf__")).replace('"__inf__"', "1e400")
    signing_input = b64url(json.dumps({"alg": "RS256", "kid": key.kid}).encode()) + "." + b64url(body.encode())
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def _with_warnafter(values: dict[str, Any], warn_after: object) -> dict[str, Any]:
    values["kubernetes.io"]["warnafter"] = warn_after
    return values


async def test_warnafter_is_decoded_into_the_identity(issuer: LocalIssuer, clock: Clock) -> None:
    token = issuer.sign(_with_warnafter(claims(issuer, clock), int(clock.now) - 5))
    identity = await verifier_for(issuer, clock).verify(token)
    assert identity.warn_after == int(clock.now) - 5


async def test_max_ttl_zero_means_no_lifetime_cap(issuer: LocalIssuer, clock: Clock) -> None:
    year_long = issuer.sign(claims(issuer, clock, exp=int(clock.now) + 365 * 86400))
    assert await refusal(verifier_for(issuer, clock), year_long) == "token_ttl_too_long"
    identity = await verifier_for(issuer, clock, max_ttl=0).verify(year_long)
    assert identity.expires_at - identity.issued_at > 364 * 86400


def _path_in_namespace(issuer: LocalIssuer, clock: Clock) -> str:
    """Signed by a trusted issuer, but a namespace no API server allows: it would reach a SAN."""
    tampered = claims(issuer, clock, sub="system:serviceaccount:team-a/sa/admin:agent")
    tampered["kubernetes.io"]["namespace"] = "team-a/sa/admin"
    return issuer.sign(tampered)


ATTACKS: list[tuple[str, str, Callable[[LocalIssuer, Clock], str]]] = [
    ("alg-none", "unsupported_algorithm", lambda i, c: raw_token({"alg": "none", "kid": "x"}, claims(i, c), b"")),
    ("alg-none-capitals", "unsupported_algorithm", lambda i, c: raw_token({"alg": "None"}, claims(i, c), b"")),
    ("alg-missing", "malformed_token", lambda i, c: raw_token({"kid": "x"}, claims(i, c))),
    ("ps256", "unsupported_algorithm", lambda i, c: raw_token({"alg": "PS256", "kid": "x"}, claims(i, c))),
    ("hs256-with-rsa-public-key", "unsupported_algorithm", _hs256_with_public_key),
    ("rs256-for-ec-key", "unsupported_algorithm", _rs256_for_ec_key),
    ("es256-signature-too-short", "bad_signature", lambda i, c: _es256(i, c, b"\x01" * 63)),
    ("es256-signature-der-encoded", "bad_signature", lambda i, c: _es256(i, c, b"\x30\x44" + b"\x01" * 68)),
    ("ecdsa-r-s-zero-cve-2022-21449", "bad_signature", lambda i, c: _es256(i, c, b"\x00" * 64)),
    (
        "ecdsa-r-s-order",
        "bad_signature",
        lambda i, c: _es256(
            i, c, bytes.fromhex("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551" * 2)
        ),
    ),
    ("jwk-header-with-own-key", "unknown_key", lambda i, c: _embedded_jwk(i, c, real_kid=False)),
    ("jwk-header-with-real-kid", "bad_signature", lambda i, c: _embedded_jwk(i, c, real_kid=True)),
    ("crit-header", "malformed_token", lambda i, c: _header_swap(i, c, {"crit": ["exp"], "exp": 1})),
    ("b64-false", "malformed_token", lambda i, c: _header_swap(i, c, {"b64": False, "crit": ["b64"]})),
    ("b64-false-without-crit", "malformed_token", lambda i, c: _header_swap(i, c, {"b64": False})),
    ("typ-not-jwt", "malformed_token", lambda i, c: _header_swap(i, c, {"typ": "JWE"})),
    ("jwe-five-parts", "malformed_token", _jwe),
    ("json-serialization", "malformed_token", _json_serialization),
    ("duplicate-header-member", "malformed_token", _dup_header),
    ("duplicate-payload-member", "malformed_token", _dup_payload),
    ("oversized", "token_too_large", lambda i, c: "a" * (16 * 1024 + 1)),
    ("ten-thousand-dots", "malformed_token", lambda i, c: "." * 10_000),
    ("non-ascii-characters", "malformed_token", lambda i, c: "é" + i.mint(audiences=[AUDIENCE], now=c.now)),
    ("non-utf8-payload", "malformed_token", _non_utf8_payload),
    ("base64-padding", "malformed_token", _padded),
    ("base64-standard-alphabet", "malformed_token", lambda i, c: "a+b/.c.d"),
    (
        "empty-signature",
        "malformed_token",
        lambda i, c: i.mint(audiences=[AUDIENCE], now=c.now).rsplit(".", 1)[0] + ".",
    ),
    ("nan-claim", "malformed_token", lambda i, c: raw_token({"alg": "RS256", "kid": "x"}, b'{"exp": NaN}')),
    ("header-is-array", "malformed_token", lambda i, c: raw_token(b"[1]", claims(i, c))),
    ("other-issuer-other-key", "unknown_key", _other_issuer),
    ("other-cluster-same-kid", "bad_signature", _other_cluster_same_kid),
    ("base64-non-canonical-signature", "malformed_token", _non_canonical_signature),
    ("exp-infinite", "malformed_token", _infinite_exp),
    ("nbf-null", "malformed_token", lambda i, c: i.sign(claims(i, c, nbf=None))),
    ("typ-null", "malformed_token", lambda i, c: _header_swap(i, c, {"typ": None})),
    ("jti-not-a-string", "malformed_token", lambda i, c: i.sign(claims(i, c, jti=7))),
    ("namespace-with-path", "malformed_token", _path_in_namespace),
    (
        "pod-name-not-kubernetes",
        "malformed_token",
        lambda i, c: i.sign(
            claims(
                i,
                c,
                **{
                    "kubernetes.io": {
                        "namespace": "team-a",
                        "serviceaccount": {"name": "agent", "uid": "u"},
                        "pod": {"name": "Pod One", "uid": "u"},
                    }
                },
            )
        ),
    ),
    ("exp-as-string", "malformed_token", lambda i, c: i.sign(claims(i, c, exp=str(int(c.now) + 60)))),
    ("exp-as-bool", "malformed_token", lambda i, c: i.sign(claims(i, c, exp=True))),
    # 400 digits: once an OverflowError and a 500 (float conversion of a huge int)
    ("exp-400-digits", "malformed_token", lambda i, c: i.sign(claims(i, c, exp=10**400))),
    ("warnafter-as-string", "malformed_token", lambda i, c: i.sign(_with_warnafter(claims(i, c), "soon"))),
    ("aud-not-strings", "malformed_token", lambda i, c: i.sign(claims(i, c, aud=[AUDIENCE, 7]))),
    (
        "pod-without-uid",
        "not_pod_bound",
        lambda i, c: i.sign(
            claims(
                i,
                c,
                **{
                    "kubernetes.io": {
                        "namespace": "team-a",
                        "serviceaccount": {"name": "agent", "uid": "u"},
                        "pod": {"name": "p"},
                    }
                },
            )
        ),
    ),
]


@pytest.mark.parametrize(("code", "make"), [a[1:] for a in ATTACKS], ids=[a[0] for a in ATTACKS])
async def test_attack_is_refused(issuer: LocalIssuer, clock: Clock, code: str, make: Any) -> None:
    assert await refusal(verifier_for(issuer, clock), make(issuer, clock)) == code


async def test_jku_and_x5u_headers_are_never_fetched(issuer: LocalIssuer, clock: Clock, serve_issuer: Any) -> None:
    decoy = await serve_issuer()  # a real server that counts every request made to it
    stranger = IssuerKey.generate()
    decoy.published = [stranger]
    header = {"alg": "RS256", "kid": stranger.kid, "jku": decoy.jwks_uri, "x5u": decoy.jwks_uri}
    token = sign_token(stranger, header, claims(issuer, clock))
    assert await refusal(verifier_for(issuer, clock), token) == "unknown_key"
    assert sum(decoy.requests.values()) == 0


# -- the real EKS token --------------------------------------------------------------------------
EKS_IAT = 1763969878


def eks_verifier(now: float, **options: Any) -> Verifier:
    source = StaticKeySource(parse_jwks((EKS_FIXTURES / "jwks.json").read_bytes()), label="static:eks")
    return Verifier(source, ["sts.amazonaws.com"], clock=lambda: now, **options)


async def test_real_eks_token_is_accepted_with_its_clock() -> None:
    token = (EKS_FIXTURES / "token.jwt").read_text().strip()
    identity = await eks_verifier(EKS_IAT + 60, max_ttl=24 * 3600).verify(token)
    assert identity.username == "system:serviceaccount:hakawai:hakawai-litellm-proxy"
    assert identity.issuer.startswith("https://oidc.eks.eu-west-1.amazonaws.com/id/")
    assert identity.node is not None


async def test_real_eks_token_is_too_long_lived_by_default() -> None:
    token = (EKS_FIXTURES / "token.jwt").read_text().strip()
    assert await refusal(eks_verifier(EKS_IAT + 60), token) == "token_ttl_too_long"


async def test_real_eks_token_is_expired_today() -> None:
    import time

    token = (EKS_FIXTURES / "token.jwt").read_text().strip()
    assert await refusal(eks_verifier(time.time(), max_ttl=24 * 3600), token) == "token_expired"


async def test_real_eks_token_with_one_flipped_payload_bit_fails() -> None:
    header, payload, signature = (EKS_FIXTURES / "token.jwt").read_text().strip().split(".")
    flipped = payload[:10] + ("A" if payload[10] != "A" else "B") + payload[11:]
    code = await refusal(eks_verifier(EKS_IAT + 60, max_ttl=24 * 3600), f"{header}.{flipped}.{signature}")
    assert code in {"bad_signature", "malformed_token"}


# -- the verified-token cache -------------------------------------------------------------------
async def test_cached_token_still_expires(issuer: LocalIssuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    token = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    await verifier.verify(token)
    await verifier.verify(token)
    assert verifier.cache_hits == 1
    clock.advance(3600)
    assert await refusal(verifier, token) == "token_expired"


async def test_cached_token_is_refused_once_its_key_leaves_the_key_set(clock: Clock, serve_issuer: Any) -> None:
    from verifier import OIDCKeySource

    live = await serve_issuer()
    source = OIDCKeySource(live.issuer, allow_http=True, clock=clock)
    verifier = Verifier(source, [AUDIENCE], clock=clock)
    token = live.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    await verifier.verify(token)
    live.rotate()
    live.retire(live.published[0].kid)
    assert await source.refresh()
    assert await refusal(verifier, token) == "unknown_key"
    await source.close()


def _header_segment(token: str) -> bytes:
    return token.split(".", 1)[0].encode()


async def test_header_memo_keeps_only_headers_that_led_to_a_valid_signature(issuer: LocalIssuer, clock: Clock) -> None:
    # Issue 20, item 3: the memo kept the first 256 headers it saw, before any signature was
    # checked, so a flood of made-up headers filled it and the real header never got in.
    verifier = verifier_for(issuer, clock)
    stranger = IssuerKey.generate("P-256")
    signer = issuer.published[0]
    for index in range(300):  # well-formed headers: unknown kids, and the real kid with a forged signature
        token = sign_token(stranger, {"alg": "ES256", "kid": f"made-up-{index}"}, claims(issuer, clock))
        assert await refusal(verifier, token) == "unknown_key"
        forged = sign_token(stranger, {"alg": signer.alg, "kid": signer.kid, "n": index}, claims(issuer, clock))
        assert await refusal(verifier, forged) == "bad_signature"
    assert len(verifier._headers) == 0 and verifier._headers.nbytes == 0
    good = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now)
    await verifier.verify(good)
    assert _header_segment(good) in verifier._headers
    # a remembered header still leads to a full verification of each token
    assert await refusal(verifier, good[:-6] + "AAAAAA") == "bad_signature"
    # a valid signature with claims refused still shows the header is the issuer's
    expired = issuer.sign(claims(issuer, clock, iat=clock.now - 900, nbf=clock.now - 900, exp=clock.now - 300))
    assert await refusal(verifier, expired) == "token_expired"
    assert len(verifier._headers) == 1


async def test_header_memo_is_bounded_in_bytes(issuer: LocalIssuer, clock: Clock) -> None:
    from verifier.jose import HEADER_MEMO_BYTES, HEADER_MEMO_MAX_SEGMENT

    verifier = verifier_for(issuer, clock, cache_size=0)
    signer = issuer.published[0]
    segments = []
    for index in range(400):  # distinct headers, each validly signed (an issuer rotating often)
        token = (
            issuer.sign(claims(issuer, clock))
            if index == 0
            else sign_token(signer, {"alg": signer.alg, "kid": signer.kid, "n": index}, claims(issuer, clock))
        )
        await verifier.verify(token)
        segments.append(_header_segment(token))
        assert verifier._headers.nbytes <= HEADER_MEMO_BYTES
    assert 50 < len(verifier._headers) < 400
    assert segments[-1] in verifier._headers and segments[0] not in verifier._headers  # the oldest go first
    long = sign_token(
        signer, {"alg": signer.alg, "kid": signer.kid, "x": "x" * HEADER_MEMO_MAX_SEGMENT}, claims(issuer, clock)
    )
    await verifier.verify(long)
    assert _header_segment(long) not in verifier._headers


async def test_cache_is_least_recently_used_and_invisible_to_the_garbage_collector(
    issuer: LocalIssuer, clock: Clock
) -> None:
    verifier = verifier_for(issuer, clock, cache_size=3)
    tokens = [issuer.mint("team-a", f"agent-{n}", audiences=[AUDIENCE], now=clock.now) for n in range(4)]
    for token in tokens[:3]:
        await verifier.verify(token)
    await verifier.verify(tokens[0])  # a hit: now the most recently used
    await verifier.verify(tokens[3])  # evicts tokens[1], the least recently used
    assert (verifier.cache_hits, verifier.cache_entries) == (1, 3)
    await verifier.verify(tokens[0])
    await verifier.verify(tokens[2])
    assert verifier.cache_hits == 3
    await verifier.verify(tokens[1])
    assert verifier.cache_hits == 3 and verifier.cache_entries == 3
    # Issue 21: nothing in the cache is tracked by the collector, so a full collection never walks it.
    assert verifier._cache is not None
    assert not any(
        gc.is_tracked(part) for part in (verifier._cache._entries, verifier._cache._seq, verifier._cache._order)
    )


async def test_a_cache_hit_judges_the_claims_again(issuer: LocalIssuer, clock: Clock) -> None:
    verifier = verifier_for(issuer, clock)
    token = issuer.mint("team-a", "agent", audiences=[AUDIENCE], now=clock.now, pod="agent-1")
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first and verifier.cache_hits == 1
    clock.advance(60)
    assert await verifier.verify(token) == first  # still valid a minute later
    clock.advance(-7200)  # the clock, as now, not as when it was first verified
    assert await refusal(verifier, token) == "token_not_yet_valid"
