"""Join refusals: the REASON codes of the join service and the one table mapping codes to HTTP
statuses. Verification codes come from `verifier.errors`; the HTTP layer and the metrics use the
same strings."""

from __future__ import annotations

from typing import Final

from verifier.errors import KEYS_UNAVAILABLE as KEYS_UNAVAILABLE
from verifier.errors import VERIFICATION_CODES

BAD_REQUEST: Final = "bad_request"
JOIN_TOKEN_NOT_FOUND: Final = "join_token_not_found"
JOIN_TOKEN_EXPIRED: Final = "join_token_expired"
WRONG_JOIN_METHOD: Final = "wrong_join_method"
NO_MATCHING_ALLOW_RULE: Final = "no_matching_allow_rule"
ROLE_NOT_ALLOWED: Final = "role_not_allowed"
PAYLOAD_TOO_LARGE: Final = "payload_too_large"
UNSUPPORTED_MEDIA_TYPE: Final = "unsupported_media_type"
OVERLOADED: Final = "overloaded"
REQUEST_TIMEOUT: Final = "request_timeout"
INTERNAL_ERROR: Final = "internal_error"

STATUS: Final[dict[str, int]] = {
    BAD_REQUEST: 400,
    **{code: 401 for code in VERIFICATION_CODES if code != KEYS_UNAVAILABLE},
    JOIN_TOKEN_NOT_FOUND: 403,
    JOIN_TOKEN_EXPIRED: 403,
    WRONG_JOIN_METHOD: 403,
    NO_MATCHING_ALLOW_RULE: 403,
    ROLE_NOT_ALLOWED: 403,
    REQUEST_TIMEOUT: 408,
    PAYLOAD_TOO_LARGE: 413,
    UNSUPPORTED_MEDIA_TYPE: 415,
    OVERLOADED: 429,
    INTERNAL_ERROR: 500,
    KEYS_UNAVAILABLE: 503,
}

# Reason codes a join attempt can end with (label values of kubejoin_join_attempts_total).
JOIN_REASONS: Final = tuple(STATUS)


class JoinError(Exception):
    """A join refused for `code`; `message` helps the caller and never echoes a secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS[self.code]
