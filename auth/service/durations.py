"""Durations as written in config files and flags (90s, 30m, 1h, 24h, 1h30m, 500ms), and
moments as logs and answers write them (RFC 3339, UTC, whole seconds)."""

from __future__ import annotations

import datetime
import re
from typing import Final

# ASCII digits only: \d and float() also take other scripts' digits ("١٠s" was 10 s).
_PART: Final = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNITS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: object) -> float:
    """Seconds in a duration string; raises ValueError with an example of the expected form."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"expected a duration such as 90s, 30m or 1h, got {text!r}")
    position, total = 0, 0.0
    for match in _PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or position == 0:
        raise ValueError(f"expected a duration such as 90s, 30m or 1h, got {text!r}")
    return total


def rfc3339(moment: datetime.datetime | float) -> str:
    """`2050-01-01T00:00:00Z`: a datetime (naive means UTC) or seconds since the epoch. An
    f-string, not strftime: the join log stamps a line with it every second."""
    if not isinstance(moment, datetime.datetime):
        moment = datetime.datetime.fromtimestamp(moment, datetime.UTC)
    m = moment.astimezone(datetime.UTC) if moment.tzinfo is not None else moment
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"
