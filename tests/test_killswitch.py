"""The kill switch: idempotent runs, a registry that keeps only what may be live, signals."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

import asyncstop
from asyncstop import CancelOutcome, KillSwitch, StopOrderRegistry
from asyncstop.testing import FakeExchange, Fault, Faults, wait_until

from .helpers import ACCOUNT, TOKEN, WAIT_LIMIT, ClientFactory, client_tasks, order_ids


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
    assert sorted(order_ids(exchange.journal)) == sorted([ids[2], ids[5]])
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
    await wait_until(lambda: exchange.in_flight > 0, timeout=WAIT_LIMIT)
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

    sources: dict[str, asyncstop.OrderSource] = {
        "list": ids,
        "async_iterable": stream(),
        "async_callable": fetch,
        "async_gen_function": stream,
    }
    source = sources[kind]
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
        await wait_until(lambda: switch.running, timeout=WAIT_LIMIT)
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
    outcome: str = CancelOutcome.NOT_SENT  # a CancelOutcome is a str: compare it as one
    assert outcome == "not_sent"


# -- issue 10: never raises for an item, tripped, last_report, arm ---------------------------


async def test_an_invalid_item_is_reported_failed_and_the_rest_is_cancelled(
    exchange: FakeExchange,
) -> None:
    """A bare id with a client that has no account: that one fails, trigger() cancels the rest."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    registry = StopOrderRegistry([(ACCOUNT, i) for i in ids])
    registry.add("BARE-1")
    async with asyncstop.AsyncStopClient(base_url=exchange.base_url, token=TOKEN) as client:
        report = await KillSwitch(client, registry).trigger()
    assert len(report) == 6
    assert report.counts[CancelOutcome.FAILED] == 1
    bad = report.pending[0]
    assert bad.order_id == "BARE-1"
    assert isinstance(bad.error, asyncstop.InvalidInputError)
    assert bad.attempts == 0
    assert not exchange.open_stop_orders()
    assert registry.snapshot() == ["BARE-1"]  # may still be live: kept


async def test_a_list_source_with_an_invalid_item_does_not_raise(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A plain list source gets the same treatment: one failed result, the others cancelled."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    report = await KillSwitch(client, [*ids, ("acc-1", "a/b")]).trigger()
    assert [r.outcome for r in report.results] == [CancelOutcome.CANCELLED] * 3 + [
        CancelOutcome.FAILED
    ]
    assert not exchange.open_stop_orders()


async def test_a_tripped_switch_cancels_orders_added_afterwards_until_reset(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """After it fired, a newly added stop is cancelled as it comes; after reset() it stays."""
    first, late, after_reset = (exchange.add_stop_orders(2, account_id=ACCOUNT) for _ in range(3))
    registry = StopOrderRegistry(first)
    switch = KillSwitch(client, registry)
    assert not switch.tripped
    await switch.trigger()
    assert switch.tripped
    for order_id in late:
        registry.add(order_id)
    await wait_until(
        lambda: not exchange.open_stop_orders() & set(late) and not len(registry),
        timeout=WAIT_LIMIT,
    )
    switch.reset()
    assert not switch.tripped
    for order_id in after_reset:
        registry.add(order_id)
    # A switch that still cancelled would have sent the DELETEs by the time a
    # request of our own has made the round trip.
    with pytest.raises(asyncstop.OrderNotFoundError):
        await client.cancel_stop_order(first[0])  # already gone
    await asyncio.sleep(0.05)
    assert set(after_reset) <= exchange.open_stop_orders()
    assert sorted(registry.snapshot()) == sorted(after_reset)
    assert not [e for e in exchange.journal if e.order_id in after_reset]


async def test_wait_tripped_returns_when_the_switch_fires(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A task waiting on wait_tripped() wakes up when another task triggers the switch."""
    switch = KillSwitch(client, StopOrderRegistry(exchange.add_stop_orders(3, account_id=ACCOUNT)))
    waiter = asyncio.create_task(switch.wait_tripped())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    report = await switch.trigger()
    async with asyncio.timeout(5):
        await waiter
    assert report.ok
    await switch.wait_tripped()  # tripped already: returns at once


async def test_last_report_is_never_replaced_by_an_empty_run(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A second trigger with nothing left returns an empty report; last_report keeps the first."""
    switch = KillSwitch(client, StopOrderRegistry(exchange.add_stop_orders(4, account_id=ACCOUNT)))
    first = await switch.trigger()
    second = await switch.trigger()
    assert len(first) == 4
    assert len(second) == 0
    assert switch.last_report is first


async def test_arm_warms_the_connections_ahead_of_the_emergency(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """arm() opens the client's connections (HEAD warm-ups) and cancels nothing."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    switch = KillSwitch(client, StopOrderRegistry(ids))
    assert await switch.arm(4) == 4
    warm = [e for e in exchange.journal if e.outcome == "warm_up"]
    assert len(warm) == 4
    assert not exchange.requests("DELETE")
    assert exchange.open_stop_orders() == set(ids)


async def test_a_durable_registry_keeps_only_what_may_be_live(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, tmp_path: Path
) -> None:
    """With an SQLite registry, trigger() leaves exactly the failed orders in the file."""
    ids = exchange.add_stop_orders(300, account_id=ACCOUNT)
    exchange.inject_for(ids[7], Fault.error(403))
    with StopOrderRegistry.open(tmp_path / "stops.db") as registry:
        for order_id in ids:
            registry.add(order_id)
        report = await KillSwitch(client, registry).trigger()
        assert registry.snapshot() == [ids[7]]
    assert [r.order_id for r in report.pending] == [ids[7]]
    with StopOrderRegistry.open(tmp_path / "stops.db") as reopened:
        assert reopened.snapshot() == [ids[7]]


async def test_orders_not_found_under_a_wrong_account_stay_registered(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A switch aimed at the wrong account keeps every order registered: they may be live."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    registry = StopOrderRegistry(ids)
    client = await make_client(account_id="acc-wrong")
    report = await KillSwitch(client, registry).trigger()
    assert report.counts[CancelOutcome.NOT_FOUND] == 5
    assert report.warning is not None
    assert len(registry) == 5
    assert exchange.open_stop_orders() == set(ids)


async def test_a_few_orders_not_found_among_cancelled_ones_leave_the_registry(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """Orders filled meanwhile (404) leave the registry when the rest were cancelled."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    registry = StopOrderRegistry([*ids, "FILLED-1"])
    client = await make_client()
    report = await KillSwitch(client, registry).trigger()
    assert report.counts[CancelOutcome.NOT_FOUND] == 1
    assert report.warning is None
    assert len(registry) == 0


def test_a_switch_firing_prints_nothing_when_the_application_has_no_logging() -> None:
    """Without logging configured, firing the switch writes nothing to stderr."""
    script = (
        "import asyncio, asyncstop\n"
        "from asyncstop.testing import FakeExchange\n"
        "async def main():\n"
        "    async with FakeExchange(tokens={'T'}) as ex:\n"
        "        ids = ex.add_stop_orders(3, account_id='a')\n"
        "        async with asyncstop.AsyncStopClient(\n"
        "            base_url=ex.base_url, token='T', account_id='a'\n"
        "        ) as client:\n"
        "            registry = asyncstop.StopOrderRegistry(ids)\n"
        "            report = await asyncstop.KillSwitch(client, registry).trigger()\n"
        "            assert report.ok\n"
        "asyncio.run(main())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "ASYNCSTOP_LOG"}
    done = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


# -- the tasks the switch owns ------------------------------------------------------------------


async def test_aclose_waits_for_the_late_cancels_the_switch_started(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """An order added after the switch fired is cancelled by the time aclose() returns."""
    first, late = (
        exchange.add_stop_orders(3, account_id=ACCOUNT),
        exchange.add_stop_orders(3, account_id=ACCOUNT),
    )
    registry = StopOrderRegistry(first)
    async with KillSwitch(client, registry) as switch:
        await switch.trigger()
        exchange.faults = Faults(latency=0.2)
        for order_id in late:
            registry.add(order_id)
        assert client_tasks() != []  # the late cancels are going, owned by the switch
    assert client_tasks() == []
    assert not exchange.open_stop_orders()
    assert len(registry) == 0


async def test_a_run_a_signal_started_is_awaited_by_aclose(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A run nobody joined (started by a signal) has ended with its orders cancelled at aclose()."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    exchange.faults = Faults(latency=0.5)
    switch = KillSwitch(client, StopOrderRegistry(ids))
    switch.install_signal_handlers()
    # The program watches the switch: it exits by itself, not when the run ends.
    watching = asyncio.create_task(switch.wait_tripped())
    os.kill(os.getpid(), signal.SIGTERM)
    await watching
    assert switch.running
    await switch.aclose()
    assert not switch.running
    assert client_tasks() == []
    assert not exchange.open_stop_orders()


async def test_cancelling_aclose_cancels_the_switchs_tasks_and_leaves_none(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """aclose() cancelled while its late cancels hang: they are cancelled and awaited, none left."""
    registry = StopOrderRegistry(exchange.add_stop_orders(2, account_id=ACCOUNT))
    switch = KillSwitch(client, registry, deadline=None)
    await switch.trigger()
    exchange.faults = Faults(hang=1.0)
    registry.add(exchange.add_stop_orders(1, account_id=ACCOUNT)[0])
    await wait_until(lambda: exchange.in_flight > 0, timeout=WAIT_LIMIT)
    closing = asyncio.create_task(switch.aclose())
    await asyncio.sleep(0.05)
    assert not closing.done()
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    assert client_tasks() == []


async def test_a_closed_switch_refuses_to_fire_and_leaves_new_orders_alone(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """After aclose(), trigger() raises RuntimeError and an added order is not cancelled."""
    registry = StopOrderRegistry(exchange.add_stop_orders(2, account_id=ACCOUNT))
    switch = KillSwitch(client, registry)
    await switch.trigger()
    await switch.aclose()
    await switch.aclose()  # idempotent
    with pytest.raises(RuntimeError, match="closed"):
        await switch.trigger()
    added = exchange.add_stop_orders(1, account_id=ACCOUNT)[0]
    registry.add(added)
    assert client_tasks() == []
    assert added in exchange.open_stop_orders()


async def test_under_the_warning_the_switch_reports_not_found_orders_pending(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """Aimed at the wrong account: report.ok is False and every order is pending and registered."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    registry = StopOrderRegistry(ids)
    client = await make_client(account_id="acc-wrong")
    report = await KillSwitch(client, registry).trigger()
    assert not report.ok
    assert sorted(r.order_id for r in report.pending) == sorted(ids)
    assert sorted(registry.snapshot()) == sorted(ids)
