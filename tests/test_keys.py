"""JWKS parsing: usable signing keys are kept, everything else is skipped with a reason."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from auth.devtools.issuer import IssuerKey, _uint
from tests.conftest import EKS_FIXTURES, KUBE_FIXTURES
from verifier import KeySourceError, StaticKeySource, parse_jwks
from verifier.keys import keep_unchanged


def test_kube_fixture_keys_are_bound_to_their_algorithms() -> None:
    keys = parse_jwks((KUBE_FIXTURES / "jwks.json").read_bytes()).keys
    assert {kid: key.alg for kid, key in keys.items()} == {
        "JHJehTTTZlsspKHT-GaJxK7Kd1NQgZJu3fyK6K_QDYU": "RS256",
        "SoABiieYuNx4UdqYvZRVeuC6SihxgLrhLy9peHMHpTc": "ES256",
    }


def test_real_eks_jwks_has_thirteen_rsa_keys() -> None:
    key_set = parse_jwks((EKS_FIXTURES / "jwks.json").read_bytes())
    assert len(key_set.keys) == 13
    assert {key.alg for key in key_set.keys.values()} == {"RS256"}
    assert key_set.skipped == ()


def _small_rsa() -> dict[str, Any]:
    numbers = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_numbers()
    return {"kty": "RSA", "kid": "small", "n": _uint(numbers.n), "e": _uint(numbers.e)}


def _private_rsa() -> dict[str, Any]:
    jwk: dict[str, Any] = IssuerKey.generate().jwk()
    jwk["d"] = "AQAB"
    return jwk


SKIPPED: list[tuple[str, Any, str]] = [
    ("rsa-1024", _small_rsa, "at least 2048"),
    (
        "ed25519",
        lambda: {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
        "kty",
    ),
    ("symmetric", lambda: {"kty": "oct", "kid": "hs", "k": "c2VjcmV0"}, "kty"),
    ("encryption-key", lambda: {**IssuerKey.generate().jwk(), "use": "enc"}, "use"),
    ("no-verify-op", lambda: {**IssuerKey.generate().jwk(), "key_ops": ["encrypt"]}, "key_ops"),
    ("secp256k1", lambda: {"kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA"}, "curve"),
    ("point-off-curve", lambda: {**IssuerKey.generate("P-256").jwk(), "y": "AAAA"}, "not on the curve"),
    ("alg-mismatch", lambda: {**IssuerKey.generate("P-384").jwk(), "alg": "ES256"}, "does not fit"),
    ("private-material", _private_rsa, "private"),
    ("no-kid", lambda: {k: v for k, v in IssuerKey.generate().jwk().items() if k != "kid"}, "no kid"),
    ("not-an-object", lambda: "key", "not an object"),
]


@pytest.mark.parametrize(("make", "reason"), [s[1:] for s in SKIPPED], ids=[s[0] for s in SKIPPED])
def test_unusable_entries_are_skipped_not_fatal(make: Any, reason: str) -> None:
    good = IssuerKey.generate("P-256").jwk()
    key_set = parse_jwks({"keys": [make(), good]})
    assert list(key_set.keys) == [good["kid"]]
    assert len(key_set.skipped) == 1 and reason in key_set.skipped[0]


@pytest.mark.parametrize("kind", ["RSA", "P-256", "P-384", "P-521"])
def test_generated_keys_round_trip_with_their_algorithm(kind: str) -> None:
    key = IssuerKey.generate(kind)
    imported = parse_jwks({"keys": [key.jwk()]}).keys[key.kid]
    assert imported.alg == key.alg
    assert imported.verify(b"data", key.sign(b"data"))
    assert not imported.verify(b"other", key.sign(b"data"))


def test_duplicate_kid_keeps_the_first() -> None:
    first, second = IssuerKey.generate("P-256"), IssuerKey.generate("P-256")
    key_set = parse_jwks({"keys": [first.jwk(), {**second.jwk(), "kid": first.kid}]})
    assert key_set.keys[first.kid].verify(b"x", first.sign(b"x"))
    assert "duplicate kid" in key_set.skipped[0]


_VALID_KEYS = json.dumps([IssuerKey.generate("P-256").jwk()]).encode()


@pytest.mark.parametrize(
    "document",
    [b"not json", b"[]", b'{"keys": {}}', b"{}", b'{"keys": {}, "keys": ' + _VALID_KEYS + b"}", b'{"keys": [NaN]}'],
    ids=["text", "array", "dict", "empty", "duplicate-member", "nan"],
)
def test_unusable_document_is_an_error(document: bytes) -> None:
    # duplicate members and NaN: read as strictly as every untrusted document (json.loads kept the last "keys")
    with pytest.raises(KeySourceError):
        parse_jwks(document)


def test_a_jwks_of_junk_is_refused_in_a_message_of_fixed_size() -> None:
    """Issue 20, item 1: the refusal named every skipped entry (10,000 here: about 900 KB)."""
    junk = parse_jwks({"keys": [{"kid": "k" * 80 + str(n), "kty": "oct" * 30} for n in range(10000)]})
    with pytest.raises(KeySourceError) as refused:
        StaticKeySource(junk, label="static:junk")
    assert len(str(refused.value)) < 600 and str(refused.value).endswith("; and 9,997 more")


def test_keep_unchanged_keeps_objects_only_for_the_same_key() -> None:
    first, second = IssuerKey.generate("P-256"), IssuerKey.generate("P-256")
    old = parse_jwks({"keys": [first.jwk(), {**second.jwk(), "kid": "shared"}]})
    new = parse_jwks({"keys": [first.jwk(), {**IssuerKey.generate("P-256").jwk(), "kid": "shared"}]})
    kept = keep_unchanged(new, old)
    assert kept.keys[first.kid] is old.keys[first.kid]  # same material: the same object
    assert kept.keys["shared"] is new.keys["shared"]  # other material under an old kid: the new key
    assert keep_unchanged(new, None) is new
    # the verified-token cache tells key objects apart by serial: equal serials, the same object
    assert kept.keys[first.kid].serial == old.keys[first.kid].serial
    assert kept.keys["shared"].serial != old.keys["shared"].serial


def test_every_key_object_has_its_own_serial() -> None:
    jwk = IssuerKey.generate("P-256").jwk()
    one, two = parse_jwks({"keys": [jwk]}), parse_jwks({"keys": [jwk]})
    key = one.keys[jwk["kid"]]
    assert key == two.keys[jwk["kid"]] and key.serial != two.keys[jwk["kid"]].serial
    assert dataclasses.replace(key).serial != key.serial
