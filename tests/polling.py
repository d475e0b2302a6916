"""How tests wait: for the thing itself, bounded in time, never a guessed sleep.

`wait_for` polls a condition until it holds; `holds_throughout` is its dual, for the few checks
that something does *not* happen while it has every chance to (a worker not respawned on a config
that cannot load). Both fail with an AssertionError that says what was awaited, for how long, and
what was last seen."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


def _described(condition: Callable[..., object]) -> str:
    """The condition's own source line, for a failure message that names no `what`."""
    try:
        return inspect.getsource(condition).strip()
    except (OSError, TypeError):
        return repr(condition)


async def _check(condition: Callable[[], object]) -> object:
    result = condition()
    return await result if inspect.isawaitable(result) else result


@overload
async def wait_for(
    condition: Callable[[], Awaitable[T]],
    what: str | None = None,
    *,
    within: float = ...,
    every: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


@overload
async def wait_for(
    condition: Callable[[], T],
    what: str | None = None,
    *,
    within: float = ...,
    every: float = ...,
    ignoring: tuple[type[BaseException], ...] = ...,
    detail: Callable[[], object] | None = ...,
) -> T: ...


async def wait_for(
    condition: Callable[[], object],
    what: str | None = None,
    *,
    within: float = 10.0,
    every: float = 0.01,
    ignoring: tuple[type[BaseException], ...] = (),
    detail: Callable[[], object] | None = None,
) -> object:
    """Returns condition()'s first true result (it may be a coroutine function), checking every
    `every` seconds; fails after `within` seconds. For states that signal nothing one could await:
    another task's counter, another process's metrics or output. Exceptions of the `ignoring` types
    count as "not yet" (a server still starting refuses connections); others propagate, so a
    condition can fail early (the process it waits for has exited). `detail()` is added to the
    failure message."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        try:
            last = await _check(condition)
        except ignoring as exc:
            last = exc
        else:
            if last:
                return last
        if loop.time() > deadline:
            more = f"; {detail()}" if detail is not None else ""
            raise AssertionError(
                f"{what or _described(condition)}: not reached within {within:g} s (last: {last!r}{more})"
            )
        await asyncio.sleep(every)


async def holds_throughout(
    condition: Callable[[], object],
    what: str | None = None,
    *,
    seconds: float,
    every: float = 0.01,
) -> None:
    """Checks condition() every `every` seconds for `seconds` seconds and fails at the first check
    where it does not hold: for something that must not happen while it has the chance to (each
    check is also a chance to catch a transient state that one check at the end would miss)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        last = await _check(condition)
        if not last:
            raise AssertionError(f"{what or _described(condition)}: stopped holding (last: {last!r})")
        if loop.time() > deadline:
            return
        await asyncio.sleep(every)
