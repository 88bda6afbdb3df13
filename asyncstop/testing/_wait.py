"""``wait_until``: wait in a test for something the event loop will make true."""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Callable
from typing import Final

__all__ = ["wait_until"]

#: Seconds between two looks at the predicate: often enough that a test does
#: not wait noticeably longer than it must, rarely enough to cost nothing.
_POLL: Final = 0.005


# The timeout is this helper's point: it bounds a test's wait and names itself in the failure.
async def wait_until(predicate: Callable[[], object], timeout: float) -> None:  # noqa: ASYNC109
    """Return as soon as ``predicate()`` is true; fail the test after ``timeout`` seconds.

    The predicate is called on the event loop, first at once and then every few
    milliseconds, so it sees what the loop's other tasks (a client, a
    :class:`~asyncstop.testing.FakeExchange`) have done meanwhile::

        await wait_until(lambda: exchange.in_flight >= 8, timeout=5)

    A predicate may also be an ``async def`` (or return an awaitable), for a
    condition read over the network or from a database; it is awaited each time::

        await wait_until(fires_recorded, timeout=20)   # async def fires_recorded() -> bool

    Use it instead of a fixed ``sleep``: it waits only as long as needed, and a
    slow machine gets the whole ``timeout``. Raises :class:`AssertionError`
    naming the predicate and the timeout if it is still false by then (an
    exception the predicate raises propagates as it is).
    """
    if isinstance(timeout, bool) or not (
        isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0
    ):
        raise ValueError(f"timeout must be a positive number of seconds, not {timeout!r}")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await _holds(predicate):
        if loop.time() >= deadline:
            raise AssertionError(
                f"wait_until: {_describe(predicate)} was still false after {timeout} s"
            )
        await asyncio.sleep(_POLL)


async def _holds(predicate: Callable[[], object]) -> object:
    value = predicate()
    if inspect.isawaitable(value):
        value = await value
    return value


def _describe(predicate: Callable[[], object]) -> str:
    """Name a predicate so a failure can be found: its name, or where a lambda was written."""
    code = getattr(predicate, "__code__", None)
    name = getattr(predicate, "__qualname__", None) or repr(predicate)
    if code is not None:
        return f"{name} ({code.co_filename}:{code.co_firstlineno})"
    return name
