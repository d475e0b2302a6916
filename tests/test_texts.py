"""Values from outside told in text of a fixed size (issue 20, item 1)."""

from __future__ import annotations

import pytest

from verifier.texts import clip, cut, listing, one_of


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["a"], "audience 'a'"),
        (["b", "a"], "audience 'a' or 'b'"),
        ({"c", "a", "b"}, "audience 'a' or 'b' or 'c'"),
        ([f"a{n}" for n in range(6000)], "one of 6,000 audiences ('a0', 'a1', 'a10', ...)"),
    ],
    ids=["one", "two", "three", "many"],
)
def test_one_of_names_a_few_and_counts_the_rest(values: list[str], expected: str) -> None:
    assert one_of(values, "audience", "audiences") == expected


def test_one_of_cuts_each_value() -> None:
    told = one_of(["x" * 60000, "y" * 60000, "z" * 5, "w"], "audience", "audiences")
    assert len(told) < 200 and told.startswith("one of 4 audiences ('w', 'xxx")


def test_listing_and_cut() -> None:
    notes = [f"keys[{n}]: kty 'oct' is not RSA or EC" for n in range(10000)]
    assert listing(notes) == "; ".join(notes[:3]) + "; and 9,997 more"
    assert listing(notes[:2]) == "; ".join(notes[:2])
    assert listing(["k" * 5000]) == "k" * 117 + "..."
    assert cut("short") == "short" and len(cut("x" * 1000, 50)) == 50
    assert clip("x" * 1000) == "'" + "x" * 116 + "..."
