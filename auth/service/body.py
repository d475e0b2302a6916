"""The join request body, parsed as strictly as the token's own JSON (verifier/jose.py): UTF-8,
no duplicate member names (`"role":"Auth","role":"App"` must not quietly become App), no NaN or
Infinity, and nesting deeper than the parser can go (65,000 `[` fit in 64 KiB: RecursionError)
is a refusal like any other. Every refusal is `bad_request`."""

from __future__ import annotations

from verifier.jose import load_strict_json

from .errors import JoinError, JoinReason


def parse_body(raw: bytes) -> object:
    """The JSON value of a request body, or JoinError(bad_request) saying what is wrong."""
    try:
        return load_strict_json(raw)
    except UnicodeDecodeError:
        raise JoinError(JoinReason.BAD_REQUEST, "the body is not UTF-8") from None
    except ValueError as exc:
        raise JoinError(JoinReason.BAD_REQUEST, f"the body is not valid JSON ({str(exc)[:120]})") from None
