"""What can go wrong on the fake exchange, and which request it happens to (``_faults``)."""

from __future__ import annotations

import json
import random

import aiohttp
import pytest

from asyncstop.testing import (
    FakeExchange,
    Fault,
    Faults,
    LongTailLatency,
    spread_faults,
)

from .helpers import (
    DISCONNECTED,
    TOKEN,
    documented_headers,
    raw_delete,
)
from .helpers import STOP_ORDERS_PATH as PATH


async def test_same_seed_gives_same_ids_and_fault_sequence(session: aiohttp.ClientSession) -> None:
    """The same seed gives the same order ids and the same random faults; another seed does not."""

    async def run(seed: int) -> tuple[list[str], list[str]]:
        faults = Faults(error_before=0.3, error_after=0.2, latency=LongTailLatency(0.001, 0.002))
        async with FakeExchange(tokens={TOKEN}, seed=seed, faults=faults) as exchange:
            ids = exchange.add_stop_orders(30)
            for oid in ids:
                await raw_delete(session, exchange, oid)
            return ids, [e.outcome for e in exchange.journal]

    ids, outcomes = await run(7)
    assert await run(7) == (ids, outcomes)
    assert {"cancelled", "error_before", "error_after"} <= set(outcomes)
    other_ids, other_outcomes = await run(8)
    assert set(other_ids).isdisjoint(ids)
    assert other_outcomes != outcomes


def test_long_tail_latency_is_seeded_and_bounded() -> None:
    """LongTailLatency draws match its median and p99, never exceed max, and repeat per seed."""
    latency = LongTailLatency(median=0.02, p99=0.2, max=1.0)
    rng = random.Random(3)
    draws = sorted(latency.sample(rng) for _ in range(20_000))
    assert 0.018 < draws[10_000] < 0.022
    assert 0.17 < draws[19_800] < 0.23
    assert draws[0] > 0
    assert draws[-1] <= 1.0
    rng_again = random.Random(3)
    assert sorted(latency.sample(rng_again) for _ in range(20_000)) == draws


async def test_fault_error_before_and_after(session: aiohttp.ClientSession) -> None:
    """Fault.error answers its status (Retry-After, custom body) before or after cancelling."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        first, second, third = exchange.add_stop_orders(3)
        exchange.inject(
            Fault.error(503, retry_after="2"),
            Fault.error(500, after=True),
            Fault.error(502, body=b"<html>Bad gateway</html>"),
        )
        status, headers, body = await raw_delete(session, exchange, first)
        assert (status, headers["Retry-After"]) == (503, "2")
        assert json.loads(body)["message"] == "Service Unavailable"
        assert exchange.orders[first].live
        assert (await raw_delete(session, exchange, second))[0] == 500
        assert not exchange.orders[second].live
        assert (await raw_delete(session, exchange, third))[2] == b"<html>Bad gateway</html>"
        assert [(e.outcome, e.applied) for e in exchange.journal] == [
            ("error_before", False),
            ("error_after", True),
            ("error_before", False),
        ]
        assert exchange.pending_faults == 0


async def test_fault_drop_before_leaves_the_order(session: aiohttp.ClientSession) -> None:
    """Fault.drop() closes the connection with no answer and cancels nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        exchange.inject(Fault.drop())
        with pytest.raises(DISCONNECTED):
            await raw_delete(session, exchange, oid)
        assert exchange.orders[oid].live
        (entry,) = exchange.journal
        assert (entry.status, entry.outcome, entry.applied) == (None, "dropped_before", False)
        assert (await raw_delete(session, exchange, oid))[0] == 200


async def test_drop_after_applies_and_client_sees_disconnect(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.drop(after=True) cancels, then the client sees its reused connection close."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        async with session.head(exchange.base_url + PATH) as response:
            assert response.status == 200  # the connection is now an idle keep-alive one
        exchange.inject(Fault.drop(after=True))
        with pytest.raises(DISCONNECTED):
            await raw_delete(session, exchange, oid)
        assert not exchange.orders[oid].live
        deletes = [e for e in exchange.journal if e.method == "DELETE"]
        assert [(e.status, e.outcome, e.applied) for e in deletes] == [
            (None, "dropped_after", True)
        ]
        assert (await raw_delete(session, exchange, oid))[0] == 404


async def test_random_drop_after(session: aiohttp.ClientSession) -> None:
    """Faults(drop_after=1.0) drops every answer after applying the cancel."""
    async with FakeExchange(tokens={TOKEN}, faults=Faults(drop_after=1.0)) as exchange:
        ids = exchange.add_stop_orders(3)
        for oid in ids:
            with pytest.raises(DISCONNECTED):
                await raw_delete(session, exchange, oid)
        assert exchange.open_stop_orders() == set()
        assert {e.outcome for e in exchange.journal} == {"dropped_after"}


async def test_fault_unauthorized_with_a_valid_token(session: aiohttp.ClientSession) -> None:
    """Fault.unauthorized() answers 401 even to an accepted token, cancelling nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        exchange.inject(Fault.unauthorized())
        assert (await raw_delete(session, exchange, oid))[0] == 401
        assert exchange.orders[oid].live
        assert exchange.journal[0].authorized
        assert (await raw_delete(session, exchange, oid))[0] == 200


async def test_inject_for_comes_before_the_global_fifo(session: aiohttp.ClientSession) -> None:
    """Per-order faults are used only by that order and before the shared FIFO."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        first, second = exchange.add_stop_orders(2)
        exchange.inject(Fault.error(503))
        exchange.inject_for(second, Fault.error(502), Fault.error(504))
        assert exchange.pending_faults == 3
        assert (await raw_delete(session, exchange, second))[0] == 502
        assert (await raw_delete(session, exchange, second))[0] == 504
        assert (await raw_delete(session, exchange, second))[0] == 503  # the FIFO's turn
        assert (await raw_delete(session, exchange, first))[0] == 200
        assert exchange.pending_faults == 0


async def test_a_schedule_fires_by_request_number(session: aiohttp.ClientSession) -> None:
    """schedule={n: fault} gives the n-th request past the gate its fault, ahead of queued ones."""
    async with FakeExchange(
        tokens={TOKEN}, schedule={2: Fault.error(502), 4: Fault.error(504)}
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        exchange.inject_for(ids[1], Fault.error(500))
        assert exchange.pending_faults == 3
        await raw_delete(
            session, exchange, ids[0], documented_headers(token="refused")
        )  # gate: 401
        statuses = [(await raw_delete(session, exchange, oid))[0] for oid in ids]
        # ids[1] was request 2: the schedule won, and its own fault waited for its next request.
        assert statuses == [200, 502, 200, 504]
        assert (await raw_delete(session, exchange, ids[1]))[0] == 500
        assert exchange.pending_faults == 0
        assert exchange.requests_numbered == 5
        with pytest.raises(ValueError, match="after the 5 requests"):
            exchange.inject_at(5, Fault.drop())
        exchange.inject_at(6, Fault.drop())
        with pytest.raises(ValueError, match="already"):
            exchange.inject_at(6, Fault.hang())


def test_spread_faults_is_seeded_and_within_range() -> None:
    """spread_faults puts each fault at its own request number, the same for the same seed."""
    faults = [Fault.rate_limited("0.25")] * 5 + [Fault.hang()] * 3
    schedule = spread_faults(faults, within=40, seed=7)
    assert sorted(schedule.values(), key=repr) == sorted(faults, key=repr)
    assert all(1 <= number <= 40 for number in schedule)
    assert spread_faults(faults, within=40, seed=7) == schedule
    assert spread_faults(faults, within=40, seed=8) != schedule
    with pytest.raises(ValueError, match="within"):
        spread_faults(faults, within=7)


def test_faults_are_validated() -> None:
    """Impossible fault settings are refused when they are built."""
    with pytest.raises(ValueError, match="add up"):
        Faults(error_before=0.7, drop_after=0.5)
    with pytest.raises(ValueError, match="probability"):
        Faults(hang=-0.1)
    with pytest.raises(ValueError, match="latency"):
        Faults(latency=-1.0)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault.error(200)
    with pytest.raises(ValueError, match="CR, LF"):
        Fault.redirect("http://x\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError, match="median"):
        LongTailLatency(median=0)
    with pytest.raises(TypeError, match="single str"):
        FakeExchange(tokens=TOKEN)
    exchange = FakeExchange(tokens={TOKEN})
    with pytest.raises(TypeError, match="Fault"):
        exchange.inject("drop")  # type: ignore[arg-type]


async def test_random_429s_state_their_retry_after_and_pause_the_account(
    session: aiohttp.ClientSession,
) -> None:
    """Faults(rate_limited=1.0) answers 429 with retry_after as the header and pauses for it."""
    faults = Faults(rate_limited=1.0, retry_after=0.5)
    async with FakeExchange(tokens={TOKEN}, faults=faults, pause_grace=0) as exchange:
        first, second = exchange.add_stop_orders(2)
        status, headers, _ = await raw_delete(session, exchange, first)
        assert (status, headers["Retry-After"]) == (429, "0.5")
        exchange.faults = Faults()
        assert (await raw_delete(session, exchange, second))[0] == 429  # inside the pause
        assert [e.order_id for e in exchange.pause_violations] == [second]
        exchange.faults = Faults(rate_limited=1.0, retry_after=None)
        status, headers, _ = await raw_delete(session, exchange, first, documented_headers("acc-2"))
        assert status == 429
        assert "Retry-After" not in headers
        assert exchange.open_stop_orders() == {first, second}
    with pytest.raises(ValueError, match="retry_after"):
        Faults(rate_limited=0.5, retry_after=float("inf"))
    with pytest.raises(ValueError, match="add up"):
        Faults(rate_limited=0.6, hang=0.5)
