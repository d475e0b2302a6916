"""Durations in config files and flags."""

from __future__ import annotations

import pytest

from auth.service.durations import parse_duration


@pytest.mark.parametrize(("text", "seconds"), [("90s", 90), ("30m", 1800), ("1h30m", 5400), ("500ms", 0.5)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text",
    ["\u0661\u0660s", "\uff11\uff10s", "1\u0660s", "\u09e7h", "10", "s", "1.s", "-1s", " 1s", "1x"],
    ids=["arabic-indic", "fullwidth", "mixed", "bengali", "no-unit", "no-number", "dot", "negative", "space", "x"],
)
def test_refused(text: str) -> None:
    """Issue 12, item 8: before, other scripts' digits were read as numbers ("١٠s" was 10 s)."""
    with pytest.raises(ValueError, match="expected a duration such as 90s"):
        parse_duration(text)
