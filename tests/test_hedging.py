"""Hedged cancels: a backup request for a slow order, within every bound the call promises."""

from __future__ import annotations

import logging
import re
from typing import Literal

import pytest

import asyncstop
from asyncstop import CancelOutcome
from asyncstop.testing import FakeExchange, Fault, Faults, LongTailLatency

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
async def test_every_invariant_holds_with_hedging_under_latency(
    hedge: float | Literal["auto"],
) -> None:
    """Under a long tail, hedging keeps one result per item, exact attempts and the bounds."""
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
                deadline=8.0,
            )
        assert [r.order_id for r in report.results] == items
        seen = requests_per_order(exchange)
        for result in report.results:
            assert result.attempts == seen[result.order_id]
        live = exchange.open_stop_orders()
        assert all((r.order_id in live) != r.ok for r in report.results)
        assert exchange.max_in_flight <= 16
        assert 0 < report.hedges_sent <= 0.1 * (sum(seen.values()) - report.hedges_sent)


# -- hedge="auto" --------------------------------------------------------------------------------


async def _warm(client: asyncstop.AsyncStopClient, exchange: FakeExchange, count: int) -> None:
    """Earlier calls, as a bot's routine cancels: the client learns the exchange's reply times."""
    report = await client.cancel_stop_orders(exchange.add_stop_orders(count, account_id=ACCOUNT))
    assert report.ok


async def test_auto_hedges_the_stragglers_of_one_round_and_wins() -> None:
    """One round with two orders whose first request hangs: "auto" hedges those two, and wins."""
    async with FakeExchange(tokens={TOKEN}, seed=3, faults=Faults(latency=0.01)) as exchange:
        ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
        hung = ids[5], ids[30]
        for order_id in hung:
            exchange.inject_for(order_id, Fault.hang())  # the first request only
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=20.0
        ) as client:
            report = await client.cancel_stop_orders(
                ids, concurrency=64, hedge="auto", deadline=30.0
            )
        assert report.counts[CancelOutcome.CANCELLED] == 40
        assert report.hedges_sent >= 2
        assert report.hedges_won >= 2
        seen = requests_per_order(exchange)
        assert [seen[order_id] for order_id in hung] == [2, 2]
        assert all(r.attempts == seen[r.order_id] for r in report.results)
        assert report.hedges_sent <= 0.1 * 40
        assert exchange.open_stop_orders() == set()


async def test_auto_hedges_a_round_where_too_many_hang_to_know_the_p95() -> None:
    """A quarter of a round hangs: the p95 is unknowable, yet the budget goes to the hung orders."""
    async with FakeExchange(tokens={TOKEN}, seed=5, faults=Faults(latency=0.005)) as exchange:
        ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
        hung = ids[:10]
        for order_id in hung:
            exchange.inject_for(order_id, Fault.hang())
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=5.0
        ) as client:
            report = await client.cancel_stop_orders(
                ids, concurrency=64, hedge="auto", deadline=20.0
            )
        assert report.ok
        seen = requests_per_order(exchange)
        assert report.hedges_sent == 4  # the budget: 10 % of 40
        assert sum(1 for order_id in hung if seen[order_id] >= 2) >= 3
        assert all(r.attempts == seen[r.order_id] for r in report.results)


async def test_auto_sends_no_hedge_to_a_server_without_a_tail() -> None:
    """Against a fixed 100 ms server, "auto" sends no hedge, warm or cold."""
    async with FakeExchange(tokens={TOKEN}, seed=6, faults=Faults(latency=0.1)) as exchange:
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=10.0
        ) as client:
            for _ in range(3):
                ids = exchange.add_stop_orders(50, account_id=ACCOUNT)
                report = await client.cancel_stop_orders(ids, concurrency=64, hedge="auto")
                assert report.ok
                assert report.hedges_sent == 0
        assert len(exchange.requests(method="DELETE")) == 150


async def test_auto_hedges_stay_within_their_budget() -> None:
    """With every first request hung, a warm "auto" hedges at most 10 % of first requests."""
    # No retries: every first request is a hung one, so each hedge's answer is its
    # order's only answer. (With retries, a retry slower than the delay on a loaded
    # machine is hedged too, and either of the two may rightly win.)
    async with FakeExchange(tokens={TOKEN}, seed=8, faults=Faults(latency=0.005)) as exchange:
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=2.0, max_retries=0
        ) as client:
            await _warm(client, exchange, 60)
            ids = exchange.add_stop_orders(100, account_id=ACCOUNT)
            for order_id in ids:
                exchange.inject_for(order_id, Fault.hang())
            before = len(exchange.requests(method="DELETE"))
            report = await client.cancel_stop_orders(
                ids, concurrency=100, hedge="auto", deadline=10.0
            )
        sent = len(exchange.requests(method="DELETE")) - before
        assert sent - report.hedges_sent == 100  # the first requests, all hung
        assert 0 < report.hedges_sent <= 0.1 * 100
        assert report.hedges_won == report.hedges_sent  # the hang took only first requests
        assert report.counts[CancelOutcome.CANCELLED] == report.hedges_won


async def test_each_hedge_is_logged_with_its_delay_and_estimate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A DEBUG line per hedge names the order, the delay and what the estimate was made from."""
    async with (
        FakeExchange(tokens={TOKEN}, seed=9, faults=Faults(latency=0.005)) as exchange,
        asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=5.0
        ) as client,
    ):
        await _warm(client, exchange, 60)
        ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
        exchange.inject_for(ids[0], Fault.hang())  # sent first: hedged before any slow reply
        with caplog.at_level(logging.DEBUG, logger="asyncstop"):
            report = await client.cancel_stop_orders(ids, hedge="auto", deadline=10.0)
    assert report.hedges_sent >= 1
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hedging")]
    assert len(lines) == report.hedges_sent
    line = next(text for text in lines if ids[0] in text)
    assert "delay" in line
    # A warm client goes by its earlier call too (60 replies): this call alone
    # could give at most 40, even when the estimate behind the hedge is its first.
    found = re.search(r"estimated from (\d+) replies", line)
    assert found is not None, line
    assert int(found.group(1)) > 40


async def test_single_cancels_teach_auto_the_exchange(caplog: pytest.LogCaptureFixture) -> None:
    """A bot's routine single cancels count: the first hedge goes by their reply times too."""
    async with (
        FakeExchange(tokens={TOKEN}, seed=10, faults=Faults(latency=0.005)) as exchange,
        asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, timeout=5.0
        ) as client,
    ):
        for order_id in exchange.add_stop_orders(30, account_id=ACCOUNT):
            await client.cancel_stop_order(order_id)
        ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
        # The first order sent: its delay ends first, before slow replies on a
        # loaded machine can take the call's budget of 2 hedges.
        exchange.inject_for(ids[0], Fault.hang())
        with caplog.at_level(logging.DEBUG, logger="asyncstop"):
            report = await client.cancel_stop_orders(ids, hedge="auto", deadline=10.0)
    assert report.ok
    assert report.hedges_won >= 1
    hedges = [r.getMessage() for r in caplog.records if r.getMessage().startswith("hedging")]
    line = next(text for text in hedges if ids[0] in text)
    found = re.search(r"estimated from (\d+) replies", line)
    assert found is not None, line
    assert int(found.group(1)) > 20  # more than this call's 20 orders could give
