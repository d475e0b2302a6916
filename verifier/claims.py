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
# (Groups that do not capture: _USUAL_CLAIMS embeds these and reads its own groups by position.)
NAMESPACE_SYNTAX: Final = re.compile(r"[a-z0-9](?:[-a-z0-9]{0,61}[a-z0-9])?")
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


# kube-apiserver's claim set as it writes it: compact JSON, names in sorted order (go-jose
# marshals the claims as a map), every string free of escapes, quotes and control characters (so
# its text is its value), whole seconds, canonical uids. `usual_claims` reads such a payload
# straight into Claims with this one match, where the JSON parse and the per-claim checks cost
# three times as much. Anything else (another order, an escape, a float, an extra claim) does not
# match and takes the general path. The name patterns are embedded as they are: each is followed
# by a quote, which no name may contain, so each matches exactly what its fullmatch accepts.
def _quoted_pattern(name: str) -> str:
    return f'"(?P<{name}>[^"\\\\\x00-\x1f]*)"'


def _seconds_pattern(name: str) -> str:
    return f"(?P<{name}>-?(?:0|[1-9][0-9]{{0,17}}))"  # an int of at most 18 digits: within _MAX_SECONDS


def _usual_object(field: str) -> str:
    return (
        f'"{field}":\\{{"name":"(?P<{field}>(?:{NAME_SYNTAX.pattern}))",'
        f'"uid":"(?P<{field}_uid>{_CANONICAL_UID.pattern})"\\}}'
    )


_USUAL_CLAIMS: Final = re.compile(
    r'\{"aud":\[(?P<aud>"[^"\\\x00-\x1f]*"(?:,"[^"\\\x00-\x1f]*")*)\],'
    f'"exp":{_seconds_pattern("exp")},"iat":{_seconds_pattern("iat")},"iss":{_quoted_pattern("iss")},(?:"jti":{_quoted_pattern("jti")},)?'
    f'"kubernetes\\.io":\\{{"namespace":"(?P<namespace>(?:{NAMESPACE_SYNTAX.pattern}))",'
    f"(?:{_usual_object('node')},)?{_usual_object('pod')},{_usual_object('serviceaccount')}"
    f'(?:,"warnafter":{_seconds_pattern("warnafter")})?\\}},'
    f'(?:"nbf":{_seconds_pattern("nbf")},)?"sub":{_quoted_pattern("sub")}\\}}'
)
_USUAL_NAMES: Final = (
    "aud", "exp", "iat", "iss", "jti", "namespace", "node", "node_uid", "pod", "pod_uid",
    "serviceaccount", "serviceaccount_uid", "warnafter", "nbf", "sub",
)  # fmt: skip
# usual_claims unpacks match.groups() (half the cost of naming 15 groups) by position: the
# embedded patterns must add no group of their own.
if tuple(_USUAL_CLAIMS.groupindex) != _USUAL_NAMES or _USUAL_CLAIMS.groups != len(_USUAL_NAMES):
    raise RuntimeError("_USUAL_CLAIMS: an embedded pattern captures; make its groups (?:...)")
_new: Final = tuple.__new__  # NamedTuple's __new__ is a Python function around this one


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
    # Carries the `kubernetes.io/serviceaccount/*` claims of secret-based tokens. Looked for only
    # when there is no `kubernetes.io` claim (False otherwise): the policy reads it only then.
    legacy: bool


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
    value = parent.get(field, _ABSENT)
    if value is _ABSENT:
        return None
    if not isinstance(value, dict):
        return INCOMPLETE
    name, uid = value.get("name"), value.get("uid")
    if not isinstance(name, str) or not name or not isinstance(uid, str) or not uid:
        return INCOMPLETE
    match = _NAME_AND_UID.fullmatch(f"{name}\x00{uid}")
    if match is None:
        raise _malformed(f"claim kubernetes.io.{field} is not a Kubernetes name and uid")
    # uid_key's result, without matching the uid twice
    return ObjectRef(name, uid, int(uid.replace("-", ""), 16) if match["canonical"] else uid)


def _kubernetes(value: object) -> KubernetesClaim:
    if not isinstance(value, dict):
        raise _malformed("claim 'kubernetes.io' must be an object")
    namespace = value.get("namespace")
    if namespace is not None and namespace != "":
        if not isinstance(namespace, str) or not NAMESPACE_SYNTAX.fullmatch(namespace):
            raise _malformed("claim kubernetes.io.namespace is not a namespace name")
    else:
        namespace = None
    warn_after = value.get("warnafter", _ABSENT)
    if warn_after is not _ABSENT:
        warn_after = _seconds(warn_after, "kubernetes.io.warnafter")
    # positional (cheaper than keywords for a NamedTuple), in field order, which is also the
    # order in which a malformed claim is reported
    return KubernetesClaim(
        namespace,
        _object(value, "serviceaccount"),
        _object(value, "pod"),
        _object(value, "node"),
        "secret" in value,
        None if warn_after is _ABSENT else warn_after,
    )


def usual_claims(text: str) -> Claims | None:
    """The claims of a payload in kube-apiserver's own form (see _USUAL_CLAIMS), exactly as
    `decode_claims(load_strict_json(text))` gives them; None for any other payload, which the
    caller then parses and decodes in full."""
    match = _USUAL_CLAIMS.fullmatch(text)
    if match is None:
        return None
    aud, exp, iat, iss, jti, namespace, node, node_uid, pod, pod_uid, account, account_uid, warn, nbf, sub = (
        match.groups()
    )
    # No audience contains a quote, so '","' splits the list exactly. The records are built with
    # tuple.__new__ (the same objects their constructors make, in half the time).
    return _new(
        Claims,
        (
            iss,
            sub,
            tuple(aud[1:-1].split('","')),
            int(exp),
            int(iat),
            None if nbf is None else int(nbf),
            jti,
            _new(
                KubernetesClaim,
                (
                    namespace,
                    _new(ObjectRef, (account, account_uid, int(account_uid.replace("-", ""), 16))),
                    _new(ObjectRef, (pod, pod_uid, int(pod_uid.replace("-", ""), 16))),
                    None if node is None else _new(ObjectRef, (node, node_uid, int(node_uid.replace("-", ""), 16))),
                    False,
                    None if warn is None else int(warn),
                ),
            ),
            False,
        ),
    )


def decode_claims(claims: dict[str, Any]) -> Claims:
    """The typed claims of a token whose signature has been checked. Raises VerificationError
    (`malformed_token`) for a claim of the wrong type or syntax, the first in field order.

    Each claim's usual form (a str, an int within range) is accepted inline; anything else goes
    through the helper that decides and words the refusal. The same verdicts as calling the
    helpers for every claim (tests/test_claims.py checks it against a plain reference), in about
    half the time: these checks ran for every token, on every join."""
    get = claims.get
    iss = get("iss", _ABSENT)
    if iss.__class__ is not str:
        iss = _string(iss, "iss")
    sub = get("sub", _ABSENT)
    if sub.__class__ is not str:
        sub = _string(sub, "sub")
    audiences = _audiences(get("aud"))
    exp = get("exp", _ABSENT)
    if exp.__class__ is not int or not -_MAX_SECONDS < exp < _MAX_SECONDS:
        exp = _seconds(exp, "exp")
    iat = get("iat", _ABSENT)
    if iat.__class__ is not int or not -_MAX_SECONDS < iat < _MAX_SECONDS:
        iat = _seconds(iat, "iat")
    nbf = get("nbf", _ABSENT)
    if nbf.__class__ is not int or not -_MAX_SECONDS < nbf < _MAX_SECONDS:
        nbf = _seconds(nbf, "nbf")
    jti = get("jti", _ABSENT)
    if jti.__class__ is not str:
        jti = _string(jti, "jti")
    kube = get("kubernetes.io")
    if kube is None:
        return Claims(iss, sub, audiences, exp, iat, nbf, jti, None, _legacy(claims))
    return Claims(iss, sub, audiences, exp, iat, nbf, jti, _kubernetes(kube), False)


def _legacy(claims: dict[str, Any]) -> bool:
    # A name that starts with the prefix puts the prefix in the joined names, so the one substring
    # search rules out the usual case; only a token that has it somewhere checks name by name.
    if LEGACY_PREFIX not in "".join(claims):
        return False
    return any(name.startswith(LEGACY_PREFIX) for name in claims)
