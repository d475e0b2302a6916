"""The join log's two small parts: bounding it under floods of junk, and writing it whole.

`JunkLimiter` decides which refusals get a full line. A refusal that happened before a token's
signature verified (not JSON, too large, a made-up token, an unknown kid, a bad signature, an
unknown join token) costs an attacker nothing to send, so a flood of them must not become a flood
of log lines: the first `per_second` of each reason in each second are logged in full, the rest
only counted, and one summary line per second gives those counts. Successful joins and refusals
of a verified identity are never limited. Every attempt is still counted in the metrics.

`WholeLineWriter` is stdout for the join log when several workers share it: whole lines only,
gathered into writes of at most PIPE_BUF bytes, which a pipe never interleaves with another
process's writes (and a file shares one offset between the workers' writes).
"""

from __future__ import annotations

import io
import os
import select
from typing import Final

from verifier.errors import Reason

from .errors import JoinReason

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

    def summary(self, second: int) -> tuple[int, dict[str, int]] | None:
        """Once a second with suppressed lines is over (`second` is later): that second and the
        count per reason, once. None while there is nothing to report."""
        if second == self._second or not self._suppressed:
            return None
        counts, self._suppressed = self._suppressed, {}
        return self._second, dict(sorted(counts.items()))


class WholeLineWriter(io.TextIOBase):
    """A text stream on a file descriptor that writes only whole lines, at most `limit` bytes
    per write(2), when `flush` is called or the next line would not fit."""

    def __init__(self, fd: int, limit: int = select.PIPE_BUF) -> None:
        super().__init__()
        self._fd = fd
        self._limit = limit
        self._pending: list[bytes] = []
        self._size = 0

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        """Queues `text`, which must be whole lines."""
        data = text.encode("utf-8")
        if self._size + len(data) > self._limit:
            self.flush()
        self._pending.append(data)
        self._size += len(data)
        return len(text)

    def flush(self) -> None:
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        view = memoryview(data)
        while view:  # a blocking write of at most PIPE_BUF is whole; a file may take it in parts
            view = view[os.write(self._fd, view) :]
