"""Join refusals: the service's REASON codes and the one table mapping every code, the verifier's
included, to an HTTP status. The HTTP layer and the metrics use the same values."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from verifier.errors import Reason


class JoinReason(StrEnum):
    """Why a join was refused for a reason other than the ServiceAccount token itself."""

    BAD_REQUEST = "bad_request"
    JOIN_TOKEN_NOT_FOUND = "join_token_not_found"
    JOIN_TOKEN_EXPIRED = "join_token_expired"
    WRONG_JOIN_METHOD = "wrong_join_method"
    NO_MATCHING_ALLOW_RULE = "no_matching_allow_rule"
    UNKNOWN_CLUSTER = "unknown_cluster"  # the join token names a cluster that is not registered
    ROLE_NOT_ALLOWED = "role_not_allowed"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    OVERLOADED = "overloaded"
    REQUEST_TIMEOUT = "request_timeout"
    INTERNAL_ERROR = "internal_error"


# A refusal's code: the token's reason (verifier) or the join's.
Code = Reason | JoinReason

STATUS: Final[dict[Code, int]] = {
    JoinReason.BAD_REQUEST: 400,
    **{code: 401 for code in Reason if code not in (Reason.KEYS_UNAVAILABLE, Reason.BINDING_UNAVAILABLE)},
    JoinReason.JOIN_TOKEN_NOT_FOUND: 403,
    JoinReason.JOIN_TOKEN_EXPIRED: 403,
    JoinReason.WRONG_JOIN_METHOD: 403,
    JoinReason.NO_MATCHING_ALLOW_RULE: 403,
    JoinReason.UNKNOWN_CLUSTER: 403,
    JoinReason.ROLE_NOT_ALLOWED: 403,
    JoinReason.REQUEST_TIMEOUT: 408,
    JoinReason.PAYLOAD_TOO_LARGE: 413,
    JoinReason.UNSUPPORTED_MEDIA_TYPE: 415,
    JoinReason.OVERLOADED: 429,
    JoinReason.INTERNAL_ERROR: 500,
    Reason.KEYS_UNAVAILABLE: 503,
    Reason.BINDING_UNAVAILABLE: 503,
}

# Reason codes a join attempt can end with (label values of kubejoin_join_attempts_total).
JOIN_REASONS: Final = tuple(STATUS)


def error_body(code: str, message: str) -> dict[str, dict[str, str]]:
    """The one shape of every refusal (CONTRACT.md), over HTTP and from the command line:
    `{"error": {"code": REASON, "message": TEXT}}`."""
    return {"error": {"code": code, "message": message}}


class JoinError(Exception):
    """A join refused for `code`; `message` helps the caller and never echoes a secret."""

    def __init__(self, code: Code, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return STATUS[self.code]
