"""The fake exchange's server (``_exchange``): routing, requests in flight, lifetime, names."""

from __future__ import annotations

import asyncio
import gc
import re

import aiohttp
import pytest

import asyncstop.testing
from asyncstop.testing import (
    FakeExchange,
    Fault,
    Faults,
    wait_until,
)

from .helpers import (
    DISCONNECTED,
    TOKEN,
    WAIT_LIMIT,
    documented_headers,
    raw_delete,
)
from .helpers import STOP_ORDERS_PATH as PATH


async def test_other_methods_are_405(session: aiohttp.ClientSession) -> None:
    """Methods other than DELETE and HEAD get 405 with an Allow header and change nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        for method in ("GET", "POST", "PUT"):
            async with session.request(
                method, exchange.base_url + PATH + oid, headers=documented_headers()
            ) as response:
                assert response.status == 405
                assert response.headers["Allow"] == "DELETE, HEAD"
        assert exchange.orders[oid].live
        assert {e.outcome for e in exchange.journal} == {"method_not_allowed"}


async def test_an_undeclared_method_on_the_accounts_path_is_405_before_any_header_check(
    session: aiohttp.ClientSession,
) -> None:
    """DELETE /accounts, even without a token or accountId, gets 405 Allow: GET, HEAD, not a 400."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        for headers in ({}, documented_headers()):
            async with session.delete(
                exchange.base_url + "/frontoffice/api/v3/accounts", headers=headers
            ) as response:
                assert response.status == 405
                assert response.headers["Allow"] == "GET, HEAD"
        assert exchange.orders[oid].live
        assert [e.outcome for e in exchange.journal] == ["method_not_allowed"] * 2


async def test_head_is_a_warm_up(session: aiohttp.ClientSession) -> None:
    """HEAD on any path answers 200, no body, connection kept alive; journaled as warm_up."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        async with session.head(exchange.base_url + PATH) as response:
            assert response.status == 200
            assert await response.read() == b""
            assert response.headers.get("Connection", "").lower() != "close"
        async with session.head(exchange.base_url + "/anything") as response:
            assert response.status == 200
        assert (await raw_delete(session, exchange, oid))[0] == 200
        assert [e.outcome for e in exchange.journal] == ["warm_up", "warm_up", "cancelled"]
        assert exchange.max_in_flight == 1  # HEAD is not a DELETE in flight


async def test_max_in_flight_counts_concurrent_requests(session: aiohttp.ClientSession) -> None:
    """in_flight and max_in_flight count DELETEs inside the exchange, hung ones until close."""
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    try:
        ids = exchange.add_stop_orders(5)
        exchange.inject(*[Fault.hang() for _ in ids])
        requests = [asyncio.create_task(raw_delete(session, exchange, oid)) for oid in ids]
        await wait_until(lambda: exchange.in_flight >= 5, timeout=WAIT_LIMIT)
        assert exchange.max_in_flight == 5
        assert [e.outcome for e in exchange.journal] == ["hung"] * 5
        assert all(e.done_time == float("inf") for e in exchange.journal)
    finally:
        await exchange.close()
    for request in requests:
        with pytest.raises(DISCONNECTED):
            await request
    assert exchange.in_flight == 0
    assert exchange.max_in_flight == 5
    assert all(e.status is None and e.done_time < float("inf") for e in exchange.journal)
    assert exchange.open_stop_orders() == set(ids)


async def test_a_hung_request_leaves_in_flight_when_its_client_gives_up(
    session: aiohttp.ClientSession,
) -> None:
    """A hung request stops counting in in_flight once its client has closed the connection."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.hang())
        with pytest.raises(TimeoutError):
            await session.delete(
                exchange.base_url + PATH + order_id,
                headers=documented_headers(),
                timeout=aiohttp.ClientTimeout(total=0.2),
            )
        await wait_until(lambda: exchange.in_flight == 0, timeout=WAIT_LIMIT)
        [entry] = exchange.journal
        assert entry.outcome == "hung"
        assert entry.status is None
        assert order_id in exchange.open_stop_orders()


async def test_latency_delays_the_answer(session: aiohttp.ClientSession) -> None:
    """A fixed latency holds each answer back at least that long, counted as in flight."""
    async with FakeExchange(tokens={TOKEN}, faults=Faults(latency=0.05)) as exchange:
        oid = exchange.add_stop_order()
        assert (await raw_delete(session, exchange, oid))[0] == 200
        (entry,) = exchange.journal
        assert 0.049 <= entry.duration < 10


async def test_close_releases_hung_and_slow_requests_cleanly(
    session: aiohttp.ClientSession,
) -> None:
    """close() drops a hung and a slow request and leaves no task or transport behind."""
    exchange = FakeExchange(tokens={TOKEN}, faults=Faults(latency=60.0))
    await exchange.start()
    hung, slow = exchange.add_stop_orders(2)
    exchange.inject_for(hung, Fault.hang())
    requests = [asyncio.create_task(raw_delete(session, exchange, oid)) for oid in (hung, slow)]
    await wait_until(lambda: exchange.in_flight >= 2, timeout=WAIT_LIMIT)
    async with asyncio.timeout(10):
        await exchange.close()
        await exchange.close()  # idempotent
        for request in requests:
            with pytest.raises(DISCONNECTED):
                await request
    assert [e.outcome for e in exchange.journal] == ["hung", "dropped_before"]
    assert exchange.in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    gc.collect()  # an unclosed transport would warn here, and warnings are errors


async def test_close_ends_an_endless_body_its_client_stopped_reading(
    session: aiohttp.ClientSession,
) -> None:
    """close() ends a stream blocked on a client that no longer reads, without waiting for it."""
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    order_id = exchange.add_stop_order()
    exchange.inject(Fault.endless_body())
    async with session.delete(
        exchange.base_url + PATH + order_id, headers=documented_headers()
    ) as response:
        assert response.status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        await exchange.close()
        # The exchange's shutdown timeout is 5 s; a stream left to it would take that long.
        assert loop.time() - started < 4
    assert exchange.in_flight == 0


def test_constructor_needs_no_event_loop() -> None:
    """FakeExchange is built and filled outside any event loop; base_url needs start()."""
    exchange = FakeExchange(tokens={TOKEN})
    exchange.add_stop_orders(2)
    with pytest.raises(RuntimeError, match="not started"):
        _ = exchange.base_url
    assert "unopened" in repr(exchange)


async def test_lifetime() -> None:
    """start() binds an ephemeral loopback port once; close() is idempotent; no restart."""
    unused = FakeExchange(tokens={TOKEN})
    await unused.close()
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", exchange.base_url)
    assert exchange.port > 0
    with pytest.raises(RuntimeError, match="already started"):
        await exchange.start()
    await exchange.close()
    await exchange.close()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await exchange.start()
    assert "closed" in repr(exchange)


def test_public_names() -> None:
    """Every public name is in __all__, documented, and shows asyncstop.testing as its module."""
    public = {
        name
        for name, value in vars(asyncstop.testing).items()
        if not name.startswith("_") and not isinstance(value, type(asyncstop))
    }
    assert set(asyncstop.testing.__all__) == public
    for name in asyncstop.testing.__all__:
        value = getattr(asyncstop.testing, name)
        assert value.__doc__, name
        assert value.__module__ == "asyncstop.testing", name
