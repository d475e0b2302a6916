"""Strict parsing of compact JWS tokens.

Only the compact serialization of a signed JWT is accepted. Every byte is checked before it is
trusted: the alphabet of each part, the JSON (no duplicate names, no NaN), and the header fields we
do not implement (`crit`, `b64`, `zip`, `enc`, `cty`) are refused rather than ignored. Headers that
name other keys (`jku`, `x5u`, `jwk`, `x5c`) are ignored: a key comes only from the key source.
"""

from __future__ import annotations

import binascii
import json
import re
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, NamedTuple

from .errors import Reason, VerificationError

MAX_TOKEN_BYTES: Final = 16 * 1024
SUPPORTED_ALGORITHMS: Final = frozenset({"RS256", "ES256", "ES384", "ES512"})
# Header parameters that change how a token must be processed; we implement none of them.
_REFUSED_HEADERS: Final = ("crit", "b64", "zip", "enc", "cty")
# The header memo's budget: kube-apiserver writes one header per signing key (about 100 bytes
# encoded), so a few dozen fit; a longer header is simply parsed each time.
HEADER_MEMO_BYTES: Final = 32 * 1024
HEADER_MEMO_MAX_SEGMENT: Final = 1024
_MEMO_ENTRY_OVERHEAD: Final = 256  # the dict slot, the tuple and the string objects, generously


class ParsedToken(NamedTuple):
    """A structurally valid compact JWS whose signature is not yet checked."""

    alg: str
    kid: str | None
    claims: Any  # the payload's JSON object, or what parse_compact's `shortcut` made of it
    payload: str  # the payload's text (read_claims reads it again for the verified-token cache)
    signing_input: bytes
    signature: bytes
    header_segment: bytes  # the encoded header, for HeaderMemo.remember once the signature verifies
    header_known: bool  # found in the header memo (nothing to remember)


class HeaderMemo:
    """The checked parse (alg, kid) of JWS headers, by their encoded segment, so that a known
    header costs a dictionary lookup instead of base64, JSON and the header checks.

    Only headers that led to a valid signature are remembered (the verifier calls `remember` after
    the signature check): anyone can send made-up headers, only the issuer can sign one, so junk
    neither grows the memo nor evicts the real headers. Bounded in bytes; when a new signed header
    does not fit (the issuer rotated its keys many times), the oldest are forgotten."""

    __slots__ = ("_bytes", "_entries", "get", "max_bytes")

    def __init__(self, max_bytes: int = HEADER_MEMO_BYTES) -> None:
        self._entries: OrderedDict[bytes, tuple[str, str | None]] = OrderedDict()
        self._bytes = 0
        self.max_bytes = max_bytes
        # the checked parse of a header segment, or None: the dict's own get (a C call, where a
        # method around it was a Python frame per token)
        self.get: Callable[[bytes], tuple[str, str | None] | None] = self._entries.get

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, segment: bytes) -> bool:
        return segment in self._entries

    @property
    def nbytes(self) -> int:
        """The memo's size as it counts it: each segment and kid, plus a fixed cost per entry."""
        return self._bytes

    def remember(self, segment: bytes, header: tuple[str, str | None]) -> None:
        """Keeps the checked parse of a header whose token's signature verified (MUST NOT be
        called before that)."""
        if segment in self._entries or len(segment) > HEADER_MEMO_MAX_SEGMENT:
            return
        size = _entry_size(segment, header)
        while self._entries and self._bytes + size > self.max_bytes:
            old_segment, old_header = self._entries.popitem(last=False)
            self._bytes -= _entry_size(old_segment, old_header)
        if size <= self.max_bytes:
            self._entries[segment] = header
            self._bytes += size


def _entry_size(segment: bytes, header: tuple[str, str | None]) -> int:
    return len(segment) + len(header[0]) + len(header[1] or "") + _MEMO_ENTRY_OVERHEAD


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
_PADDING: Final = (b"", b"", b"==", b"=")  # by len(part) % 4
# (len(part) % 4) * 256 + last byte, for each non-canonical ending: one set lookup for the check.
_NONCANONICAL: Final = frozenset(
    tail * 256 + c for tail, unused in _UNUSED_BITS.items() for c, sextet in _SEXTET.items() if sextet & unused
)
_a2b: Final = binascii.a2b_base64
_new: Final = tuple.__new__


def b64url_decode(part: bytes, what: str) -> bytes:
    """Decodes unpadded base64url, refusing padding, characters outside the alphabet, and
    non-canonical encodings (unused low bits set), so that one token has exactly one spelling."""
    standard = part.translate(_TO_STANDARD)
    stray = b"*" in standard
    if not stray:
        # The usual case, in fewer steps (about 0.4 us of a token's two decodes); the refusals
        # are the ones below, in the same order.
        tail = len(part) % 4
        if tail == 1:
            raise _malformed(f"{what} is not unpadded base64url")
        if tail and tail * 256 + part[-1] in _NONCANONICAL:
            raise _malformed(f"{what} is not canonical base64url")
        return _a2b(standard + _PADDING[tail])
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
# The decoder's C scanner (JSONDecoder.scan_once, not in typeshed), and the whitespace JSON allows
# around a document (json.decoder.WHITESPACE).
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = _STRICT_JSON.scan_once  # type: ignore[attr-defined]
_WHITESPACE: Final = re.compile(r"[ \t\n\r]*")


def load_strict_json(raw: bytes) -> object:
    """JSON as this project reads every untrusted document (tokens, join and review bodies,
    discovery): UTF-8 only, no duplicate member names, no NaN or Infinity, and nesting too deep
    for the parser (65,000 `[` fit in 64 KiB) refused rather than a RecursionError. Raises
    ValueError (UnicodeDecodeError for bytes that are not UTF-8)."""
    return _load_strict_text(raw.decode("utf-8"))


def _load_strict_text(text: str) -> object:
    try:
        if text[:1] != "{":
            return _STRICT_JSON.decode(text)
        # JSONDecoder.decode for a document that starts with "{" (every token and body), calling
        # its C scanner directly: the same result and the same errors, without the Python frames
        # and the whitespace match before the value (half a microsecond of a token's claims).
        try:
            value, end = _SCAN(text, 0)
        except StopIteration as err:  # a value missing inside the document, as raw_decode says it
            raise json.JSONDecodeError("Expecting value", text, err.value) from None
        if end != len(text):
            end = _WHITESPACE.match(text, end).end()  # type: ignore[union-attr]  # [...]* always matches
            if end != len(text):
                raise json.JSONDecodeError("Extra data", text, end)
        return value
    except RecursionError:
        raise ValueError("nested too deeply") from None


def parse_json_object(raw: bytes, what: str) -> dict[str, Any]:
    """Parses a JSON object strictly (load_strict_json); refusals are malformed_token."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed(f"{what} is not UTF-8") from None
    return _parse_object_text(text, what)


def _parse_object_text(text: str, what: str) -> dict[str, Any]:
    try:
        value = _load_strict_text(text)
    except ValueError as exc:
        raise _malformed(f"{what} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise _malformed(f"{what} is not a JSON object")
    return value


def read_claims(payload: str, shortcut: Callable[[str], object] | None = None) -> Any:
    """The claims of a token's payload text: what `shortcut` makes of it, or else its strict JSON
    object (refusals are malformed_token). `shortcut` MUST return None for any text that is not a
    strict JSON object, so that every refusal stays where it is."""
    claims = None if shortcut is None else shortcut(payload)
    return _parse_object_text(payload, "payload") if claims is None else claims


def verified_claims(token: str) -> dict[str, Any]:
    """The payload of a token that verify() accepted, as a dict, for allow-rule expressions (only
    they need claims beyond what Identity holds, so only they pay for this decode). Raises
    VerificationError (malformed_token) for text that is not such a token."""
    parts = token.split(".")
    if len(parts) != 3:
        raise _malformed("token is not three base64url parts")
    return parse_json_object(b64url_decode(parts[1].encode("ascii", "replace"), "payload"), "payload")


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


def parse_compact(
    token: str, header_memo: HeaderMemo | None = None, shortcut: Callable[[str], object] | None = None
) -> ParsedToken:
    """Splits and decodes a compact JWS, checking size, structure and header (cheapest first).

    Distinct headers are few (one per issuer key): a header found in `header_memo` is not parsed
    again. This function only reads the memo; the caller remembers a header once its token's
    signature verified (HeaderMemo.remember).

    `shortcut`, when given, is offered the payload's text first (see read_claims)."""
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
    raw = token.encode("ascii")
    parts = raw.split(b".", 3)  # at most four parts: a long run of dots costs no more than a token
    if len(parts) != 3:
        dots = token.count(".")
        if dots == 4:
            raise _malformed("token has 5 parts (an encrypted JWE); a signed JWS has 3")
        raise _malformed(f"token has {dots + 1} parts; a compact JWS has 3")
    header_b64, payload_b64, signature_b64 = parts
    header = header_memo.get(header_b64) if header_memo is not None else None
    known = header is not None
    if header is None:
        header = _check_header(parse_json_object(b64url_decode(header_b64, "header"), "header"))
    if not payload_b64 or not signature_b64:
        raise _malformed("token has an empty payload or signature")
    try:
        payload = b64url_decode(payload_b64, "payload").decode("utf-8")
    except UnicodeDecodeError:
        raise _malformed("payload is not UTF-8") from None
    claims = None if shortcut is None else shortcut(payload)  # read_claims, inline
    if claims is None:
        claims = _parse_object_text(payload, "payload")
    signature = b64url_decode(signature_b64, "signature")
    signing_input = raw[: len(header_b64) + 1 + len(payload_b64)]
    # tuple.__new__: the NamedTuple its constructor makes, without the Python frame around it
    return _new(ParsedToken, (header[0], header[1], claims, payload, signing_input, signature, header_b64, known))
