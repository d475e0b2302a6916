"""Claims decoded into a typed shape, before any policy is applied.

`decode_claims` only answers "what does the token say", refusing values of the wrong type or syntax
(`malformed_token`); a claim that is simply absent decodes to None and the verifier's policy decides
what its absence means. kube-apiserver reads tokens the same way (pkg/serviceaccount/claims.go):
unmarshal into a typed private-claims struct first, then validate.
"""

from __future__ import annotations

import re
from typing import Any, Final, NamedTuple

from .errors import Reason, VerificationError
from .identity import ObjectRef, UidKey

# JSON numbers beyond int64 seconds are not times any issuer writes; refusing them early keeps
# float conversion (OverflowError) and year-300000 datetimes out of every later step.
_MAX_SECONDS: Final = 2**62
LEGACY_PREFIX: Final = "kubernetes.io/serviceaccount/"

# Kubernetes object names, as the API server enforces them (DNS-1123 label for namespaces,
# subdomain for the rest), and uids. A signed token with anything else comes from an issuer we
# should not believe: these names end up in allow-rule matches and in certificate SANs.
NAMESPACE_SYNTAX: Final = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# A subdomain is dot-separated labels (apimachinery's IsDNS1123Subdomain: `a..b`, `.a`, `a.`,
# `a.-b` are not names). Its 253-character bound is a lookahead over the run of name characters,
# not `\Z`, so that the pattern still works inside _NAME_AND_UID, where a NUL follows the name.
_DNS_LABEL: Final = r"[a-z0-9](?:[-a-z0-9]*[a-z0-9])?"
NAME_SYNTAX: Final = re.compile(rf"(?![-.a-z0-9]{{254}}){_DNS_LABEL}(?:\.{_DNS_LABEL})*")
_UID_SYNTAX: Final = re.compile(r"[A-Za-z0-9-]{1,64}")
# The form the API server gives every uid it makes (a random UUID, lower-case hex).
_CANONICAL_UID: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# NAME_SYNTAX, NUL, _UID_SYNTAX: one match per bound object instead of two. Neither syntax admits
# a NUL, so the NUL splits name from uid in exactly one way and this accepts exactly the pairs
# both patterns accept. Group `canonical` is set when the uid is canonical (a subset of _UID_SYNTAX).
_NAME_AND_UID: Final = re.compile(
    f"(?:{NAME_SYNTAX.pattern})\x00(?:(?P<canonical>{_CANONICAL_UID.pattern})|{_UID_SYNTAX.pattern})"
)


def uid_key(uid: str) -> UidKey:
    """A uid as the binding's cache holds it: in the API server's canonical form, its 128-bit
    integer (44 bytes, where the string takes 85); in any other form, the string itself. One to
    one: only canonical strings become integers (int() alone would also take upper case and
    underscores), and an integer never equals a string."""
    if len(uid) == 36 and _CANONICAL_UID.fullmatch(uid):
        return int(uid.replace("-", ""), 16)
    return uid


# A bound object claim that is present but lacks its name or uid.
INCOMPLETE: Final = ObjectRef("", "", "")


class KubernetesClaim(NamedTuple):  # tuples, like Identity: built for every token verified
    """The private `kubernetes.io` claim. Each object is None when absent, INCOMPLETE when
    present without a name and uid."""

    namespace: str | None
    service_account: ObjectRef | None
    pod: ObjectRef | None
    node: ObjectRef | None
    secret: bool
    warn_after: int | None


class Claims(NamedTuple):
    """What a token says, typed. None means the claim is absent."""

    iss: str | None
    sub: str | None
    audiences: tuple[str, ...] | None
    exp: int | None
    iat: int | None
    nbf: int | None
    jti: str | None
    kubernetes: KubernetesClaim | None
    legacy: bool  # carries the `kubernetes.io/serviceaccount/*` claims of secret-based tokens


def _malformed(message: str) -> VerificationError:
    return VerificationError(Reason.MALFORMED_TOKEN, message)


_ABSENT: Final = object()


def _seconds(value: object, name: str) -> int | None:
    if value is _ABSENT:
        return None
    # bool is an int to Python; 1e400 parses as infinity and a 400-digit int overflows float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not -_MAX_SECONDS < value < _MAX_SECONDS:
        raise _malformed(f"claim {name!r} must be a finite number of seconds")
    return int(value)


def _string(value: object, name: str) -> str | None:
    if value is _ABSENT:
        return None
    if not isinstance(value, str):
        raise _malformed(f"claim {name!r} must be a string")
    return value


def _audiences(value: object) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and value and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise _malformed("claim 'aud' must be a string or a list of strings")


def _object(parent: dict[str, Any], field: str) -> ObjectRef | None:
    if field not in parent:
        return None
    value = parent[field]
    name = value.get("name") if isinstance(value, dict) else None
    uid = value.get("uid") if isinstance(value, dict) else None
    if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
        return INCOMPLETE
    match = _NAME_AND_UID.fullmatch(f"{name}\x00{uid}")
    if match is None:
        raise _malformed(f"claim kubernetes.io.{field} is not a Kubernetes name and uid")
    # uid_key's result, without matching the uid twice
    return ObjectRef(name, uid, int(uid.replace("-", ""), 16) if match["canonical"] else uid)


def _kubernetes(value: object) -> KubernetesClaim | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _malformed("claim 'kubernetes.io' must be an object")
    namespace = value.get("namespace")
    if namespace is not None and namespace != "":
        if not isinstance(namespace, str) or not NAMESPACE_SYNTAX.fullmatch(namespace):
            raise _malformed("claim kubernetes.io.namespace is not a namespace name")
    else:
        namespace = None
    # positional (cheaper than keywords for a NamedTuple), in field order, which is also the
    # order in which a malformed claim is reported
    return KubernetesClaim(
        namespace,
        _object(value, "serviceaccount"),
        _object(value, "pod"),
        _object(value, "node"),
        "secret" in value,
        _seconds(value.get("warnafter", _ABSENT), "kubernetes.io.warnafter"),
    )


def decode_claims(claims: dict[str, Any]) -> Claims:
    """The typed claims of a token whose signature has been checked. Raises VerificationError
    (`malformed_token`) for a claim of the wrong type or syntax."""
    return Claims(  # positional, in field order (see _kubernetes)
        _string(claims.get("iss", _ABSENT), "iss"),
        _string(claims.get("sub", _ABSENT), "sub"),
        _audiences(claims.get("aud")),
        _seconds(claims.get("exp", _ABSENT), "exp"),
        _seconds(claims.get("iat", _ABSENT), "iat"),
        _seconds(claims.get("nbf", _ABSENT), "nbf"),
        _string(claims.get("jti", _ABSENT), "jti"),
        _kubernetes(claims.get("kubernetes.io")),
        _legacy(claims),
    )


def _legacy(claims: dict[str, Any]) -> bool:
    # A name that starts with the prefix puts the prefix in the joined names, so the one substring
    # search rules out the usual case; only a token that has it somewhere checks name by name.
    if LEGACY_PREFIX not in "".join(claims):
        return False
    return any(name.startswith(LEGACY_PREFIX) for name in claims)
