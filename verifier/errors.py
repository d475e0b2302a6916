"""Refusal reasons: one error type whose `code` is a `Reason`, the REASON of CONTRACT.md."""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from .identity import Identity


class Reason(StrEnum):
    """Why a token was refused. The values are the contract's REASON codes: label values of the
    metrics and the `code` of every error answer. Listed in the order the checks run."""

    TOKEN_TOO_LARGE = "token_too_large"
    MALFORMED_TOKEN = "malformed_token"
    UNSUPPORTED_ALGORITHM = "unsupported_algorithm"
    UNKNOWN_KEY = "unknown_key"
    KEYS_UNAVAILABLE = "keys_unavailable"
    BAD_SIGNATURE = "bad_signature"
    LEGACY_TOKEN = "legacy_token"
    INVALID_ISSUER = "invalid_issuer"
    INVALID_AUDIENCE = "invalid_audience"
    MISSING_CLAIM = "missing_claim"
    TOKEN_EXPIRED = "token_expired"
    TOKEN_NOT_YET_VALID = "token_not_yet_valid"
    TOKEN_ISSUED_IN_FUTURE = "token_issued_in_future"
    TOKEN_TTL_TOO_LONG = "token_ttl_too_long"
    NOT_POD_BOUND = "not_pod_bound"
    SUBJECT_MISMATCH = "subject_mismatch"
    # live binding (verifier/binding.py): the objects the token names, looked up in the cluster
    SERVICE_ACCOUNT_NOT_FOUND = "service_account_not_found"
    SERVICE_ACCOUNT_UID_MISMATCH = "service_account_uid_mismatch"
    SERVICE_ACCOUNT_DELETED = "service_account_deleted"
    POD_NOT_FOUND = "pod_not_found"
    POD_UID_MISMATCH = "pod_uid_mismatch"
    POD_DELETED = "pod_deleted"
    NODE_NOT_FOUND = "node_not_found"
    NODE_UID_MISMATCH = "node_uid_mismatch"
    BINDING_UNAVAILABLE = "binding_unavailable"


VERIFICATION_CODES: Final = tuple(Reason)


class VerificationError(Exception):
    """A token was refused. `code` is machine-readable; `message` is for people and never
    contains the token."""

    def __init__(self, code: Reason, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class BindingRefusal(VerificationError):
    """A token whose signature and claims passed was refused by the live binding (its pod is gone,
    say, or the cluster cannot be asked). Carries who the token spoke for, so that the refusal can
    be audited in full."""

    def __init__(self, code: Reason, message: str, identity: Identity) -> None:
        super().__init__(code, message)
        self.identity = identity


class KeySourceError(Exception):
    """Fetching or parsing a key set failed (the source keeps its last good keys)."""
