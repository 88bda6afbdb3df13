"""The kill switch: idempotent runs, a registry that keeps only what may be live, signals."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator

import pytest

import asyncstop
from asyncstop import CancelOutcome, KillSwitch, StopOrderRegistry
from asyncstop.testing import FakeExchange, Fault, Faults

from .conftest import ACCOUNT, TOKEN, client_tasks


async def test_trigger_cancels_every_registered_order_and_empties_the_registry(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """trigger() cancels all registered orders of two accounts; successes leave the registry."""
    registry = StopOrderRegistry()
    for order_id in exchange.add_stop_orders(30, account_id=ACCOUNT):
        registry.add(order_id)
    for order_id in exchange.add_stop_orders(30, account_id="acc-2"):
        registry.add(order_id, account_id="acc-2")
    report = await KillSwitch(client, registry, deadline=5.0).trigger()
    assert report.ok
    assert len(report) == 60
    assert len(registry) == 0
    assert not exchange.open_stop_orders()


async def test_a_second_trigger_retries_only_what_may_be_live(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Failed orders stay registered; the next trigger sends requests for exactly those."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    registry = StopOrderRegistry(ids)
    exchange.inject_for(ids[2], Fault.error(403))
    exchange.inject_for(ids[5], Fault.error(400))
    switch = KillSwitch(client, registry)
    first = await switch.trigger()
    assert {r.order_id for r in first.pending} == {ids[2], ids[5]}
    assert set(registry.snapshot()) == {ids[2], ids[5]}
    exchange.reset_journal()
    second = await switch.trigger()
    assert second.ok
    assert sorted(e.order_id for e in exchange.journal) == sorted([ids[2], ids[5]])
    assert len(registry) == 0
    assert switch.last_report is second


async def test_concurrent_triggers_join_one_run(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Three triggers while a run is going get the same report; each order is sent once."""
    ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
    exchange.faults = Faults(latency=0.01)
    switch = KillSwitch(client, StopOrderRegistry(ids))
    reports = await asyncio.gather(switch.trigger(), switch.trigger(), switch.trigger())
    assert reports[0] is reports[1] is reports[2]
    assert Counter(e.order_id for e in exchange.journal) == Counter(ids)


async def test_cancelling_the_only_trigger_cancels_the_run(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """When its last caller is cancelled, the run stops too, and no task is left running."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    exchange.faults = Faults(hang=1.0)
    switch = KillSwitch(client, StopOrderRegistry(ids))
    task = asyncio.create_task(switch.trigger())
    async with asyncio.timeout(5):
        while exchange.in_flight == 0:
            await asyncio.sleep(0.005)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not switch.running
    assert client_tasks() == []


@pytest.mark.parametrize("kind", ["list", "async_iterable", "async_callable", "async_gen_function"])
async def test_any_order_source_works(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, kind: str
) -> None:
    """A plain iterable, an async iterable or an async callable can feed the kill switch."""
    ids = exchange.add_stop_orders(12, account_id=ACCOUNT)

    async def stream() -> AsyncIterator[asyncstop.OrderItem]:
        for order_id in ids:
            yield (ACCOUNT, order_id)

    async def fetch() -> list[str]:
        return ids

    source: asyncstop.OrderSource = {
        "list": ids,
        "async_iterable": stream(),
        "async_callable": fetch,
        "async_gen_function": stream,
    }[kind]
    report = await KillSwitch(client, source).trigger()
    assert report.ok
    assert len(report) == 12
    assert not exchange.open_stop_orders()


async def test_a_signal_fires_the_switch(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """SIGTERM with handlers installed starts a run, which trigger() then joins."""
    ids = exchange.add_stop_orders(15, account_id=ACCOUNT)
    exchange.faults = Faults(latency=0.02)
    switch = KillSwitch(client, StopOrderRegistry(ids))
    switch.install_signal_handlers()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        async with asyncio.timeout(5):
            while not switch.running:
                await asyncio.sleep(0.001)
        report = await switch.trigger()
    finally:
        switch.remove_signal_handlers()
    assert report.ok
    assert Counter(e.order_id for e in exchange.journal) == Counter(ids)


async def test_accounts_share_the_concurrency_fairly(exchange: FakeExchange) -> None:
    """With two busy accounts, each gets about half the requests from the start."""
    a = exchange.add_stop_orders(200, account_id="acc-a")
    b = exchange.add_stop_orders(200, account_id="acc-b")
    exchange.faults = Faults(latency=0.002)
    registry = StopOrderRegistry([*(("acc-a", i) for i in a), *(("acc-b", i) for i in b)])
    async with asyncstop.AsyncStopClient(base_url=exchange.base_url, token=TOKEN) as client:
        report = await KillSwitch(client, registry, concurrency=8).trigger()
    assert report.ok
    first_half = Counter(e.account_id for e in exchange.journal[:200])
    assert 80 <= first_half["acc-b"] <= 120


async def test_a_paused_account_does_not_hold_back_another(exchange: FakeExchange) -> None:
    """While acc-a waits out a 429 pause, acc-b's orders keep going."""
    a = exchange.add_stop_orders(50, account_id="acc-a")
    b = exchange.add_stop_orders(50, account_id="acc-b")
    exchange.inject_for(a[0], Fault.rate_limited(retry_after="0.5"))
    registry = StopOrderRegistry([*(("acc-a", i) for i in a), *(("acc-b", i) for i in b)])
    async with asyncstop.AsyncStopClient(base_url=exchange.base_url, token=TOKEN) as client:
        report = await KillSwitch(client, registry, concurrency=4).trigger()
    assert report.ok
    limited = next(e for e in exchange.journal if e.status == 429)
    b_done = max(e.done_time for e in exchange.journal if e.account_id == "acc-b")
    assert b_done < limited.done_time + 0.5
    assert exchange.pause_violations == []


def test_registry_validates_and_forgets() -> None:
    """The registry refuses unsafe ids, and discard forgets an order (per account if given)."""
    registry = StopOrderRegistry()
    registry.add("A1")
    registry.add("B1", account_id="acc-2")
    with pytest.raises(ValueError, match="order id"):
        registry.add("a/b")
    with pytest.raises(ValueError, match="account id"):
        registry.add("C1", account_id="x\r\ny")
    registry.discard("B1", account_id="other")
    assert "B1" in registry
    registry.discard("B1")
    registry.discard("never-added")
    assert registry.snapshot() == ["A1"]
    assert repr(registry) == "<StopOrderRegistry 1 orders>"


@pytest.mark.parametrize(
    ("setting", "value"), [("concurrency", 0), ("deadline", -1.0), ("rate_limit", 0.0)]
)
def test_bad_settings_are_refused_when_the_switch_is_built(setting: str, value: float) -> None:
    """A kill switch with an impossible setting fails at construction, not when it fires."""
    client = asyncstop.AsyncStopClient(base_url="https://broker.example", token=TOKEN)
    with pytest.raises(ValueError, match=setting):
        KillSwitch(client, StopOrderRegistry(), **{setting: value})  # type: ignore[arg-type]


def test_kill_switch_needs_no_loop_to_build() -> None:
    """A KillSwitch and registry can be built before any loop runs."""
    client = asyncstop.AsyncStopClient(base_url="https://broker.example", token=TOKEN)
    switch = KillSwitch(client, StopOrderRegistry(), deadline=3)
    assert not switch.running
    assert switch.last_report is None
    assert CancelOutcome.NOT_SENT == "not_sent"
