"""Shared fixtures: a fake exchange on loopback and clients pointed at it.

Constants and helper functions are in ``tests/helpers.py``; import them from there.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

import asyncstop
from asyncstop.testing import FakeExchange

from .helpers import ACCOUNT, PAUSE_GRACE, TOKEN, ClientFactory
from .postgres import postgres_dsn, postgres_server  # noqa: F401 - fixtures of the off-host tests


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    """A fake exchange that accepts TOKEN and knows ACCOUNT, with no faults."""
    async with FakeExchange(tokens={TOKEN}, seed=1, pause_grace=PAUSE_GRACE) as fake:
        fake.add_account(ACCOUNT)
        yield fake


@pytest.fixture
async def make_client(exchange: FakeExchange) -> AsyncIterator[ClientFactory]:
    """Opens clients for ACCOUNT on the fake exchange (overrides win); closes them at the end."""
    async with AsyncExitStack() as opened:

        async def make(**overrides: Any) -> asyncstop.AsyncStopClient:
            settings: dict[str, Any] = {
                "base_url": exchange.base_url,
                "token": TOKEN,
                "account_id": ACCOUNT,
                "timeout": 5.0,
            }
            settings.update(overrides)
            client = asyncstop.AsyncStopClient(**settings)
            return await opened.enter_async_context(client)

        yield make


@pytest.fixture
async def client(make_client: ClientFactory) -> asyncstop.AsyncStopClient:
    """An open client for ACCOUNT on the fake exchange."""
    return await make_client()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session that sends each request exactly once (raw fake-exchange tests)."""
    async with aiohttp.ClientSession() as session:
        # aiohttp silently resends an idempotent request (DELETE is one) once when a
        # reused keep-alive connection turns out to be closed. The fake's dropped
        # connections must reach these tests as they happened: one request per attempt.
        session._retry_connection = False
        yield session
