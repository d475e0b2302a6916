"""Whole lines from the workers to the supervisor's stdout (the join log) and stderr.

Workers sharing one stdout pipe wrote their lines into it side by side, and a write of more than
PIPE_BUF bytes to a pipe that a log shipper reads at its own pace is taken in parts, which the other
worker's parts land between (513 of 3,809 join log lines did not parse in one run). So each worker
writes to pipes of its own, and the supervisor alone writes to stdout and stderr: whole lines, in
the order each worker wrote them, its own messages among them.

Nothing waits in memory unbounded: while BUFFER bytes wait for a slow stdout, the workers' pipes
are not read, so they fill and each worker's join log sees a stuck stdout, as one process would
(its successful joins wait for their line, then fail: no certificate without its line). A stdout
that is closed closes the workers' pipes too, so their join logs see that as well. A line longer
than BUFFER is passed on in parts, the other workers' lines waiting until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from typing import Final

BUFFER: Final = 256 * 1024
READ: Final = 64 * 1024
CHUNK: Final = select.PIPE_BUF  # after poll says writable, a pipe takes this much without blocking


def _writable(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return bool(poller.poll(0))


class _Source:
    """One writer's pipe (or the supervisor's own lines: no pipe) and its bytes not yet passed on."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.pending = bytearray()
        self.reading = False
        self.closed = False
        self.ended = asyncio.get_running_loop().create_future()  # set once its last byte is queued


class LineRelay:
    """Copies whole lines from the pipes it is given to `out` (a file descriptor it does not own)."""

    def __init__(self, out: int) -> None:
        self._out_fd = out
        self._loop = asyncio.get_running_loop()
        self._sources: list[_Source] = []
        self._own = _Source(-1)  # the supervisor's own lines
        self._own.closed = True
        self._queued = bytearray()  # whole lines (or the start of a long line of `_owner`), in order
        self._owner: _Source | None = None  # whose long line `_queued` ends with
        self._waiting = False  # for `out` to become writable
        self._broken = False  # `out` is closed: nothing is read or written any more
        self._idle = asyncio.Event()
        self._idle.set()

    def attach(self, fd: int) -> asyncio.Future[None]:
        """Relays the pipe `fd` (its read end, which the relay now owns) until its writers close
        it; the future is done once all it carried is queued."""
        source = _Source(fd)
        os.set_blocking(fd, False)
        self._sources.append(source)
        self._idle.clear()
        if self._broken:
            self._close(source)
        self._pump()
        return source.ended

    def line(self, text: str) -> None:
        """One line of the supervisor's own, placed between the workers' lines. Dropped while
        BUFFER bytes wait for a stuck output: a worker replaced again and again says a line each
        time, and nothing may grow without bound."""
        if self._broken or len(self._queued) + len(self._own.pending) >= BUFFER:
            return
        self._own.pending += text.encode("utf-8", "replace") + b"\n"
        self._idle.clear()
        self._take(self._own)
        self._pump()

    @property
    def held(self) -> int:
        """Bytes read from the pipes (or said here) and not yet written out."""
        return len(self._queued) + len(self._own.pending) + sum(len(source.pending) for source in self._sources)

    async def finished(self, seconds: float) -> bool:
        """Waits until every attached pipe has ended and all is written; False after `seconds`."""
        try:
            await asyncio.wait_for(self._idle.wait(), seconds)
        except TimeoutError:
            return False
        return True

    # -- reading ------------------------------------------------------------------------------
    def _arm(self) -> None:
        """Reads the pipes whose bytes would fit; leaves the others full (that is the back-pressure)."""
        room = len(self._queued) < BUFFER and not self._broken
        for source in self._sources:
            wanted = room and not source.closed and len(source.pending) < BUFFER
            if wanted and not source.reading:
                self._loop.add_reader(source.fd, self._read, source)
            elif source.reading and not wanted:
                self._loop.remove_reader(source.fd)
            source.reading = wanted

    def _read(self, source: _Source) -> None:
        try:
            data = os.read(source.fd, READ)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if data:
            source.pending += data
        else:  # every writer closed it: a line it left unfinished is ended here
            if (source.pending or self._owner is source) and not source.pending.endswith(b"\n"):
                source.pending += b"\n"
            self._close(source)
        self._take(source)
        self._pump()

    def _close(self, source: _Source) -> None:
        if source.reading:
            self._loop.remove_reader(source.fd)
            source.reading = False
        if not source.closed:
            source.closed = True
            with contextlib.suppress(OSError):
                os.close(source.fd)

    def _take(self, source: _Source) -> None:
        """Queues the whole lines `source` has, unless another source's long line is under way."""
        if self._owner not in (None, source):
            return
        end = source.pending.rfind(b"\n") + 1
        if end:
            self._queued += source.pending[:end]
            del source.pending[:end]
            if self._owner is source:
                self._owner = None
                for other in [*self._sources, self._own]:
                    if other is not source:
                        self._take(other)
        if len(source.pending) >= BUFFER:  # a line longer than the buffer: passed on in parts
            self._queued += source.pending
            source.pending.clear()
            self._owner = source

    def _ended(self) -> None:
        for source in [s for s in self._sources if s.closed and not s.pending]:
            self._sources.remove(source)
            if not source.ended.done():
                source.ended.set_result(None)
        if not self._sources and not self._queued and not self._own.pending:
            self._idle.set()

    # -- writing ------------------------------------------------------------------------------
    def _pump(self) -> None:
        self._write()
        self._arm()
        self._ended()

    def _write(self) -> None:
        while self._queued and not self._broken:
            if not _writable(self._out_fd):
                self._wait_writable()
                return
            try:
                written = os.write(self._out_fd, self._queued[:CHUNK])
            except BlockingIOError:
                self._wait_writable()
                return
            except OSError:  # closed (EPIPE): the workers' pipes close too, so their logs see it
                self._broken = True
                self._queued.clear()
                self._own.pending.clear()
                for source in self._sources:
                    source.pending.clear()
                    self._close(source)
                return
            del self._queued[:written]

    def _wait_writable(self) -> None:
        if self._waiting:
            return
        self._waiting = True
        try:
            self._loop.add_writer(self._out_fd, self._writable_again)
        except (OSError, ValueError):  # epoll takes no regular files: they never stay unwritable
            self._loop.call_later(0.05, self._writable_again)

    def _writable_again(self) -> None:
        self._waiting = False
        with contextlib.suppress(OSError, ValueError):
            self._loop.remove_writer(self._out_fd)
        self._pump()
