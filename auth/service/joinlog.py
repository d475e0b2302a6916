"""The audit log's writer (auditlog.AuditLog shapes the lines): whole lines on stdout.

Lines queued during one turn of the event loop are written together at the end of it (one
write(2) per batch, not per line; a successful join's line at once, see `sync`), and only as far
as stdout can take them without blocking: a chunk of whole lines, at most PIPE_BUF bytes, is
written only when poll(2) says there is room for it (a pipe then never blocks), else the log
waits for stdout to become writable. So a stdout that stops being read (a stuck log collector, a
full pipe) never freezes the event loop, and workers sharing stdout never split each other's lines.

A successful join waits for its line (`sync`) before its certificate leaves: a crash or SIGKILL
after a 200 never loses the line, because the line is in the pipe before the answer is on the
wire. The queue is bounded (`capacity` lines): when stdout is stuck and the queue is full, new
lines are dropped and counted, and successful joins fail (no certificate without a line).

(A writer thread was measured first: waking it costs a GIL hand-over of up to 5 ms per batch;
valid joins fell from 0.16 to 0.13 of the minimal endpoint and p99 doubled. bench/RESULTS.md.)
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import select
import sys
import time
from collections.abc import Callable
from typing import Final, TextIO

log = logging.getLogger("kubejoin.join")
CAPACITY: Final = 8192  # lines; about 2.5 MB
CHUNK: Final = select.PIPE_BUF  # a pipe with room for one such write never blocks it


def _writable(fd: int, timeout_ms: int = 0) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & (select.POLLOUT | select.POLLERR | select.POLLHUP) for _, event in poller.poll(timeout_ms))


def _whole_lines(batch: bytes) -> bytes:
    """The longest start of batch made of whole lines within CHUNK bytes: workers sharing stdout
    write at most PIPE_BUF at a time, which a pipe never interleaves (a longer line goes alone)."""
    if len(batch) <= CHUNK:
        return batch
    end = batch.rfind(b"\n", 0, CHUNK) + 1
    return batch[:end] if end else batch[: batch.find(b"\n") + 1 or len(batch)]


class JoinLog:
    """Writes lines. `write` queues one; `sync` waits until all lines queued so far are written.

    `stream` is a file descriptor (default: stdout's), or a text stream without one (tests),
    which is written directly."""

    def __init__(
        self,
        stream: TextIO | int | None = None,
        *,
        capacity: int = CAPACITY,
        on_drop: Callable[[int], None] | None = None,
    ) -> None:
        if stream is None:
            stream = sys.stdout.fileno()
        self._fd = stream if isinstance(stream, int) else None
        self._stream = None if isinstance(stream, int) else stream
        self._capacity = capacity
        self._on_drop = on_drop
        self._pending: list[str] = []  # lines not yet in a batch
        self._batch = b""  # the batch being written, from its first unwritten byte
        self._batch_lines = 0
        self._queued = 0  # lines accepted; line n is written once _done >= n
        self._done = 0
        self._failed = (0, 0)  # (start, end] of the last batch that could not be written
        self._waiters: collections.deque[tuple[int, asyncio.Future[bool]]] = collections.deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._scheduled = False  # a flush is due at the end of this turn of the loop
        self._waiting = False  # a flush waits for stdout to become writable
        self._warned = False
        self.stalled = False  # a wait timed out and nothing was written since

    @property
    def stream(self) -> TextIO | None:
        """The text stream written to, when it is not a file descriptor (tests)."""
        return self._stream

    def write(self, line: str) -> bool:
        """Queues one line (without its newline); False if it was dropped (the queue is full:
        stdout is stuck)."""
        if len(self._pending) + self._batch_lines >= self._capacity:
            self._dropped(1)
            return False
        self._pending.append(line + "\n")
        self._queued += 1
        if not self._scheduled and not self._waiting:
            try:
                self._loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a tool, a test): write now
                self._flush()
            else:
                self._scheduled = True
                self._loop.call_soon(self._flush)
        return True

    async def sync(self, seconds: float) -> bool:
        """Waits until every line queued so far is written; False if one of them could not be
        written, or after `seconds`."""
        target = self._queued
        if self._done < target and not self._waiting:
            # Write now rather than at the end of this turn: a certificate's answer then waits
            # for two system calls (poll, write), not for every other handler of the turn.
            self._flush()
        if self._done >= target:
            start, end = self._failed
            return not start < target <= end
        if self.stalled:  # stdout took nothing for a whole wait already: fail now, not in `seconds`
            return False
        future = asyncio.get_running_loop().create_future()
        self._waiters.append((target, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), seconds)
        except TimeoutError:
            self.stalled = True
            return False

    def flush(self) -> None:
        """Writes what stdout takes now, without waiting (the rest follows when it can)."""
        if not self._waiting:
            self._flush()

    def close(self, timeout: float = 5.0) -> None:
        """Writes what is queued, waiting at most `timeout` for stdout to take it."""
        deadline = time.monotonic() + timeout
        while (self._pending or self._batch) and time.monotonic() < deadline:
            if self._fd is not None and not _writable(self._fd, 100):
                continue
            self._flush(waiting_allowed=False)

    # -- writing ------------------------------------------------------------------------------
    def _flush(self, waiting_allowed: bool = True) -> None:
        self._scheduled = False
        if self._waiting:
            self._waiting = False
            if self._loop is not None and self._fd is not None:
                with contextlib.suppress(ValueError, OSError):
                    self._loop.remove_writer(self._fd)
        while self._pending or self._batch:
            if not self._batch:
                self._batch = "".join(self._pending).encode("utf-8")
                self._batch_lines = len(self._pending)
                self._pending.clear()
            try:
                if self._stream is not None:
                    self._stream.write(self._batch.decode("utf-8"))
                    self._stream.flush()
                    self._batch = b""
                else:
                    assert self._fd is not None
                    while self._batch:
                        if self._loop is not None and not _writable(self._fd):
                            if waiting_allowed:
                                self._wait_writable()
                            return
                        # outside an event loop nothing else waits: a blocking write is fine
                        written = os.write(self._fd, _whole_lines(self._batch) if self._loop else self._batch)
                        self._batch = self._batch[written:]
                ok = True
            except (OSError, ValueError):  # EPIPE, a closed stream
                self._batch = b""
                ok = False
            self._handled(self._batch_lines, ok)
            self._batch_lines = 0

    def _wait_writable(self) -> None:
        assert self._loop is not None and self._fd is not None
        self._waiting = True
        try:
            self._loop.add_writer(self._fd, self._flush)
        except (OSError, ValueError):  # epoll takes no regular files: they never stay unwritable
            self._loop.call_later(0.05, self._flush)

    def _handled(self, lines: int, ok: bool) -> None:
        start, self._done = self._done, self._done + lines
        self.stalled = False
        if not ok:
            self._failed = (start, self._done)
            self._dropped(lines)
        while self._waiters and self._waiters[0][0] <= self._done:
            target, future = self._waiters.popleft()
            if not future.done():
                future.set_result(ok or not start < target)

    def _dropped(self, count: int) -> None:
        if self._on_drop is not None:
            self._on_drop(count)
        if not self._warned:  # once: the metric counts them all
            self._warned = True
            log.error("the join log cannot be written (stdout is stuck or closed); lines are dropped")
