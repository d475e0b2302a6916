"""The typed claims decode: its shortcuts accept exactly what the plain checks accept, and the
shortcut for kube-apiserver's own payload reads exactly what the general path reads."""

from __future__ import annotations

import base64
import json
import re
from typing import Any, Final

import hypothesis
import pytest
from hypothesis import strategies as st

from auth.devtools.issuer import LocalIssuer
from tests.conftest import EKS_FIXTURES, kube_test_keys
from verifier import VerificationError
from verifier.claims import (
    _NAME_AND_UID,
    _UID_SYNTAX,
    LEGACY_PREFIX,
    NAME_SYNTAX,
    Claims,
    _legacy,
    _object,
    decode_claims,
    uid_key,
    usual_claims,
)
from verifier.jose import load_strict_json

# Names and uids near the edges of both syntaxes: valid ones, valid ones with one character
# changed, and any text (NULs included, which the combined pattern uses as its separator).
EDGY = st.sampled_from(["", "a", "-", ".", "\x00", "A", "a-", "a.b", "a\x00b", "\n", "a" * 64, "a" * 65, "a" * 253])
NAMES = st.from_regex(NAME_SYNTAX, fullmatch=True) | st.text(max_size=20) | EDGY
UIDS = st.from_regex(_UID_SYNTAX, fullmatch=True) | st.text(max_size=20) | EDGY


@pytest.mark.slow
@hypothesis.settings(max_examples=2000, deadline=None)
@hypothesis.given(name=NAMES, uid=UIDS, edit=st.none() | st.tuples(st.booleans(), st.integers(0, 300), st.characters()))
def test_one_pattern_for_name_and_uid_accepts_what_the_two_accept(
    name: str, uid: str, edit: tuple[bool, int, str] | None
) -> None:
    if edit is not None:  # one character of a (usually valid) name or uid replaced
        in_name, at, char = edit
        text = name if in_name else uid
        if text:
            at %= len(text)
            text = text[:at] + char + text[at + 1 :]
        name, uid = (text, uid) if in_name else (name, text)
    both = NAME_SYNTAX.fullmatch(name) is not None and _UID_SYNTAX.fullmatch(uid) is not None
    assert (_NAME_AND_UID.fullmatch(f"{name}\x00{uid}") is not None) == both


def test_the_pattern_pair_is_not_trivially_true() -> None:
    assert _NAME_AND_UID.fullmatch("agent-0-pod\x005c3d6de9-6000-41a6-adad-2509159c5b95")
    assert not _NAME_AND_UID.fullmatch("agent-0-pod\x00\x005c3d6de9")
    assert not _NAME_AND_UID.fullmatch("Agent\x005c3d6de9")


# Uids and the strings int(..., 16) would read as the same number: upper case, sign, spaces,
# underscores, no dashes. uid_key must keep every one of them apart.
def _lookalikes(uid: str) -> list[str]:
    bare = uid.replace("-", "")
    return [uid, uid.upper(), "+" + uid, f" {uid}", uid + "\n", uid.replace("-", "_"), bare, "0x" + bare, bare[:31]]


LOOKALIKES = st.uuids().map(lambda value: _lookalikes(str(value))) | st.lists(UIDS, min_size=2, max_size=2)


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(uids=LOOKALIKES)
def test_uid_keys_are_one_to_one(uids: list[str]) -> None:
    keys = [uid_key(uid) for uid in uids]
    assert len(set(keys)) == len(set(uids))


@hypothesis.settings(max_examples=500, deadline=None)
@hypothesis.given(uid=st.uuids().map(str) | UIDS)
def test_the_decoded_key_is_uid_key(uid: str) -> None:
    if _UID_SYNTAX.fullmatch(uid):
        ref = _object({"pod": {"name": "app-0", "uid": uid}}, "pod")
        assert ref is not None and ref.key == uid_key(uid) and type(ref.key) is type(uid_key(uid))


def test_only_the_canonical_form_becomes_an_integer() -> None:
    assert uid_key("5c3d6de9-6000-41a6-adad-2509159c5b95") == 0x5C3D6DE9600041A6ADAD2509159C5B95
    assert uid_key("5C3D6DE9-6000-41A6-ADAD-2509159C5B95") == "5C3D6DE9-6000-41A6-ADAD-2509159C5B95"
    assert uid_key("not-a-uuid") == "not-a-uuid"


CLAIM_NAMES = st.text(max_size=12) | st.sampled_from(
    [LEGACY_PREFIX, LEGACY_PREFIX + "secret.name", "x" + LEGACY_PREFIX, LEGACY_PREFIX[:-1], "iss", "kubernetes.io"]
)


@hypothesis.settings(max_examples=1000, deadline=None)
@hypothesis.given(names=st.lists(CLAIM_NAMES, max_size=6))
def test_legacy_claims_are_found_exactly_by_prefix(names: list[str]) -> None:
    claims = dict.fromkeys(names, 1)
    assert _legacy(claims) == any(name.startswith(LEGACY_PREFIX) for name in claims)


# -- usual_claims: kube-apiserver's own payload, read with one match -----------------------------
def _reference(text: str) -> Claims | str:
    """The general path: strict JSON, then decode_claims; the refusal's code and message if any."""
    try:
        value = load_strict_json(text.encode("utf-8", "surrogatepass"))
    except ValueError as exc:
        return f"json: {exc}"
    if not isinstance(value, dict):
        return "json: not an object"
    try:
        return decode_claims(value)
    except VerificationError as exc:
        return f"{exc.code}: {exc.message}"


def _ref_types(claims: Claims) -> list[type]:
    """The types inside the claims (an int key must not come back as an equal-looking str)."""
    kube = claims.kubernetes
    refs = [] if kube is None else [kube.service_account, kube.pod, kube.node]
    return [type(value) for value in claims[:7]] + [type(ref.key) for ref in refs if ref is not None]


def _usual_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "aud": ["https://kubernetes.default.svc"],
        "exp": 1764056278,
        "iat": 1763969878,
        "iss": "https://oidc.eks.eu-west-1.amazonaws.com/id/B88E7287",
        "jti": "1b20f55e-e39a-4010-96e3-5bba8e300ae7",
        "kubernetes.io": {
            "namespace": "team-a",
            "node": {
                "name": "ip-10-15-179-190.eu-west-1.compute.internal",
                "uid": "ceb6b98b-f46f-448d-8a2d-4e036c36a243",
            },
            "pod": {"name": "agent-57456bb9cb-bwzxh", "uid": "989f1a6e-8af7-4740-93d8-206f8daf9a84"},
            "serviceaccount": {"name": "agent", "uid": "8180de1d-6687-4024-8c6c-bb5d4700897a"},
            "warnafter": 1763973485,
        },
        "nbf": 1763969878,
        "sub": "system:serviceaccount:team-a:agent",
    }
    payload.update(changes)
    return payload


_ODD_TEXT = st.sampled_from(["", "a", "A", "é", "\u2028", '"', "\\", "\x00", "\x1f", "\x7f", "a..b", "-a", "a" * 254])
_ODD_NUMBERS = st.sampled_from([0, -0.0, 1.5, -1, 2**62, 2**62 - 1, 10**17, 10**18, 10**19, True, None, "1"])
# Values a usual payload may carry (text without quotes or escapes, whole seconds in range) as
# well as values that send it down the general path, so both sides of every edge are drawn.
_PLAIN_TEXT = st.text(st.characters(blacklist_characters='"\\', blacklist_categories=("Cc", "Cs")), max_size=12)
_VALUES: st.SearchStrategy[Any] = (
    _PLAIN_TEXT
    | st.integers(-(10**18), 10**18)
    | st.lists(_PLAIN_TEXT, min_size=1, max_size=3)
    | st.text(max_size=12)
    | _ODD_TEXT
    | st.integers()
    | _ODD_NUMBERS
    | st.lists(st.text(max_size=5) | _ODD_TEXT, max_size=3)
)
_UIDS = st.uuids().map(str) | st.uuids().map(lambda u: str(u).upper()) | UIDS
_PATHS = st.sampled_from(
    [
        ("aud",), ("exp",), ("iat",), ("iss",), ("jti",), ("nbf",), ("sub",), ("kubernetes.io",),
        ("kubernetes.io", "namespace"), ("kubernetes.io", "warnafter"), ("kubernetes.io", "secret"),
        ("kubernetes.io", "node"), ("kubernetes.io", "pod", "name"), ("kubernetes.io", "pod", "uid"),
        ("kubernetes.io", "serviceaccount", "name"), ("kubernetes.io", "serviceaccount", "uid"),
        ("kubernetes.io", "node", "name"), ("kubernetes.io", "node", "uid"), ("extra",),
        (LEGACY_PREFIX + "namespace",), ("kubernetesXio",),
    ]
)  # fmt: skip


@st.composite
def usual_texts(draw: st.DrawFn) -> str:
    """kube-apiserver's payload, sometimes with claims changed, dropped or added, then spelled as
    it does (compact, sorted) or otherwise (another order, spaces, escapes, a duplicate name)."""
    payload = _usual_payload()
    for path in draw(st.lists(_PATHS, max_size=3)):
        parent = payload
        for name in path[:-1]:
            parent = parent.setdefault(name, {}) if isinstance(parent.get(name, {}), dict) else {}
        how = draw(st.sampled_from(["drop", "value", "uid", "name"]))
        if how == "drop":
            parent.pop(path[-1], None)
        elif how == "uid":
            parent[path[-1]] = draw(_UIDS)
        elif how == "name":
            parent[path[-1]] = draw(st.from_regex(NAME_SYNTAX, fullmatch=True) | _ODD_TEXT)
        else:
            parent[path[-1]] = draw(_VALUES)
    spelling = draw(st.sampled_from(["kube"] * 6 + ["unsorted", "spaced", "ascii", "duplicate"]))
    if spelling == "unsorted":
        return json.dumps(payload, separators=(",", ":"))
    if spelling == "spaced":
        return json.dumps(payload, sort_keys=True)
    if spelling == "duplicate":
        return '{"sub":"x",' + json.dumps(payload, separators=(",", ":"), sort_keys=True)[1:]
    text = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=spelling == "ascii")
    if draw(st.integers(0, 3)) == 0:  # a number spelled as json.dumps never would
        name = draw(st.sampled_from(["exp", "iat", "nbf", "warnafter"]))
        spelled = draw(st.sampled_from(_NUMBER_SPELLINGS) | st.integers().map(str))
        text = re.sub(f'"{name}":-?[0-9]+', lambda _: f'"{name}":{spelled}', text, count=1)
    return text


_NUMBER_SPELLINGS: Final = [
    "01", "00", "-0", "-01", "1.0", "1e9", "1E9", "-", "+1", " 1", "9" * 18, "9" * 19, "-" + "9" * 18,
    "-" + "9" * 19, str(2**62), str(2**62 - 1), str(-(2**62) + 1), "0x10", "1_000",
]  # fmt: skip


@hypothesis.settings(max_examples=3000, deadline=None)
@hypothesis.given(text=usual_texts() | usual_texts() | usual_texts() | st.text(max_size=40))
def test_usual_claims_reads_exactly_what_the_general_path_reads(text: str) -> None:
    shortcut = usual_claims(text)
    if shortcut is None:
        hypothesis.event("general path")
        return
    hypothesis.event("shortcut")
    reference = _reference(text)
    assert isinstance(reference, Claims), reference
    assert shortcut == reference
    assert _ref_types(shortcut) == _ref_types(reference)


def test_usual_claims_takes_real_tokens() -> None:
    # kube-apiserver's own payload (the real EKS token) and the local issuer's both take the
    # shortcut: without this, the test above could pass by never taking it.
    eks = (EKS_FIXTURES / "token.jwt").read_text().strip().split(".")[1]
    text = base64.urlsafe_b64decode(eks + "==").decode()
    assert usual_claims(text) is not None and usual_claims(text) == _reference(text)
    local = LocalIssuer("https://issuer.example", [kube_test_keys()[1]]).mint("team-a", "agent", audiences=["a", "b"])
    text = base64.urlsafe_b64decode(local.split(".")[1] + "==").decode()
    assert usual_claims(text) is not None and usual_claims(text) == _reference(text)
    assert usual_claims(text.replace('"kubernetes.io"', '"kubernetesXio"')) is None
    assert usual_claims(json.dumps(_usual_payload(exp=1.5e9), separators=(",", ":"), sort_keys=True)) is None


# DNS-1123 subdomains (apimachinery's IsDNS1123Subdomain): dot-separated labels, 253 at most.
# `a..b` and `a.-b` passed the old one-run pattern.
SUBDOMAINS = [
    ("a", True),
    ("a.b", True),
    ("a-b.c-d", True),
    ("ip-10-0-1-23.eu-west-1.compute.internal", True),
    ("a" * 253, True),
    ("a." * 126 + "a", True),  # 253 characters
    ("a..b", False),
    (".a", False),
    ("a.", False),
    ("-a", False),
    ("a-", False),
    ("a.-b", False),
    ("a-.b", False),
    ("a" * 254, False),
    ("a." * 127 + "a", False),  # 255 characters
]


@pytest.mark.parametrize(("name", "valid"), SUBDOMAINS, ids=[name[:24] for name, _ in SUBDOMAINS])
def test_names_are_dns_1123_subdomains(name: str, valid: bool) -> None:
    assert (NAME_SYNTAX.fullmatch(name) is not None) == valid
    assert (_NAME_AND_UID.fullmatch(f"{name}\x005c3d6de9-6000-41a6-adad-2509159c5b95") is not None) == valid
    claim = {"pod": {"name": name, "uid": "5c3d6de9-6000-41a6-adad-2509159c5b95"}}
    if valid:
        assert _object(claim, "pod") is not None
    else:
        with pytest.raises(VerificationError) as refused:
            _object(claim, "pod")
        assert refused.value.code == "malformed_token"
