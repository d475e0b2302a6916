"""Durations as written in config files and flags: 90s, 30m, 1h, 24h, 1h30m, 500ms."""

from __future__ import annotations

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
