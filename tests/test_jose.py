"""The JWS parser against joserfc, the library it replaces on the hot path.

Over generated tokens (valid ones, and ones with mutated headers, payloads, encodings and
signatures, each validly signed where the mutation allows it), verifier.jose plus the signature
check must agree with `joserfc.jwt.decode` on accept or refuse. Every disagreement must be one of
the deliberate policy choices listed in DIFFERENCES; a disagreement nobody listed fails the test.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import contextlib
import functools
import json
import string
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import hypothesis
import pytest
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import KeySet as JoseKeySet

from auth.devtools.issuer import IssuerKey, b64url, sign_token
from verifier import VerificationError, parse_jwks
from verifier.errors import Reason
from verifier.jose import MAX_TOKEN_BYTES, SUPPORTED_ALGORITHMS, b64url_decode, parse_compact
from verifier.keys import KeySet

KEY_NAMING_HEADERS: Final = frozenset({"jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256"})
# joserfc's header registry (JWS_HEADER_REGISTRY); with its default strict check any other name
# is refused.
JOSERFC_HEADERS: Final = frozenset({"alg", "kid", "typ", "cty", "crit", "b64"}) | KEY_NAMING_HEADERS
JOSERFC_MAX_HEADER: Final = 512  # bytes of the encoded header segment


@functools.cache
def keys() -> tuple[IssuerKey, ...]:
    return tuple(IssuerKey.generate(kind) for kind in ("RSA", "P-256", "P-384", "P-521"))


@functools.cache
def key_sets() -> tuple[KeySet, JoseKeySet]:
    document = {"keys": [key.jwk() for key in keys()]}
    return parse_jwks(document), JoseKeySet.import_key_set(document)  # type: ignore[arg-type]


def ours(token: str) -> Reason | None:
    """The verifier's JWS half: parse, find the key by kid, fit the alg, check the signature.
    None for accepted, else the reason code."""
    ours_keys = key_sets()[0].keys
    try:
        parsed = parse_compact(token)
    except VerificationError as exc:
        return exc.code
    key = ours_keys.get(parsed.kid) if parsed.kid is not None else None
    if key is None:
        return Reason.UNKNOWN_KEY
    if key.alg != parsed.alg:
        return Reason.UNSUPPORTED_ALGORITHM
    return None if key.verify(parsed.signing_input, parsed.signature) else Reason.BAD_SIGNATURE


def theirs(token: str) -> bool:
    """joserfc's verdict, with the same algorithm allow-list and key set."""
    try:
        jwt.decode(token, key_sets()[1], algorithms=sorted(SUPPORTED_ALGORITHMS))
    except Exception:  # any refusal, whatever joserfc calls it (it raises ValueError, TypeError, ...)
        return False
    return True


# What a lenient reader sees in a token: enough to say which listed difference applies.
@dataclass(frozen=True)
class Anatomy:
    token: str
    header_segment: str
    header: dict[str, Any] | None  # the header as joserfc reads it (last duplicate wins)
    traits: frozenset[str]  # "duplicate", "constant" (NaN, Infinity), "not_utf8", in header or payload


def _lenient_b64(segment: str) -> bytes | None:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None


def _json_traits(raw: bytes | None) -> set[str]:
    traits: set[str] = set()
    if raw is None:
        return traits
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        traits.add("not_utf8")
    if raw.startswith(codecs.BOM_UTF8):
        traits.add("not_utf8")

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        if len({name for name, _ in items}) != len(items):
            traits.add("duplicate")
        return dict(items)

    def constant(name: str) -> float:
        traits.add("constant")
        return float(name)

    with contextlib.suppress(ValueError, RecursionError):
        json.loads(raw, object_pairs_hook=pairs, parse_constant=constant)
    return traits


def anatomy(token: str) -> Anatomy:
    parts = token.split(".")
    header_raw = _lenient_b64(parts[0])
    header: dict[str, Any] | None = None
    with contextlib.suppress(ValueError, RecursionError):
        value = json.loads(header_raw) if header_raw is not None else None
        header = value if isinstance(value, dict) else None
    traits = _json_traits(header_raw)
    if len(parts) == 3:
        traits |= _json_traits(_lenient_b64(parts[1]))
    return Anatomy(token, parts[0], header, frozenset(traits))


@dataclass(frozen=True)
class Difference:
    refused_by: Literal["kubejoin", "joserfc"]
    why: str
    applies: Callable[[Anatomy], bool]


def _header_has(names: frozenset[str] | set[str]) -> Callable[[Anatomy], bool]:
    return lambda a: a.header is not None and bool(names & a.header.keys())


# Every deliberate disagreement with joserfc, and why. A disagreement not listed here fails.
DIFFERENCES: Final[dict[str, Difference]] = {
    "duplicate_member": Difference(
        "kubejoin",
        "RFC 7515 section 5.2 / RFC 7519 section 7.2: a JOSE header or claims set with duplicate "
        "names must be refused, or the last taken; we refuse, so no two parsers read one token "
        "two ways. joserfc's json.loads keeps the last.",
        lambda a: "duplicate" in a.traits,
    ),
    "json_constant": Difference(
        "kubejoin",
        "NaN and Infinity are not JSON (RFC 8259); Python's json.loads accepts them.",
        lambda a: "constant" in a.traits,
    ),
    "not_utf8": Difference(
        "kubejoin",
        "JSON between systems is UTF-8 (RFC 8259 section 8.1), without a byte order mark; "
        "json.loads on bytes guesses UTF-16/32, skips a BOM and lets surrogates through.",
        lambda a: "not_utf8" in a.traits,
    ),
    "unimplemented_header": Difference(
        "kubejoin",
        "crit, b64 and cty change how a token is processed and we implement none of them, so we "
        "refuse them rather than ignore them (kube-apiserver writes none); joserfc implements b64 "
        "(RFC 7797) and accepts crit naming headers it knows.",
        _header_has({"crit", "b64", "cty"}),
    ),
    "typ_not_jwt": Difference(
        "kubejoin",
        "typ, when present, must be JWT: a token typed for something else is not a ServiceAccount "
        "token; joserfc accepts any string.",
        lambda a: a.header is not None and isinstance(a.header.get("typ"), str) and a.header["typ"].upper() != "JWT",
    ),
    "token_too_large": Difference(
        "kubejoin",
        f"we refuse tokens over {MAX_TOKEN_BYTES} bytes before decoding anything (kube-apiserver "
        "tokens are about 1 KiB); joserfc allows a 128 kB payload.",
        lambda a: len(a.token) > MAX_TOKEN_BYTES,
    ),
    "unregistered_header": Difference(
        "joserfc",
        "RFC 7515 section 4: header parameters that are not understood must be ignored, and we "
        "ignore them; joserfc's default strict check refuses any name outside its registry.",
        lambda a: a.header is not None and bool(a.header.keys() - JOSERFC_HEADERS),
    ),
    "key_naming_header": Difference(
        "joserfc",
        "jku, jwk, x5u, x5c, x5t and x5t#S256 name other keys; we never read them (keys come only "
        "from the key source), so their values do not matter; joserfc checks their syntax.",
        _header_has(KEY_NAMING_HEADERS),
    ),
    "long_header": Difference(
        "joserfc",
        f"joserfc caps the encoded header at {JOSERFC_MAX_HEADER} bytes; we bound the whole token instead.",
        lambda a: len(a.header_segment) > JOSERFC_MAX_HEADER,
    ),
}


def explain(token: str, refused_by: str) -> list[str]:
    """The listed differences that account for a token refused by one side only."""
    seen = anatomy(token)
    return [name for name, d in DIFFERENCES.items() if d.refused_by == refused_by and d.applies(seen)]


def check_agreement(token: str) -> None:
    we_accept, they_accept = ours(token) is None, theirs(token)
    if we_accept == they_accept:
        hypothesis.event("both accept" if we_accept else "both refuse")
        return
    refused_by = "joserfc" if we_accept else "kubejoin"
    reasons = explain(token, refused_by)
    assert reasons, f"unlisted difference: only {refused_by} refuses {token!r}"
    hypothesis.event(f"only {refused_by} refuses: {', '.join(reasons)}")


# Generated tokens. Each dimension is usually left alone, so valid tokens stay common.
_JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
_HEADER_NAMES = st.sampled_from(
    ["alg", "kid", "typ", "cty", "crit", "b64", "zip", "enc", "jku", "jwk", "x5u", "x5c", "x5t", "x5t#S256", "foo"]
)
_HEADER_VALUES: st.SearchStrategy[Any] = (
    st.sampled_from(
        ["JWT", "jwt", "at+jwt", "RS256", "ES256", "ES384", "ES512", "PS256", "HS256", "none", "", "DEF", "A128GCM"]
    )
    | st.sampled_from([["kid"], ["exp"], ["b64"], [], True, False, 1, None, {}, "https://x.example/jwks"])
    | st.just("x" * 600)
    | _JSON
)


@st.composite
def header_text(draw: st.DrawFn, key: IssuerKey, mutate: bool) -> dict[str, Any]:
    header: dict[str, Any] = {"alg": key.alg, "kid": key.kid}  # kube-apiserver's header
    if mutate:
        for name, value in draw(st.lists(st.tuples(_HEADER_NAMES, _HEADER_VALUES), min_size=1, max_size=3)):
            header[name] = value
        if draw(st.integers(0, 4)) == 0:
            header.pop(draw(st.sampled_from(["alg", "kid"])), None)
    return header


@st.composite
def json_bytes(draw: st.DrawFn, value: dict[str, Any], mutate: bool) -> bytes:
    """The value as compact JSON, or spelled in a way a strict reader refuses."""
    text = json.dumps(value, separators=(",", ":"))
    if not mutate:
        return text.encode()
    how = draw(st.sampled_from(["spaces", "duplicate", "nan", "bom", "utf16", "bad_utf8", "list"]))
    if how == "spaces":
        return (" " + json.dumps(value, indent=1) + "\n").encode()
    if how == "duplicate" and value:
        first = next(iter(value))
        return ("{" + json.dumps(first) + ":" + json.dumps(draw(_JSON)) + "," + text[1:]).encode()
    if how == "nan":
        return ('{"nan":NaN,' + text[1:] if value else '{"nan":Infinity}').encode()
    if how == "bom":
        return codecs.BOM_UTF8 + text.encode()
    if how == "utf16":
        return text.encode("utf-16")
    if how == "bad_utf8":
        return ('{"\udcff":1,' + text[1:] if value else '{"\udcff":1}').encode("utf-8", "surrogateescape")
    return ("[" + text + "]").encode()


_CLAIMS = st.fixed_dictionaries(
    {"iss": st.just("https://kubernetes.default.svc"), "sub": st.text(max_size=20), "exp": st.integers(0, 2**40)}
) | st.dictionaries(st.text(max_size=8), _JSON, max_size=5)


@st.composite
def segment(draw: st.DrawFn, raw: bytes, mutate: bool) -> str:
    """The base64url encoding of raw, or a non-canonical spelling of it."""
    encoded = b64url(raw)
    if not mutate:
        return encoded
    how = draw(st.sampled_from(["padded", "standard", "unused_bits", "junk"]))
    if how == "padded":
        return encoded + "=" * (-len(encoded) % 4 or 4)
    if how == "standard":
        return base64.b64encode(raw).decode().rstrip("=") + "+/"
    if how == "unused_bits" and len(encoded) % 4 in (2, 3):
        alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
        return encoded[:-1] + alphabet[alphabet.index(encoded[-1]) | 1]
    where = draw(st.integers(0, len(encoded)))
    return encoded[:where] + draw(st.sampled_from([" ", "\n", "!", "é", ".", "*", "="])) + encoded[where:]


def _damage(draw: st.DrawFn, signature: bytes) -> bytes:
    how = draw(st.sampled_from(["truncated", "flipped", "empty", "zero_prefixed", "ecdsa_zero"]))
    if how == "truncated":
        return signature[:-1]
    if how == "flipped":
        where = draw(st.integers(0, len(signature) - 1))
        return signature[:where] + bytes([signature[where] ^ 1]) + signature[where + 1 :]
    if how == "zero_prefixed":
        return b"\x00" + signature
    if how == "ecdsa_zero":
        return bytes(len(signature))  # r = s = 0 (CVE-2022-21449)
    return b""


# The parts of a token a generated example may damage; most examples damage none or one.
DIMENSIONS: Final = (
    "header",
    "header_json",
    "header_b64",
    "payload_json",
    "payload_b64",
    "signature",
    "signature_b64",
    "signer",
    "shape",
    "size",
)


@st.composite
def tokens(draw: st.DrawFn) -> str:
    damaged = draw(st.just(frozenset[str]()) | st.frozensets(st.sampled_from(DIMENSIONS), min_size=1, max_size=2))
    key = draw(st.sampled_from(keys()))
    header_json = draw(json_bytes(draw(header_text(key, "header" in damaged)), "header_json" in damaged))
    header = draw(segment(header_json, "header_b64" in damaged))
    claims = draw(_CLAIMS)
    if "size" in damaged:
        claims["pad"] = "x" * draw(st.integers(MAX_TOKEN_BYTES - 2000, MAX_TOKEN_BYTES))
    payload = draw(segment(draw(json_bytes(claims, "payload_json" in damaged)), "payload_b64" in damaged))
    signing_input = f"{header}.{payload}"
    signer = draw(st.sampled_from([k for k in keys() if k is not key])) if "signer" in damaged else key
    signature = signer.sign(signing_input.encode("utf-8"))
    if "signature" in damaged:
        signature = _damage(draw, signature)
    token = f"{signing_input}.{draw(segment(signature, 'signature_b64' in damaged))}"
    if "shape" in damaged:
        token = draw(
            st.sampled_from([token + ".e30", token.rsplit(".", 1)[0], token + ".." + b64url(b"tag"), "." + token])
        )
    return token


@pytest.mark.slow
@hypothesis.settings(max_examples=400, deadline=None)
@hypothesis.given(tokens())
def test_agrees_with_joserfc_but_for_listed_differences(token: str) -> None:
    check_agreement(token)


@pytest.mark.parametrize("kind", range(4), ids=["RSA", "P-256", "P-384", "P-521"])
def test_both_accept_a_kube_apiserver_token(kind: int) -> None:
    key = keys()[kind]
    token = sign_token(key, {"alg": key.alg, "kid": key.kid}, {"iss": "https://kubernetes.default.svc", "sub": "x"})
    assert ours(token) is None
    assert theirs(token)


def _signed(header: dict[str, Any], claims: bytes = b'{"sub":"x"}') -> str:
    key = keys()[0]
    signing_input = f"{b64url(json.dumps({'alg': key.alg, 'kid': key.kid, **header}).encode())}.{b64url(claims)}"
    return f"{signing_input}.{b64url(key.sign(signing_input.encode()))}"


# One token per listed difference: each is a real disagreement today, and the table explains it.
# When joserfc changes and a case stops differing, the entry no longer earns its place.
WITNESSES: Final = {
    "duplicate_member": _signed({}, b'{"sub":"x","sub":"y"}'),
    "json_constant": _signed({}, b'{"exp":NaN}'),
    "not_utf8": _signed({}, codecs.BOM_UTF8 + b'{"sub":"x"}'),
    "unimplemented_header": _signed({"crit": ["kid"]}),
    "typ_not_jwt": _signed({"typ": "at+jwt"}),
    "token_too_large": _signed({}, b'{"pad":"' + b"x" * MAX_TOKEN_BYTES + b'"}'),
    "unregistered_header": _signed({"foo": 1}),
    "key_naming_header": _signed({"jku": 1}),
    "long_header": _signed({"x5t": "x" * 600}),
}


@pytest.mark.parametrize("name", sorted(DIFFERENCES))
def test_each_listed_difference_is_real(name: str) -> None:
    token = WITNESSES[name]
    refused_by = DIFFERENCES[name].refused_by
    assert (ours(token) is None) == (refused_by == "joserfc")
    assert theirs(token) == (refused_by == "kubejoin")
    assert name in explain(token, refused_by)


def strict_b64url_decode(part: bytes) -> bytes | str:
    """The straightforward decoder, as the reference for b64url_decode's one-translate fast path:
    the same refusals in the same order, then binascii's strict mode for any other stray byte.
    Returns the bytes or the refusal's message."""
    if b"=" in part or b"+" in part or b"/" in part or len(part) % 4 == 1:
        return "x is not unpadded base64url"
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    unused = {2: 0x0F, 3: 0x03}.get(len(part) % 4)
    if unused is not None and part[-1:] and part[-1] in alphabet and alphabet.index(part[-1]) & unused:
        return "x is not canonical base64url"
    try:
        standard = part.translate(bytes.maketrans(b"-_", b"+/"))
        return binascii.a2b_base64(standard + b"=" * (-len(part) % 4), strict_mode=True)
    except (binascii.Error, ValueError):
        return "x is not unpadded base64url"


def fast_b64url_decode(part: bytes) -> bytes | str:
    try:
        return b64url_decode(part, "x")
    except VerificationError as exc:
        assert exc.code == Reason.MALFORMED_TOKEN
        return exc.message


@hypothesis.settings(max_examples=1500, deadline=None)
@hypothesis.given(
    part=st.binary(max_size=12)
    | st.binary(max_size=40).map(lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"="))
    | st.lists(st.sampled_from(list(b"AQgw-_+/=*.! \n\x00\xff")), max_size=10).map(bytes)
)
def test_base64url_decoding_matches_the_strict_reference(part: bytes) -> None:
    assert fast_b64url_decode(part) == strict_b64url_decode(part)
