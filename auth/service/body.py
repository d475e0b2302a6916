"""The join request body, parsed as strictly as the token's own JSON (verifier/jose.py): UTF-8,
no duplicate member names (`"role":"Auth","role":"App"` must not quietly become App), no NaN or
Infinity, and nesting deeper than the parser can go (65,000 `[` fit in 64 KiB: RecursionError)
is a refusal like any other. Every refusal is `bad_request`."""

from __future__ import annotations

import json
from typing import Any, Final

from .errors import JoinError, JoinReason


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


_STRICT: Final = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)


def parse_body(raw: bytes) -> object:
    """The JSON value of a request body, or JoinError(bad_request) saying what is wrong."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JoinError(JoinReason.BAD_REQUEST, "the body is not UTF-8") from None
    try:
        return _STRICT.decode(text)
    except (ValueError, RecursionError) as exc:
        raise JoinError(JoinReason.BAD_REQUEST, f"the body is not valid JSON ({str(exc)[:120]})") from None
