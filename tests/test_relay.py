"""The supervisor's relay of its workers' output (auth/runtime/relay.py), on real pipes: whole
lines whatever the writers and the reader do, back-pressure instead of memory, a closed output
passed on to the writers."""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
from collections.abc import Iterator

import pytest

from auth.runtime.relay import BUFFER, LineRelay
from tests.polling import wait_for


@pytest.fixture
def output() -> Iterator[tuple[int, int]]:
    """A pipe standing for the supervisor's stdout: (read end, write end)."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    yield read, write
    for fd in (read, write):
        with contextlib.suppress(OSError):
            os.close(fd)


def drain(fd: int, limit: int = 1 << 20) -> bytes:
    """What the pipe holds now (at most `limit` bytes)."""
    data = b""
    with contextlib.suppress(BlockingIOError):
        while len(data) < limit and (chunk := os.read(fd, min(65536, limit - len(data)))):
            data += chunk
    return data


def writer(relay: LineRelay) -> tuple[int, asyncio.Future[None]]:
    """A worker's pipe: its write end, and the relay's future for it."""
    read, write = os.pipe()
    return write, relay.attach(read)


async def test_long_lines_from_two_writers_stay_whole_on_a_slow_reader(output: tuple[int, int]) -> None:
    """Two writers each write lines longer than PIPE_BUF, in pieces (as a blocking write to a full
    pipe is taken), while the reader takes a little at a time."""
    read, write = output
    relay = LineRelay(write)
    first, first_done = writer(relay)
    second, second_done = writer(relay)
    lines = {
        fd: [f"{fd}:{n}:".encode() + b"x" * (select.PIPE_BUF + 500 * n) + b"\n" for n in range(20)]
        for fd in (first, second)
    }
    received = b""
    for n in range(20):
        for fd in (first, second):
            line = lines[fd][n]
            for start in range(0, len(line), 1000):  # the other writer's pieces come in between
                os.write(fd, line[start : start + 1000])
                await asyncio.sleep(0)
                received += drain(read, 2000)  # a slow reader: a little at each turn
    for fd in (first, second):
        os.close(fd)
    await asyncio.wait_for(asyncio.gather(first_done, second_done), 10)
    assert await relay.finished(10)
    received += drain(read)
    assert sorted(received.splitlines(keepends=True)) == sorted(lines[first] + lines[second])
    for fd in (first, second):  # and each writer's lines in its own order
        assert [line for line in received.splitlines(keepends=True) if line.startswith(f"{fd}:".encode())] == lines[fd]


async def test_own_lines_go_between_the_workers_lines(output: tuple[int, int]) -> None:
    read, write = output
    relay = LineRelay(write)
    fd, done = writer(relay)
    os.write(fd, b"half a li")
    await wait_for(lambda: relay.held == len(b"half a li"), "the relay holding a partial line")
    relay.line("kubejoin: worker 0 exited")
    os.write(fd, b"ne\n")
    os.close(fd)
    await asyncio.wait_for(done, 10)
    assert await relay.finished(10)
    assert drain(read).splitlines() == [b"kubejoin: worker 0 exited", b"half a line"]


async def test_a_line_cut_short_by_its_writers_end_is_ended(output: tuple[int, int]) -> None:
    read, write = output
    relay = LineRelay(write)
    fd, done = writer(relay)
    os.write(fd, b'{"event":"join","res')  # the worker was killed mid-line
    os.close(fd)
    await asyncio.wait_for(done, 10)
    relay.line("next")
    assert await relay.finished(10)
    assert drain(read) == b'{"event":"join","res\nnext\n'


async def test_a_stuck_reader_stops_the_writers_not_memory(output: tuple[int, int]) -> None:
    """Nobody reads the output: the relay holds at most BUFFER bytes (and one read more), and the
    writer's pipe fills, so the writer sees a stuck stdout as it would without the relay."""
    read, write = output
    relay = LineRelay(write)
    fd, done = writer(relay)
    os.set_blocking(fd, False)
    line = b"y" * 1000 + b"\n"
    written = 0
    with pytest.raises(BlockingIOError):
        for _ in range(10_000):  # 10 MB: far more than the pipes and the buffer hold
            written += os.write(fd, line)
            await asyncio.sleep(0)
    assert written < 2 * BUFFER + 4 * 65536  # the relay's bound plus three pipes' worth
    received = b""
    while len(received) < written:  # the reader comes back: everything arrives, whole
        await wait_for(lambda: select.select([read], [], [], 0)[0] != [], "output")
        received += drain(read)
    os.close(fd)
    await asyncio.wait_for(done, 10)
    assert set(received.splitlines(keepends=True)) == {line} and len(received) == written


async def test_a_closed_output_closes_the_writers_pipes(output: tuple[int, int]) -> None:
    """stdout closed: the workers must see it (their join logs then refuse certificates), not
    write into a relay that drops their lines."""
    read, write = output
    relay = LineRelay(write)
    fd, done = writer(relay)
    os.close(read)
    os.write(fd, b"a line nobody will read\n")
    await asyncio.wait_for(done, 10)
    with pytest.raises(BrokenPipeError):
        os.write(fd, b"another\n")
    os.close(fd)


async def test_a_line_longer_than_the_buffer_goes_whole_while_others_wait(output: tuple[int, int]) -> None:
    read, write = output
    relay = LineRelay(write)
    long_fd, long_done = writer(relay)
    short_fd, short_done = writer(relay)
    os.set_blocking(long_fd, False)
    long_line = b"L" * (3 * BUFFER) + b"\n"
    short = [b"short %d\n" % n for n in range(50)]
    received, sent = b"", 0
    while sent < len(long_line) or short:
        with contextlib.suppress(BlockingIOError):
            sent += os.write(long_fd, long_line[sent : sent + 70_000])
        if short:
            os.write(short_fd, short.pop(0))
        await asyncio.sleep(0)
        received += drain(read)
    for fd in (long_fd, short_fd):
        os.close(fd)

    def relayed() -> bool:  # the reader keeps reading until the relay has passed everything on
        nonlocal received
        received += drain(read)
        return long_done.done() and short_done.done() and relay.held == 0

    await wait_for(relayed, "everything relayed")
    received += drain(read)
    lines = received.splitlines(keepends=True)
    assert long_line in lines
    assert sorted(line for line in lines if line != long_line) == sorted(b"short %d\n" % n for n in range(50))


async def test_own_lines_for_a_stuck_reader_are_bounded(output: tuple[int, int]) -> None:
    """Nobody reads the output and the supervisor keeps saying things (a worker replaced again and
    again): what waits stays within the buffer (and the pipe's own room) instead of growing."""
    _, write = output
    relay = LineRelay(write)
    for n in range(2000):  # 2 MB of lines, far beyond the pipe and the buffer
        relay.line(f"kubejoin: worker 0 (pid {n}) exited with status -9; starting another " + "." * 900)
        await asyncio.sleep(0)
    assert relay.held < BUFFER + 1024
