"""Shared fixtures: a fake exchange on loopback and a client pointed at it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncstop
from asyncstop.testing import FakeExchange

#: Recognisable, so that a leak is easy to find in any text.
TOKEN = "SECRET-TOKEN-3f9a1c"
ACCOUNT = "acc-1"
#: How long after a 429 a request may still arrive without counting as sent
#: inside the pause: the client may have sent it before it could read the 429.
#: The fake exchange shares this process, so a garbage-collector pass or a
#: scheduling stall of a shared 2-core machine (measured: up to ~25 ms) delays
#: both. Every test that checks pauses asks for a Retry-After of at least
#: 0.25 s, so its window still catches a client that ignores pauses: one
#: retrying 429s at once sent over 8,000 requests inside them.
PAUSE_GRACE = 0.1


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    """A fake exchange that accepts TOKEN, with no faults."""
    async with FakeExchange(tokens={TOKEN}, seed=1, pause_grace=PAUSE_GRACE) as fake:
        yield fake


@pytest.fixture
async def client(exchange: FakeExchange) -> AsyncIterator[asyncstop.AsyncStopClient]:
    """An open client for ACCOUNT on the fake exchange."""
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=5.0
    ) as opened:
        yield opened


_PACKAGE = Path(asyncstop.__file__).parent
_TESTING = _PACKAGE / "testing"


def client_tasks() -> list[asyncio.Task[object]]:
    """Tasks on this loop running asyncstop's client code (the fake exchange's are left out)."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = Path(code.co_filename) if code is not None else None
        if (
            filename is not None
            and filename.is_relative_to(_PACKAGE)
            and not filename.is_relative_to(_TESTING)
        ):
            found.append(task)
    return found
