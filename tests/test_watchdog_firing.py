"""Persistent firing (``asyncstop._watchdog._firing``): rounds until every stop is settled.

A real client against the FakeExchange, with the store in memory (the
registry's adapter, and a store of the test's own that only follows the
protocol, as a database store would). Judged by the exchange's state.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence

import pytest

from asyncstop import AsyncStopClient, CancelOutcome, CancelResult, StopOrderRegistry
from asyncstop._watchdog._firing import (
    MAX_BACKOFF,
    FiringRound,
    RegisteredStop,
    RegistryStore,
    fire_until_settled,
    round_delay,
)
from asyncstop.testing import FakeExchange, Fault, Faults

from .helpers import ACCOUNT, ClientFactory, requests_per_order

#: Short pauses between rounds, so that the tests are quick.
BASE = 0.05


class ListStore:
    """A store that follows the FiringStore protocol and nothing else (like a database store)."""

    def __init__(self, stops: Sequence[RegisteredStop]) -> None:
        self.stops = list(stops)
        self.settle_calls = 0

    async def pending(self) -> Sequence[RegisteredStop]:
        return list(self.stops)

    async def settle(self, results: Sequence[CancelResult]) -> None:
        self.settle_calls += 1
        gone = {(r.account_id, r.order_id) for r in results}
        self.stops = [s for s in self.stops if (s.account_id or ACCOUNT, s.order_id) not in gone]


async def _client(make_client: ClientFactory) -> AsyncStopClient:
    # One retry: a round ends fast in an outage, so the rounds are what is tested.
    return await make_client(max_retries=1, timeout=2.0)


async def test_an_outage_is_waited_out_and_every_stop_cancelled_after_recovery(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """Every request 503 for three rounds, then recovery: the next round cancels all 50."""
    ids = exchange.add_stop_orders(50, account_id=ACCOUNT)
    store = ListStore([RegisteredStop(None, order_id) for order_id in ids])
    exchange.faults = Faults(error_before=1.0)
    rounds: list[FiringRound] = []

    def on_round(record: FiringRound) -> None:
        rounds.append(record)
        if len(rounds) == 3:
            exchange.faults = Faults()  # the exchange recovers

    outcome = await fire_until_settled(
        await _client(make_client),
        store,
        give_up_after=60.0,
        round_deadline=5.0,
        cancel_protective=False,
        on_round=on_round,
        backoff_base=BASE,
        rng=random.Random(1),
    )
    assert outcome.ok
    assert not outcome.gave_up
    assert outcome.rounds == 4
    assert [len(r.retrying) for r in rounds] == [50, 50, 50, 0]
    assert rounds[-1].next_delay is None
    assert outcome.counts[CancelOutcome.CANCELLED] == 50
    assert not exchange.open_stop_orders()
    assert store.stops == []


async def test_give_up_after_keeps_the_orders_in_the_store(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A permanent outage: it gives up once give_up_after passed, every order still stored."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    registry = StopOrderRegistry(ids)
    exchange.faults = Faults(error_before=1.0)
    outcome = await fire_until_settled(
        await _client(make_client),
        RegistryStore(registry, default_account_id=ACCOUNT),
        give_up_after=1.0,
        round_deadline=5.0,
        cancel_protective=False,
        backoff_base=BASE,
    )
    assert outcome.gave_up
    assert outcome.rounds >= 2
    assert {r.order_id for r in outcome.pending} == set(ids)
    assert not outcome.ok
    assert registry.snapshot() == ids
    assert exchange.open_stop_orders() == set(ids)


async def test_a_refused_order_is_logged_once_and_not_sent_again(
    exchange: FakeExchange, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A 403 for one order: one ERROR, one request, kept; an outage for the others is retried."""
    ids = exchange.add_stop_orders(4, account_id=ACCOUNT)
    refused_id = ids[0]
    exchange.inject_for(refused_id, Fault.error(403))
    exchange.inject_for(ids[1], Fault.error(503), Fault.error(503), Fault.error(503))
    registry = StopOrderRegistry(ids)
    caplog.set_level(logging.WARNING, logger="asyncstop")
    outcome = await fire_until_settled(
        await _client(make_client),
        RegistryStore(registry, default_account_id=ACCOUNT),
        give_up_after=60.0,
        round_deadline=5.0,
        cancel_protective=False,
        backoff_base=BASE,
    )
    assert outcome.rounds == 2  # the 503s needed a second round
    assert requests_per_order(exchange)[refused_id] == 1
    assert [r.order_id for r in outcome.refused] == [refused_id]
    assert [r.order_id for r in outcome.pending] == [refused_id]
    assert outcome.pending[0].outcome is CancelOutcome.FAILED
    assert registry.snapshot() == [refused_id]
    assert exchange.open_stop_orders() == {refused_id}
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and "refused" in r.message]
    assert len(errors) == 1
    assert refused_id in errors[0].message
    rounds = [r for r in caplog.records if r.message.startswith("firing round")]
    assert [r.levelno for r in rounds] == [logging.WARNING, logging.WARNING]


async def test_protective_stops_are_left_live_unless_asked(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """cancel_protective=False leaves stop-losses live and stored; True cancels them too."""
    ids = exchange.add_stop_orders(6, account_id=ACCOUNT)
    registry = StopOrderRegistry()
    for index, order_id in enumerate(ids):
        registry.add(order_id, protective=index < 2)
    store = RegistryStore(registry, default_account_id=ACCOUNT)
    client = await _client(make_client)
    kept = await fire_until_settled(
        client, store, give_up_after=60.0, round_deadline=5.0, cancel_protective=False
    )
    assert kept.ok
    assert [s.order_id for s in kept.protective_left] == ids[:2]
    assert exchange.open_stop_orders() == set(ids[:2])
    assert registry.snapshot() == ids[:2]
    assert registry.snapshot(protective=True) == ids[:2]
    everything = await fire_until_settled(
        client, store, give_up_after=60.0, round_deadline=5.0, cancel_protective=True
    )
    assert everything.ok
    assert everything.protective_left == ()
    assert not exchange.open_stop_orders()
    assert len(registry) == 0


async def test_not_found_under_the_warning_stays_and_is_not_sent_again(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """Most orders not found, none cancelled (a wrong account): kept, sent once, not ok."""
    ids = [f"01UNKNOWN{n}" for n in range(4)]
    store = ListStore([RegisteredStop(None, order_id) for order_id in ids])
    outcome = await fire_until_settled(
        await _client(make_client),
        store,
        give_up_after=60.0,
        round_deadline=5.0,
        cancel_protective=False,
        backoff_base=BASE,
    )
    assert outcome.rounds == 1
    assert not outcome.ok
    assert {r.order_id for r in outcome.refused} == set(ids)
    assert [s.order_id for s in store.stops] == ids
    assert store.settle_calls == 0


async def test_a_retry_after_longer_than_the_backoff_is_obeyed_between_rounds(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A 429 with Retry-After 0.5 s ends a round: the next round waits at least that long."""
    ids = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(ids[0], *[Fault.rate_limited("0.5")] * 2)
    rounds: list[FiringRound] = []
    outcome = await fire_until_settled(
        await make_client(max_retries=0),
        ListStore([RegisteredStop(None, ids[0])]),
        give_up_after=60.0,
        round_deadline=5.0,
        cancel_protective=False,
        on_round=rounds.append,
        backoff_base=0.01,
    )
    assert outcome.ok
    assert len(rounds) == 3
    assert all(r.next_delay is not None and r.next_delay >= 0.5 for r in rounds[:2])


@pytest.mark.parametrize(
    ("number", "low", "high"),
    [(1, 0.5, 1.0), (2, 1.0, 2.0), (5, 8.0, 16.0), (6, 15.0, 30.0), (40, 15.0, MAX_BACKOFF)],
)
def test_round_delay_doubles_with_jitter_and_is_capped(
    number: int, low: float, high: float
) -> None:
    """The pause after round n is half to all of 2**(n-1) s, never over 30 s."""
    rng = random.Random(7)
    draws = [round_delay(number, rng, base=1.0) for _ in range(200)]
    assert low <= min(draws)
    assert max(draws) <= high
    assert max(draws) - min(draws) > (high - low) / 4  # jittered, not fixed
