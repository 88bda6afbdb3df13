"""Hedged cancels: a backup request for a slow order, within every bound the call promises."""

from __future__ import annotations

import pytest

import asyncstop
from asyncstop import CancelOutcome
from asyncstop.testing import FakeExchange, Fault

from .helpers import ACCOUNT, PAUSE_GRACE, TOKEN, requests_per_order


async def test_a_hung_request_is_overtaken_by_its_hedge(exchange: FakeExchange) -> None:
    """Two orders whose first request hangs are cancelled by their hedges, counted exactly."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    for order_id in ids[:2]:
        exchange.inject_for(order_id, Fault.hang())
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=5.0
    ) as client:
        report = await client.cancel_stop_orders(ids, concurrency=32, hedge=0.05, deadline=3.0)
    assert report.ok
    assert report.counts[CancelOutcome.CANCELLED] == 20
    assert (report.hedges_sent, report.hedges_won) == (2, 2)
    seen = requests_per_order(exchange)
    for result in report.results:
        assert result.attempts == seen[result.order_id]
    assert exchange.open_stop_orders() == set()
    assert exchange.max_in_flight <= 32


async def test_hedges_stay_within_their_budget(exchange: FakeExchange) -> None:
    """With every first request hung, hedges stay within 10 % of the call's other requests."""
    ids = exchange.add_stop_orders(100, account_id=ACCOUNT)
    for order_id in ids:
        exchange.inject_for(order_id, Fault.hang())
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=0.3
    ) as client:
        report = await client.cancel_stop_orders(ids, concurrency=100, hedge=0.02, deadline=5.0)
    seen = requests_per_order(exchange)
    assert 0 < report.hedges_sent <= 0.1 * (sum(seen.values()) - report.hedges_sent)
    assert report.ok
    assert all(r.attempts == seen[r.order_id] for r in report.results)


async def test_no_hedge_after_a_429_and_none_inside_the_pause() -> None:
    """Once the account met a 429, no hedge is sent, and no request lands inside the pause."""
    async with FakeExchange(tokens={TOKEN}, seed=4, pause_grace=PAUSE_GRACE) as exchange:
        ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
        exchange.inject_for(ids[0], Fault.rate_limited("0.3"))
        for order_id in ids[1:]:
            exchange.inject_for(order_id, Fault.hang())
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=0.5
        ) as client:
            report = await client.cancel_stop_orders(ids, concurrency=1, hedge=0.01, deadline=6.0)
        assert report.hedges_sent == 0
        assert exchange.pause_violations == []
        assert len(report.results) == 40


@pytest.mark.parametrize("hedge", ["auto", 0.01])
async def test_every_invariant_holds_with_hedging_under_latency(hedge: object) -> None:
    """Under a long tail, hedging keeps one result per item, exact attempts and the bounds."""
    from asyncstop.testing import Faults, LongTailLatency

    faults = Faults(latency=LongTailLatency(median=0.005, p99=0.08, max=0.3), error_before=0.05)
    async with FakeExchange(tokens={TOKEN}, seed=7, faults=faults) as exchange:
        ids = exchange.add_stop_orders(300, account_id=ACCOUNT)
        items = [*ids, ids[0]]
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=1.0
        ) as client:
            report = await client.cancel_stop_orders(
                items,
                concurrency=16,
                hedge=hedge,
                deadline=8.0,  # type: ignore[arg-type]
            )
        assert [r.order_id for r in report.results] == items
        seen = requests_per_order(exchange)
        for result in report.results:
            assert result.attempts == seen[result.order_id]
        live = exchange.open_stop_orders()
        assert all((r.order_id in live) != r.ok for r in report.results)
        assert exchange.max_in_flight <= 16
        assert report.hedges_sent <= 0.1 * (sum(seen.values()) - report.hedges_sent)
