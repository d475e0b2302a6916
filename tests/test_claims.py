"""The typed claims decode: its shortcuts accept exactly what the plain checks accept."""

from __future__ import annotations

import hypothesis
import pytest
from hypothesis import strategies as st

from verifier import VerificationError
from verifier.claims import _NAME_AND_UID, _UID_SYNTAX, LEGACY_PREFIX, NAME_SYNTAX, _legacy, _object, uid_key

# Names and uids near the edges of both syntaxes: valid ones, valid ones with one character
# changed, and any text (NULs included, which the combined pattern uses as its separator).
EDGY = st.sampled_from(["", "a", "-", ".", "\x00", "A", "a-", "a.b", "a\x00b", "\n", "a" * 64, "a" * 65, "a" * 253])
NAMES = st.from_regex(NAME_SYNTAX, fullmatch=True) | st.text(max_size=20) | EDGY
UIDS = st.from_regex(_UID_SYNTAX, fullmatch=True) | st.text(max_size=20) | EDGY


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
