"""The fake exchange's rate limit, 429 pauses and their judge (``_ratelimit``)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import aiohttp

from asyncstop.testing import (
    FakeExchange,
    Fault,
)

from .helpers import (
    TOKEN,
    documented_headers,
    raw_delete,
)


async def test_rate_limit_integer_retry_after_and_violations(
    session: aiohttp.ClientSession,
) -> None:
    """An empty bucket answers 429, integer Retry-After; requests in the pause are violations."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=1, rate_limit_burst=2, pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        other = exchange.add_stop_order("acc-2")
        answers = [await raw_delete(session, exchange, oid) for oid in ids]
        assert [status for status, _, _ in answers] == [200, 200, 429, 429]
        _, headers, body = answers[2]
        assert headers["Retry-After"] == "1"
        assert json.loads(body) == {
            "errorCode": 10029,
            "message": "Too many requests",
            "errors": [],
        }
        assert [e.order_id for e in exchange.pause_violations] == [ids[3]]
        assert exchange.journal[2].outcome == exchange.journal[3].outcome == "rate_limited"
        assert exchange.open_stop_orders("acc-1") == set(ids[2:])
        # The limit and the pause are per account.
        assert (await raw_delete(session, exchange, other, documented_headers("acc-2")))[0] == 200


async def test_rate_limit_float_retry_after_and_pause_end(session: aiohttp.ClientSession) -> None:
    """retry_after=0.07 sends exactly "0.07"; violators get the rest; after the pause, all fine."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=20, rate_limit_burst=1, retry_after=0.07, pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        assert (await raw_delete(session, exchange, ids[0]))[0] == 200
        status, headers, _ = await raw_delete(session, exchange, ids[1])
        assert (status, headers["Retry-After"]) == (429, "0.07")
        status, headers, _ = await raw_delete(session, exchange, ids[2])
        assert status == 429
        assert 0 <= float(headers["Retry-After"]) <= 0.07
        assert len(exchange.pause_violations) == 1
        await asyncio.sleep(0.2)
        assert (await raw_delete(session, exchange, ids[3]))[0] == 200
        assert len(exchange.pause_violations) == 1


async def test_rate_limit_http_date_retry_after(session: aiohttp.ClientSession) -> None:
    """retry_after="date" sends an HTTP-date one to two seconds ahead."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=1, retry_after="date", pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(3)
        assert (await raw_delete(session, exchange, ids[0]))[0] == 200
        status, headers, _ = await raw_delete(session, exchange, ids[1])
        assert status == 429
        assert headers["Retry-After"].endswith(" GMT")
        ahead = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp() - time.time()
        assert 0 < ahead <= 2.5
        status, violation_headers, _ = await raw_delete(session, exchange, ids[2])
        assert (status, violation_headers["Retry-After"]) == (429, headers["Retry-After"])
        assert len(exchange.pause_violations) == 1


async def test_requests_within_the_grace_are_not_violations(
    session: aiohttp.ClientSession,
) -> None:
    """Requests early in a pause still get 429 from the empty bucket but are not violations."""
    async with FakeExchange(tokens={TOKEN}, rate_limit=1, pause_grace=60) as exchange:
        ids = exchange.add_stop_orders(4)
        statuses = [(await raw_delete(session, exchange, oid))[0] for oid in ids]
        assert statuses == [200, 429, 429, 429]
        assert exchange.pause_violations == []


async def test_fault_rate_limited_starts_a_pause(session: aiohttp.ClientSession) -> None:
    """Fault.rate_limited answers 429 with its Retry-After and pauses the account if it can."""
    async with FakeExchange(tokens={TOKEN}, pause_grace=0) as exchange:
        oid = exchange.add_stop_order()
        other = exchange.add_stop_order("acc-2")
        exchange.inject(Fault.rate_limited(retry_after="30"))
        status, headers, body = await raw_delete(session, exchange, oid)
        assert (status, headers["Retry-After"]) == (429, "30")
        assert json.loads(body)["errorCode"] == 10029
        status, headers, _ = await raw_delete(session, exchange, oid)
        assert status == 429  # inside the pause: a violation
        assert 0 < int(headers["Retry-After"]) <= 30
        assert [e.order_id for e in exchange.pause_violations] == [oid]
        assert (await raw_delete(session, exchange, other, documented_headers("acc-2")))[0] == 200

        # Without a Retry-After the client cannot know how long to wait: no pause.
        exchange.inject(Fault.rate_limited(retry_after=None))
        status, headers, _ = await raw_delete(
            session, exchange, "unknown", documented_headers("acc-3")
        )
        assert status == 429
        assert "Retry-After" not in headers
        assert (await raw_delete(session, exchange, "unknown", documented_headers("acc-3")))[
            0
        ] == 404
        assert len(exchange.pause_violations) == 1

        # An HTTP-date pauses until then; a value no client can read pauses nothing.
        in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
        exchange.inject(Fault.rate_limited(in_a_minute), Fault.rate_limited("soon"))
        for account_id in ("acc-4", "acc-5"):
            assert (await raw_delete(session, exchange, "x", documented_headers(account_id)))[
                0
            ] == 429
            await raw_delete(session, exchange, "x", documented_headers(account_id))
        assert [e.account_id for e in exchange.pause_violations] == ["acc-1", "acc-4"]


async def test_a_loop_stall_after_a_429_is_excused_but_not_a_later_request(
    session: aiohttp.ClientSession,
) -> None:
    """A request stamped late by a stall of the shared loop is excused; one sent later is not."""
    async with FakeExchange(tokens={TOKEN}, pause_grace=0.1) as exchange:
        ids = exchange.add_stop_orders(3)
        exchange.inject(Fault.rate_limited("30"))
        assert (await raw_delete(session, exchange, ids[0]))[0] == 429
        # Stands for a garbage-collector pass or the OS descheduling the process:
        # everything on the loop, the exchange's stamping included, waits.
        time.sleep(0.3)  # noqa: ASYNC251 - the stall is the point
        # Excused like a request inside the grace: it passes, as there is no token bucket.
        assert (await raw_delete(session, exchange, ids[1]))[0] == 200
        assert exchange.pause_violations == []
        await asyncio.sleep(0.6)  # no stall: the loop ran, the client could have read the 429
        assert (await raw_delete(session, exchange, ids[2]))[0] == 429
        assert [e.order_id for e in exchange.pause_violations] == [ids[2]]
