"""wait_until (``_wait``): wait in a test for what the loop will make true."""

from __future__ import annotations

import asyncio

import pytest

from asyncstop.testing import (
    wait_until,
)

from .helpers import (
    WAIT_LIMIT,
)


async def test_wait_until_returns_once_the_loop_makes_it_true() -> None:
    """wait_until returns as soon as another callback on the loop makes the predicate true."""
    flag: list[bool] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, flag.append, True)
    await wait_until(lambda: flag, timeout=WAIT_LIMIT)
    assert flag == [True]


async def test_wait_until_fails_naming_the_timeout() -> None:
    """wait_until raises AssertionError naming the predicate and the timeout when it stays false."""
    with pytest.raises(AssertionError, match=r"still false after 0\.05 s") as failure:
        await wait_until(lambda: False, timeout=0.05)
    assert "test_fake_exchange_wait.py" in str(failure.value)
    with pytest.raises(ValueError, match="timeout"):
        await wait_until(lambda: True, timeout=0)


async def test_wait_until_awaits_an_async_predicate() -> None:
    """An async predicate is awaited at each look, and its answer decides (not the coroutine)."""
    looks: list[int] = []

    async def third_look() -> bool:
        await asyncio.sleep(0)
        looks.append(1)
        return len(looks) >= 3

    await wait_until(third_look, timeout=WAIT_LIMIT)
    assert len(looks) == 3

    async def never() -> bool:
        return False

    with pytest.raises(AssertionError, match="never"):
        await wait_until(never, timeout=0.05)
