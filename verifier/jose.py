"""Strict parsing of compact JWS tokens.

Only the compact serialization of a signed JWT is accepted. Every byte is checked before it is
trusted: the alphabet of each part, the JSON (no duplicate names, no NaN), and the header fields we
do not implement (`crit`, `b64`, `zip`, `enc`, `cty`) are refused rather than ignored. Headers that
name other keys (`jku`, `x5u`, `jwk`, `x5c`) are ignored: a key comes only from the key source.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass
from typing import Any, Final

from .errors import Reason, VerificationError

MAX_TOKEN_BYTES: Final = 16 * 1024
SUPPORTED_ALGORITHMS: Final = frozenset({"RS256", "ES256", "ES384", "ES512"})
# Header parameters that change how a token must be processed; we implement none of them.
_REFUSED_HEADERS: Final = ("crit", "b64", "zip", "enc", "cty")
HEADER_MEMO_SIZE: Final = 256
HeaderMemo = dict[bytes, tuple[str, str | None]]


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A structurally valid compact JWS whose signature is not yet checked."""

    alg: str
    kid: str | None
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED_TOKEN, message)


# Bits of the last character that a canonical encoding leaves at zero, by len(part) % 4.
_UNUSED_BITS: Final = {2: 0x0F, 3: 0x03}
_URLSAFE: Final = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTET: Final = {c: i for i, c in enumerate(_URLSAFE)}
# base64url to standard base64, and every byte outside the base64url alphabet to "*" (outside
# both alphabets): one translate both converts and marks, so the decoder that follows need not
# run in its slower strict mode to refuse stray bytes.
_TO_STANDARD: Final = bytes(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[_URLSAFE.index(b)] if b in _URLSAFE else 0x2A
    for b in range(256)
)


def b64url_decode(part: bytes, what: str) -> bytes:
    """Decodes unpadded base64url, refusing padding, characters outside the alphabet, and
    non-canonical encodings (unused low bits set), so that one token has exactly one spelling."""
    standard = part.translate(_TO_STANDARD)
    stray = b"*" in standard
    if len(part) % 4 == 1 or (stray and (b"=" in part or b"+" in part or b"/" in part)):
        raise _malformed(f"{what} is not unpadded base64url")
    unused = _UNUSED_BITS.get(len(part) % 4)
    if unused is not None and _SEXTET.get(part[-1], 0) & unused:
        raise _malformed(f"{what} is not canonical base64url")
    if stray:
        raise _malformed(f"{what} is not unpadded base64url")
    try:  # only alphabet bytes are left, and the padding is right
        return binascii.a2b_base64(standard + b"=" * (-len(part) % 4))
    except (binascii.Error, ValueError):
        raise _malformed(f"{what} is not unpadded base64url") from None


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for name, _ in pairs:
            if name in seen:
                raise ValueError(f"duplicate member {name[:40]!r}")
            seen.add(name)
    return result


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# Built once: json.loads with options builds a new decoder on every call.
_STRICT_JSON: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def load_strict_json(raw: bytes) -> object:
    """JSON as this project reads every untrusted document (tokens, join and review bodies,
    discovery): UTF-8 only, no duplicate member names, no NaN or Infinity, and nesting too deep
    for the parser (65,000 `[` fit in 64 KiB) refused rather than a RecursionError. Raises
    ValueError (UnicodeDecodeError for bytes that are not UTF-8)."""
    text = raw.decode("utf-8")
    try:
        return _STRICT_JSON.decode(text)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parses a JSON object strictly (load_strict_json); refusals are malformed_token."""
    try:
        value = load_strict_json(raw)
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not UTF-8") from None
    except ValueError as exc:
        raise _malformed(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


def _check_header(header: dict[str, Any]) -> tuple[str, str | None]:
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise _malformed("header has no alg")
    if alg not in SUPPORTED_ALGORITHMS:
        raise VerificationError(
            Reason.UNSUPPORTED_ALGORITHM,
            f"alg {alg[:16]!r} is not accepted; expected one of {', '.join(sorted(SUPPORTED_ALGORITHMS))}",
        )
    for name in _REFUSED_HEADERS:
        if name in header:
            raise _malformed(f"header parameter {name!r} is not supported")
    if "typ" in header and (not isinstance(header["typ"], str) or header["typ"].upper() != "JWT"):
        raise _malformed("header typ must be JWT or absent")
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise _malformed("header kid must be a non-empty string")
    return alg, kid


def parse_compact(token: str, header_memo: HeaderMemo | None = None) -> ParsedToken:
    """Splits and decodes a compact JWS, checking size, structure and header (cheapest first).

    Distinct headers are few (one per issuer key), so a caller may pass a dict in which their
    checked parse is remembered; it holds at most HEADER_MEMO_SIZE entries, so a flood of made-up
    headers cannot grow it."""
    if len(token) > MAX_TOKEN_BYTES:
        raise VerificationError(
            Reason.TOKEN_TOO_LARGE, f"token is {len(token)} bytes; at most {MAX_TOKEN_BYTES} are accepted"
        )
    if not token:
        raise _malformed("token is empty")
    if not token.isascii():
        raise _malformed("token contains non-ASCII characters")
    if token[0] == "{":
        raise _malformed("JSON serialization is not accepted; send the compact form")
    dots = token.count(".")
    if dots == 4:
        raise _malformed("token has 5 parts (an encrypted JWE); a signed JWS has 3")
    if dots != 2:
        raise _malformed(f"token has {dots + 1} parts; a compact JWS has 3")
    raw = token.encode("ascii")
    header_b64, payload_b64, signature_b64 = raw.split(b".")
    header = header_memo.get(header_b64) if header_memo is not None else None
    if header is None:
        header = _check_header(parse_json_object(b64url_decode(header_b64, "header"), "header"))
        if header_memo is not None and len(header_memo) < HEADER_MEMO_SIZE:
            header_memo[header_b64] = header
    if not payload_b64 or not signature_b64:
        raise _malformed("token has an empty payload or signature")
    claims = parse_json_object(b64url_decode(payload_b64, "payload"), "payload")
    signature = b64url_decode(signature_b64, "signature")
    signing_input = raw[: len(header_b64) + 1 + len(payload_b64)]
    return ParsedToken(header[0], header[1], claims, signing_input, signature)
