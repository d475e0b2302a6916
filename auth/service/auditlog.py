"""The audit log: one JSON line on stdout per join attempt and per TokenReview.

`AuditLog` is the one object that joins (JoinService) and reviews (the TokenReview endpoint) write
through. It shapes every line (the time, the worker, at most MAX_LINE bytes), bounds the log under
floods of junk (JunkLimiter), and hands whole lines to the writer (joinlog.JoinLog), which puts
them on stdout without ever blocking the event loop.

A refusal decided before any signature verified (not JSON, too large, a made-up token, an unknown
kid, a bad signature, an unknown join token) costs an attacker nothing to send, so a flood of them
must not become a flood of lines: the first `per_second` of each reason in each second are logged
in full, the rest only counted, and one summary line per second gives those counts. Successful
joins and refusals of a verified identity are never limited. Every attempt is still counted in
the metrics.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Final, NamedTuple, TextIO

from verifier.errors import Reason

from .durations import rfc3339
from .errors import JoinReason
from .joinlog import JoinLog

# Refusals an unauthenticated caller can provoke at will: decided before any signature verified.
UNVERIFIED_REFUSALS: Final[frozenset[str]] = frozenset(
    {
        JoinReason.BAD_REQUEST,
        JoinReason.UNSUPPORTED_MEDIA_TYPE,
        JoinReason.PAYLOAD_TOO_LARGE,
        JoinReason.REQUEST_TIMEOUT,
        JoinReason.OVERLOADED,
        JoinReason.JOIN_TOKEN_NOT_FOUND,
        JoinReason.JOIN_TOKEN_EXPIRED,
        JoinReason.WRONG_JOIN_METHOD,
        Reason.MALFORMED_TOKEN,
        Reason.TOKEN_TOO_LARGE,
        Reason.UNSUPPORTED_ALGORITHM,
        Reason.UNKNOWN_KEY,
        Reason.BAD_SIGNATURE,
        Reason.KEYS_UNAVAILABLE,
    }
)
FULL_LINES_PER_SECOND: Final = 5
# Bytes of one line, its newline included. A log shipper may cut longer lines (journald's default
# line limit is 48 KiB, Docker's json-file driver splits at 16 KiB); refusal messages are bounded
# (verifier/texts.py) and this is the last bound, for any field that still grows.
MAX_LINE: Final = 8192
_KEPT: Final = 256  # bytes of a cut value's start kept at least
_MARKER: Final = 48  # bytes of the marker that ends a cut value, at most
# Built once: json.dumps with options builds a new encoder on every call. ASCII only (the
# default), so that a line's length in characters is its length in bytes.
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"))


class Suppressed(NamedTuple):
    """The refusals of one second that got no line of their own, by reason."""

    second: int
    counts: dict[str, int]


class JunkLimiter:
    """Per second and per reason, admits the first `per_second` unverified refusals to the log
    and counts the rest. The caller names the current second (its clock) on every call."""

    def __init__(self, per_second: int = FULL_LINES_PER_SECOND) -> None:
        self.per_second = per_second
        self._second = -1
        self._logged: dict[str, int] = {}
        self._suppressed: dict[str, int] = {}

    def admit(self, reason: str, second: int) -> bool:
        """True: log this refusal in full. False: it is counted for the summary of its second.
        Call `summary(second)` first, so that an earlier second's counts are not mixed in."""
        if second != self._second:
            self._second, self._logged = second, {}
        logged = self._logged.get(reason, 0)
        if logged < self.per_second:
            self._logged[reason] = logged + 1
            return True
        self._suppressed[reason] = self._suppressed.get(reason, 0) + 1
        return False

    def summary(self, second: int) -> Suppressed | None:
        """Once a second with suppressed lines is over (`second` is later): its counts, once.
        None while there is nothing to report."""
        if second == self._second or not self._suppressed:
            return None
        counts, self._suppressed = self._suppressed, {}
        return Suppressed(self._second, dict(sorted(counts.items())))


class AuditLog:
    """The audit log of one process. `stream`: a file descriptor (default: stdout's), or a text
    stream (tests, the demo); `worker`: this worker's slot with `serve --workers N`, in every line;
    `sync_timeout`: how long a certificate waits for its line to be written."""

    def __init__(
        self,
        stream: TextIO | int | None = None,
        *,
        clock: Callable[[], float],
        worker: int | None = None,
        on_drop: Callable[[int], None] | None = None,
        sync_timeout: float = 10.0,
    ) -> None:
        self.writer = JoinLog(stream, on_drop=on_drop)
        self.worker = worker
        self._clock = clock
        self._sync_timeout = sync_timeout
        self._junk = JunkLimiter()
        self._second = -1
        self._time = ""

    def admit(self, reason: str, *, unverified: bool) -> bool:
        """Whether this attempt gets a full line: always, unless it is one more unverified
        refusal (one that anybody could provoke for free; the caller knows) of a reason already
        logged in full a few times this second."""
        second = self._tick()
        return not unverified or self._junk.admit(reason, second)

    def write(self, record: dict[str, Any]) -> bool:
        """Stamps and queues one line; False if it was dropped (stdout is stuck)."""
        self._tick()
        record["time"] = self._time
        return self._write(record)

    async def sync(self) -> bool:
        """Waits until every line queued so far is written; False if one could not be, in time."""
        return await self.writer.sync(self._sync_timeout)

    def flush(self, *, final: bool = False) -> None:
        """Writes the summary of suppressed refusals once their second is over, and what stdout
        takes now (`final`: the service is stopping, the current second is over too, and what is
        queued is written, waiting a little for stdout if need be)."""
        self._summarize(int(self._clock()) + (1 if final else 0))
        if final:
            self.writer.close()
        else:
            self.writer.flush()

    def _tick(self) -> int:
        second = int(self._clock())
        if second != self._second:  # formatting a time costs more than the rest of the line
            self._summarize(second)
            self._second, self._time = second, rfc3339(second)
        return second

    def _summarize(self, second: int) -> None:
        summary = self._junk.summary(second)
        if summary is not None:
            self._write(
                {
                    "event": "join_refusals_suppressed",
                    "time": rfc3339(summary.second),
                    "suppressed": summary.counts,
                    "total": sum(summary.counts.values()),
                    "message": f"refusals beyond the first {self._junk.per_second} per reason in this second",
                }
            )

    def _write(self, record: dict[str, Any]) -> bool:
        if self.worker is not None:
            record["worker"] = self.worker
        return self.writer.write(bounded_line(record))


def bounded_line(record: dict[str, Any]) -> str:
    """The record as one line of JSON of less than MAX_LINE bytes: when it would be longer, its
    longest values are cut, each with a marker saying how much, until it fits."""
    line = _COMPACT_JSON.encode(record)
    if len(line) < MAX_LINE:
        return line
    fields = dict(record)
    for _ in range(4 * len(fields)):  # each round cuts one value; a few rounds suffice
        sizes = {name: len(_COMPACT_JSON.encode(value)) for name, value in fields.items()}
        name = max(sizes, key=sizes.__getitem__)
        value, size, excess = fields[name], sizes[name], len(line) - MAX_LINE + 1
        if isinstance(value, str):
            # Its start is kept (at least _KEPT bytes of it, when the excess is more than this one
            # value can give), in proportion to its encoded size: escapes make some characters longer.
            keep = len(value) * (max(size - excess, _KEPT) - _MARKER) // size
            fields[name] = f"{value[:keep]}...[cut {len(value) - keep:,} of {len(value):,} characters]"
        else:
            fields[name] = f"[cut: {size:,} bytes]"
        line = _COMPACT_JSON.encode(fields)
        if len(line) < MAX_LINE:
            return line
    return _COMPACT_JSON.encode({"event": record.get("event"), "time": record.get("time"), "error": "line too long"})
