"""The fake exchange's record of requests (``_journal``)."""

from __future__ import annotations

import asyncio

import aiohttp

from asyncstop.testing import (
    FakeExchange,
    JournalEntry,
    Outcome,
)

from .helpers import STOP_ORDERS_PATH as PATH
from .helpers import (
    TOKEN,
    documented_headers,
    raw_delete,
)


async def test_journal_records_requests_without_the_token(session: aiohttp.ClientSession) -> None:
    """Journal entries carry method, ids, loop times, status and headers, and never the token."""
    wrong_token = "another-secret-never-stored"
    async with FakeExchange(tokens={TOKEN}, rate_limit=1, pause_grace=0) as exchange:
        oid = exchange.add_stop_order()
        loop = asyncio.get_running_loop()
        before = loop.time()
        await raw_delete(session, exchange, oid, documented_headers(token=wrong_token))
        await raw_delete(session, exchange, oid)
        await raw_delete(session, exchange, oid)  # 429: the bucket held one token
        await raw_delete(session, exchange, oid)  # a pause violation
        after = loop.time()

        refused, cancelled, limited, violation = exchange.journal
        assert isinstance(cancelled, JournalEntry)
        assert (cancelled.method, cancelled.path) == ("DELETE", PATH + oid)
        assert (cancelled.order_id, cancelled.account_id) == (oid, "acc-1")
        assert (cancelled.status, cancelled.outcome) == (200, Outcome.CANCELLED)
        assert cancelled.authorized
        assert not refused.authorized
        assert before <= refused.time <= refused.done_time <= cancelled.time <= after
        assert cancelled.duration >= 0
        assert cancelled.headers["accountId"] == "acc-1"
        assert cancelled.headers["Content-Type"] == "application/json; x-api-version=4.0"
        assert not any(name.lower() == "authorization" for name in cancelled.headers)
        assert (limited.status, violation.status) == (429, 429)
        assert exchange.pause_violations == [violation]

        everything = repr((exchange, exchange.journal, exchange.pause_violations, exchange.orders))
        for secret in (TOKEN, wrong_token):
            assert secret not in everything

        exchange.reset_journal()
        assert exchange.journal == []
        assert exchange.pause_violations == []


async def test_keep_journal_false(session: aiohttp.ClientSession) -> None:
    """With keep_journal=False nothing is journaled, but pause violations are still recorded."""
    async with FakeExchange(
        tokens={TOKEN}, keep_journal=False, rate_limit=1, pause_grace=0
    ) as exchange:
        oid = exchange.add_stop_order()
        statuses = [(await raw_delete(session, exchange, oid))[0] for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert exchange.journal == []
        assert len(exchange.pause_violations) == 1


async def test_requests_picks_one_methods_entries_in_arrival_order(
    session: aiohttp.ClientSession,
) -> None:
    """requests("DELETE") lists only the DELETEs, refused ones too; requests() lists them all."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        first, second = exchange.add_stop_orders(2)
        await raw_delete(session, exchange, first, documented_headers(token="refused"))
        async with session.head(exchange.base_url + PATH) as response:
            assert response.status == 200
        await raw_delete(session, exchange, second)
        deletes = exchange.requests("DELETE")
        assert [(e.order_id, e.status) for e in deletes] == [(first, 401), (second, 200)]
        assert exchange.requests(method="delete") == deletes
        assert [e.method for e in exchange.requests("HEAD")] == ["HEAD"]
        assert exchange.requests() == exchange.journal
        assert exchange.requests() is not exchange.journal  # a copy: a test may keep it
        assert exchange.requests("GET") == []
