"""Public signing keys from a JWKS, each bound to the one JWS algorithm it may verify.

A key is imported once, when its key set changes; verifying a token then costs one signature check.
Entries that are not RSA (2048 bits or more) or EC (P-256, P-384, P-521) signing keys are skipped,
not fatal: a key set that also publishes an encryption key still verifies tokens.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from joserfc.errors import JoseError, SecurityWarning
from joserfc.jwk import ECKey, RSAKey

from .errors import KeySourceError
from .jose import load_strict_json
from .texts import clip, cut

MIN_RSA_BITS: Final = 2048
# JWK curve name -> (JWS algorithm, hash, bytes per coordinate, group order)
_EC_CURVES: Final[Mapping[str, tuple[str, hashes.HashAlgorithm, int, int]]] = {
    "P-256": (
        "ES256",
        hashes.SHA256(),
        32,
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    ),
    "P-384": (
        "ES384",
        hashes.SHA384(),
        48,
        int(
            "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
            16,
        ),
    ),
    "P-521": (
        "ES512",
        hashes.SHA512(),
        66,
        int(
            "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA51868783BF2F966B7FCC"
            "0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
            16,
        ),
    ),
}
_PKCS1V15: Final = padding.PKCS1v15()
_SHA256: Final = hashes.SHA256()
# Numbers for VerifyingKey.serial: unique among the keys of this process, never reused.
_SERIALS: Final = itertools.count(1)


@dataclass(frozen=True, slots=True)
class VerifyingKey:
    """One public key and the only algorithm a token signed with it may name."""

    kid: str
    alg: str
    description: str  # e.g. "RSA 2048" or "EC P-256", for messages
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = field(repr=False)
    signature_size: int  # exact length of a valid signature in bytes
    # This key object's number, unique in the process (a copy made with dataclasses.replace gets
    # its own). The verified-token cache keeps it instead of the key itself: a record of strings
    # and numbers is one the garbage collector need not track, and equal serials mean the very key
    # object a token was verified with is still the one held.
    serial: int = field(default_factory=_SERIALS.__next__, init=False, repr=False, compare=False)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Checks the signature; a signature of the wrong length or with r or s out of range is
        invalid before any arithmetic (ECDSA r = s = 0, CVE-2022-21449)."""
        if len(signature) != self.signature_size:
            return False
        try:
            # The algorithm says the key type (key_from_jwk binds RS256 to RSA keys and each ES
            # algorithm to its curve): a string comparison and a table lookup where an isinstance
            # check against the ABC and a curve lookup cost a microsecond per token.
            if self.alg == "RS256":
                self.public_key.verify(signature, signing_input, _PKCS1V15, _SHA256)  # type: ignore[call-arg,arg-type]
                return True
            size, order, ecdsa = _ECDSA[self.alg]
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            if not (0 < r < order and 0 < s < order):
                return False
            self.public_key.verify(encode_dss_signature(r, s), signing_input, ecdsa)  # type: ignore[call-arg,arg-type]
            return True
        except InvalidSignature:
            return False


# JWS algorithm -> (bytes per coordinate, group order, the ECDSA parameters to verify with)
_ECDSA: Final[Mapping[str, tuple[int, int, ec.ECDSA]]] = {
    alg: (size, order, ec.ECDSA(hash_alg)) for alg, hash_alg, size, order in _EC_CURVES.values()
}


def _curve_name(key: ec.EllipticCurvePublicKey) -> str:
    return {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}.get(key.curve.name, "")


def key_from_jwk(jwk: Mapping[str, Any]) -> VerifyingKey:
    """Imports one JWK as a verifying key, or raises ValueError saying why it is not usable."""
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not kid:
        raise ValueError("no kid")
    if "d" in jwk:
        raise ValueError("private key material published; refusing it")
    if jwk.get("use", "sig") != "sig":
        raise ValueError(f"use is {clip(jwk.get('use'), 40)}, not sig")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or "verify" not in ops):
        raise ValueError("key_ops does not allow verify")
    kty = jwk.get("kty")
    try:
        if kty == "RSA":
            with warnings.catch_warnings():
                # joserfc warns about small keys; we refuse them ourselves just below.
                warnings.simplefilter("ignore", SecurityWarning)
                rsa_key = RSAKey.import_key(dict(jwk)).raw_value
            if not isinstance(rsa_key, rsa.RSAPublicKey):
                raise ValueError("not an RSA public key")
            if rsa_key.key_size < MIN_RSA_BITS:
                raise ValueError(f"RSA key of {rsa_key.key_size} bits; at least {MIN_RSA_BITS} required")
            key = VerifyingKey(kid, "RS256", f"RSA {rsa_key.key_size}", rsa_key, (rsa_key.key_size + 7) // 8)
        elif kty == "EC":
            crv = jwk.get("crv")
            if crv not in _EC_CURVES:
                raise ValueError(f"curve {clip(crv, 40)} is not P-256, P-384 or P-521")
            ec_key = ECKey.import_key(dict(jwk)).raw_value
            if not isinstance(ec_key, ec.EllipticCurvePublicKey) or _curve_name(ec_key) != crv:
                raise ValueError("not an EC public key on its curve")
            alg, _, size, _ = _EC_CURVES[crv]
            key = VerifyingKey(kid, alg, f"EC {crv}", ec_key, 2 * size)
        else:
            raise ValueError(f"kty {clip(kty, 40)} is not RSA or EC")
    except (JoseError, TypeError, KeyError) as exc:
        raise ValueError(f"not a valid {kty} key ({cut(str(exc))})") from None
    declared = jwk.get("alg")
    if declared is not None and declared != key.alg:
        raise ValueError(f"alg {clip(declared, 40)} does not fit a {key.description} key (expected {key.alg})")
    return key


@dataclass(frozen=True)
class KeySet:
    """The usable keys of one JWKS document, by kid, and notes on the entries skipped."""

    keys: Mapping[str, VerifyingKey]
    skipped: tuple[str, ...] = ()


def keep_unchanged(new: KeySet, old: KeySet | None) -> KeySet:
    """`new`, with each key whose kid, algorithm and public key are unchanged replaced by the
    object held in `old`. The verifier trusts a cached token only while its key object is still
    the one held, so a refresh that returns the same keys must keep the same objects: otherwise
    any caller could empty the cache with one unknown kid (each causes a refresh)."""
    if old is None:
        return new
    keys = dict(new.keys)
    for kid, key in new.keys.items():
        held = old.keys.get(kid)
        if held is not None and held.alg == key.alg and held.public_key == key.public_key:
            keys[kid] = held
    return KeySet(keys, new.skipped)


def parse_jwks(document: bytes | str | Mapping[str, Any]) -> KeySet:
    """Parses a JWKS document. Raises KeySourceError if the document itself is unusable."""
    value: object = document
    if isinstance(document, (bytes, str)):
        try:  # as strictly as every untrusted document: a member given twice is refused, not the last one kept
            value = load_strict_json(document.encode("utf-8") if isinstance(document, str) else document)
        except ValueError as exc:  # UnicodeDecodeError and UnicodeEncodeError (a lone surrogate) included
            raise KeySourceError(f"JWKS is not valid JSON ({cut(str(exc))})") from None
    if not isinstance(value, Mapping) or not isinstance(value.get("keys"), list):
        raise KeySourceError('JWKS must be a JSON object with a "keys" list')
    keys: dict[str, VerifyingKey] = {}
    skipped: list[str] = []
    for index, jwk in enumerate(value["keys"]):
        if not isinstance(jwk, Mapping):
            skipped.append(f"keys[{index}]: not an object")
            continue
        try:
            key = key_from_jwk(jwk)
        except ValueError as exc:
            skipped.append(f"keys[{index}]: {exc}")
            continue
        if key.kid in keys:
            skipped.append(f"keys[{index}]: duplicate kid {clip(key.kid, 64)}; the first one is kept")
            continue
        keys[key.kid] = key
    return KeySet(keys, tuple(skipped))
