"""Refusal reasons: one error type whose `code` is the REASON of CONTRACT.md."""

from __future__ import annotations

from typing import Final

MALFORMED_TOKEN: Final = "malformed_token"
TOKEN_TOO_LARGE: Final = "token_too_large"
UNSUPPORTED_ALGORITHM: Final = "unsupported_algorithm"
UNKNOWN_KEY: Final = "unknown_key"
BAD_SIGNATURE: Final = "bad_signature"
INVALID_ISSUER: Final = "invalid_issuer"
INVALID_AUDIENCE: Final = "invalid_audience"
TOKEN_EXPIRED: Final = "token_expired"
TOKEN_NOT_YET_VALID: Final = "token_not_yet_valid"
TOKEN_ISSUED_IN_FUTURE: Final = "token_issued_in_future"
TOKEN_TTL_TOO_LONG: Final = "token_ttl_too_long"
MISSING_CLAIM: Final = "missing_claim"
NOT_POD_BOUND: Final = "not_pod_bound"
LEGACY_TOKEN: Final = "legacy_token"
SUBJECT_MISMATCH: Final = "subject_mismatch"
KEYS_UNAVAILABLE: Final = "keys_unavailable"

# Every code a verification can end with, in the order the checks run.
VERIFICATION_CODES: Final = (
    TOKEN_TOO_LARGE,
    MALFORMED_TOKEN,
    UNSUPPORTED_ALGORITHM,
    UNKNOWN_KEY,
    KEYS_UNAVAILABLE,
    BAD_SIGNATURE,
    LEGACY_TOKEN,
    INVALID_ISSUER,
    INVALID_AUDIENCE,
    MISSING_CLAIM,
    TOKEN_EXPIRED,
    TOKEN_NOT_YET_VALID,
    TOKEN_ISSUED_IN_FUTURE,
    TOKEN_TTL_TOO_LONG,
    NOT_POD_BOUND,
    SUBJECT_MISMATCH,
)


class VerificationError(Exception):
    """A token was refused. `code` is machine-readable; `message` is for people and never
    contains the token."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class KeySourceError(Exception):
    """Fetching or parsing a key set failed (the source keeps its last good keys)."""
