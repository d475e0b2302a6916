"""Values from outside (audiences, kids, claims, names) told in text of a fixed size.

Refusal messages go into answers and log lines. Built naively from input they grow with it: a
TokenReview naming 6,000 audiences that its token lacks was answered with a 118 KB error. Every
message built from input uses these instead: a value is cut to a few dozen characters, a list is
told as a few of its values and a count.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Iterable
from typing import Final

SHOWN: Final = 3  # values named before the rest are only counted
CUT: Final = 120  # characters of one value


def cut(text: str, limit: int = CUT) -> str:
    """`text` itself if it has at most `limit` characters, else its start ending in "..."."""
    return text if len(text) <= limit else text[: max(limit - 3, 0)] + "..."


def clip(value: object, limit: int = CUT) -> str:
    """repr(value), cut to at most `limit` characters."""
    return cut(repr(value), limit)


def listing(items: Iterable[str], *, shown: int = SHOWN, sep: str = "; ", limit: int = CUT) -> str:
    """The first `shown` items, each cut to `limit` characters, and how many more there are:
    `a; b; c; and 9,997 more`."""
    taken: list[str] = []
    more = 0
    for item in items:
        if len(taken) < shown:
            taken.append(cut(item, limit))
        else:
            more += 1
    return sep.join(taken) + (f"{sep}and {more:,} more" if more else "")


def one_of(values: Collection[str], noun: str, plural: str, *, shown: int = SHOWN) -> str:
    """What was expected, named for a message: `audience 'a'`, `audience 'a' or 'b'`, and beyond
    `shown` values `one of 6,000 audiences ('a0', 'a1', 'a2', ...)`. The smallest values are
    named, so a set is told the same way every time (in linear time: no sort of them all)."""
    named = [clip(value, 60) for value in heapq.nsmallest(shown, values)]
    if len(values) <= shown:
        return f"{noun} {' or '.join(named)}"
    return f"one of {len(values):,} {plural} ({', '.join(named)}, ...)"
