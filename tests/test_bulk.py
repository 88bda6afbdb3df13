"""The bulk cancel: one true result per item, bounded, deadline-true, polite to the exchange."""

from __future__ import annotations

import asyncio
import gc
import json
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest

import asyncstop
from asyncstop import CancelOutcome
from asyncstop._report import report_record, result_from_record, result_record
from asyncstop.testing import FakeExchange, Fault, Faults, wait_until

from .helpers import (
    ACCOUNT,
    TOKEN,
    WAIT_LIMIT,
    ClientFactory,
    ClientTimeline,
    client_tasks,
    requests_per_order,
)


async def test_every_item_gets_one_result_in_input_order_and_duplicates_are_sent_once(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Duplicates are cancelled once, each occurrence is reported, results keep input order."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    items = [*ids, ids[3], ids[3], ids[7]]
    seen: list[str] = []
    report = await client.cancel_stop_orders(items, on_result=lambda r: seen.append(r.order_id))
    assert [r.order_id for r in report.results] == items
    assert report.ok
    assert report.counts[CancelOutcome.CANCELLED] == len(items)
    assert Counter(seen) == Counter(items)
    assert requests_per_order(exchange) == Counter(ids)
    assert not exchange.open_stop_orders(ACCOUNT)


async def test_outcomes_for_each_kind_of_answer(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """200, 404, 400, 403, cured and uncured 5xx, and a drop then 404 each get the right outcome."""
    ids = exchange.add_stop_orders(7, account_id=ACCOUNT)
    ok, gone, bad, forbidden, flaky, broken, dropped = ids
    exchange.inject_for(gone, Fault.error(404))
    exchange.inject_for(bad, Fault.error(400))
    exchange.inject_for(forbidden, Fault.error(403))
    exchange.inject_for(flaky, Fault.error(503), Fault.error(500, after=True))
    exchange.inject_for(broken, *[Fault.error(503)] * 3)
    exchange.inject_for(dropped, Fault.drop(after=True))
    client = await make_client(max_retries=2)
    report = await client.cancel_stop_orders(ids)
    outcome = {r.order_id: r for r in report.results}
    assert outcome[ok].outcome is CancelOutcome.CANCELLED
    assert outcome[ok].order is not None
    assert outcome[gone].outcome is CancelOutcome.NOT_FOUND
    assert outcome[bad].outcome is CancelOutcome.FAILED
    assert isinstance(outcome[bad].error, asyncstop.BadRequestError)
    assert outcome[forbidden].outcome is CancelOutcome.FAILED
    # 503 before, then 500 after applying: the retry meets 404 -> already gone (a 404 on
    # a reused connection is asked twice: tests/test_evidence.py pins that down).
    assert outcome[flaky].outcome is CancelOutcome.ALREADY_GONE
    assert outcome[flaky].attempts == requests_per_order(exchange)[flaky] >= 3
    assert outcome[broken].outcome is CancelOutcome.UNKNOWN
    assert outcome[broken].attempts == 3
    assert isinstance(outcome[broken].error, asyncstop.ServerError)
    assert outcome[dropped].outcome is CancelOutcome.ALREADY_GONE
    err = outcome[dropped].error
    assert isinstance(err, asyncstop.OrderNotFoundError)
    assert err.after_unknown_attempt
    assert not report.ok
    assert {r.order_id for r in report.pending} == {bad, forbidden, broken}
    for kind, count in Counter(r.outcome for r in report.results).items():
        assert report.counts[kind] == count
    for order_id, count in requests_per_order(exchange).items():
        assert outcome[str(order_id)].attempts == count


async def test_attempts_equal_the_requests_the_exchange_saw(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """Under 5xx and drops before and after cancelling, attempts equal the requests journaled."""
    ids = exchange.add_stop_orders(300, account_id=ACCOUNT)
    # Scripted, so that each kind of fault certainly fires; the random mix adds interleavings.
    exchange.inject_for(ids[0], Fault.error(503), Fault.error(500, after=True))
    exchange.inject_for(ids[1], Fault.drop(), Fault.drop(after=True))
    exchange.inject_for(ids[2], Fault.error(502), Fault.drop(), Fault.error(504))
    exchange.faults = Faults(error_before=0.1, error_after=0.1, drop_before=0.05, drop_after=0.05)
    client = await make_client(max_retries=5)
    report = await client.cancel_stop_orders(ids, concurrency=16)
    assert exchange.pending_faults == 0
    seen = requests_per_order(exchange)
    for result in report.results:
        assert result.attempts == seen[result.order_id]


async def test_one_failure_neither_cancels_nor_delays_the_others(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """While one order's request hangs, every other order is settled; an error stops none."""
    ids = exchange.add_stop_orders(30, account_id=ACCOUNT)
    exchange.inject_for(ids[0], Fault.hang())
    exchange.inject_for(ids[1], Fault.error(400))
    client = await make_client(max_retries=0)
    settled: list[str] = []
    task = asyncio.create_task(
        client.cancel_stop_orders(
            ids, concurrency=2, on_result=lambda r: settled.append(r.order_id)
        )
    )
    await wait_until(lambda: len(settled) == 29, timeout=WAIT_LIMIT)
    assert settled == ids[1:]
    assert exchange.in_flight == 1  # the hung request, still waiting for its answer
    await exchange.close()  # the only end of a hang: its connection is dropped
    report = await task
    assert report.results[0].outcome is CancelOutcome.UNKNOWN
    assert report.results[1].outcome is CancelOutcome.FAILED
    assert all(r.outcome is CancelOutcome.CANCELLED for r in report.results[2:])


@pytest.mark.parametrize(
    ("max_concurrency", "concurrency", "bound"),
    [(32, 7, 7), (4, 50, 4)],
    ids=["the call's concurrency", "the pool asyncstop owns"],
)
async def test_requests_in_flight_reach_but_never_exceed_the_bound(
    exchange: FakeExchange,
    make_client: ClientFactory,
    max_concurrency: int,
    concurrency: int,
    bound: int,
) -> None:
    """Across two accounts the exchange sees at most min(concurrency, pool) requests at once."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    ids += exchange.add_stop_orders(20, account_id="acc-2")
    # Long enough that every round of requests overlaps even if the machine stalls between sends.
    exchange.faults = Faults(latency=0.05)
    items: list[asyncstop.OrderItem] = [*ids[:20], *(("acc-2", i) for i in ids[20:])]
    client = await make_client(max_concurrency=max_concurrency)
    report = await client.cancel_stop_orders(items, concurrency=concurrency)
    assert report.ok
    assert exchange.max_in_flight == bound


async def test_the_deadline_cuts_attempts_and_reports_unknown_and_not_sent(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """At the deadline the in-flight order is unknown, unsent ones not_sent; none is sent late."""
    ids = exchange.add_stop_orders(6, account_id=ACCOUNT)
    exchange.inject_for(ids[1], Fault.hang())
    loop = asyncio.get_running_loop()
    started = loop.time()
    report = await client.cancel_stop_orders(ids, deadline=0.5, concurrency=1)
    # The deadline, not the attempt's own time limit, ended the hung request.
    assert loop.time() - started < client.timeout.total
    outcomes = [r.outcome for r in report.results]
    assert (
        outcomes == [CancelOutcome.CANCELLED, CancelOutcome.UNKNOWN] + [CancelOutcome.NOT_SENT] * 4
    )
    assert isinstance(report.results[1].error, asyncstop.APITimeoutError)
    assert report.results[2].attempts == 0
    for unsent in report.results[2:]:  # error says why, as for every other outcome
        assert isinstance(unsent.error, asyncstop.APIConnectionError)
        assert not unsent.error.request_sent
        assert "the deadline passed before a request" in str(unsent.error)
    assert len(exchange.journal) == 2
    assert exchange.open_stop_orders(ACCOUNT) == set(ids[1:])


async def test_a_zero_deadline_sends_nothing(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """deadline=0 reports every order not_sent and sends no request."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    report = await client.cancel_stop_orders(ids, deadline=0)
    assert report.counts[CancelOutcome.NOT_SENT] == 5
    assert all("deadline passed" in str(r.error) for r in report.results)
    assert exchange.journal == []


async def test_a_429_pauses_every_worker_of_the_account(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """After reading a 429 with Retry-After, the client starts no request before it has passed."""
    ids = exchange.add_stop_orders(200, account_id=ACCOUNT)
    exchange.faults = Faults(latency=0.002)
    exchange.inject_for(ids[20], Fault.rate_limited(retry_after="0.3"))
    timeline = ClientTimeline()
    async with aiohttp.ClientSession(trace_configs=[timeline.trace]) as session:
        client = await make_client(session=session)
        report = await client.cancel_stop_orders(ids, concurrency=16)
    assert report.ok
    assert timeline.starts_inside_pauses() == []
    [(read, seconds)] = timeline.pauses
    # The pause held back work: without it, 16 workers would have sent it inside those 0.3 s.
    assert any(start >= read + seconds for start in timeline.starts)


async def test_rate_limit_keeps_the_call_under_the_exchanges_limit(
    make_client: ClientFactory,
) -> None:
    """rate_limit= at the exchange's limit gets no 429, where the same call without it does."""
    async with FakeExchange(
        tokens={TOKEN}, seed=4, rate_limit=50, rate_limit_burst=5, retry_after=0.25
    ) as exchange:
        ids = exchange.add_stop_orders(31, account_id=ACCOUNT)
        timeline = ClientTimeline()
        async with aiohttp.ClientSession(trace_configs=[timeline.trace]) as session:
            client = await make_client(base_url=exchange.base_url, session=session)
            paced = await client.cancel_stop_orders(ids[:15], rate_limit=48)
            assert paced.ok
            assert timeline.pauses == []
            # 16 requests at once: avoiding a 429 would take 0.22 s between the first and the last.
            unpaced = await client.cancel_stop_orders(ids[15:], concurrency=16)
    assert unpaced.ok
    assert timeline.pauses
    assert timeline.starts_inside_pauses() == []


async def test_the_callers_cancellation_is_prompt_and_leaves_nothing_behind(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Cancelling the bulk task raises CancelledError, reports every item, leaves no task behind."""
    ids = exchange.add_stop_orders(50, account_id=ACCOUNT)
    exchange.faults = Faults(hang=1.0)
    seen: list[asyncstop.CancelResult] = []
    task = asyncio.create_task(client.cancel_stop_orders(ids, concurrency=8, on_result=seen.append))
    await wait_until(lambda: exchange.in_flight == 8, timeout=WAIT_LIMIT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        # Every request hangs for good: only a prompt cancellation ends within the limit.
        async with asyncio.timeout(WAIT_LIMIT):
            await task
    assert sorted(r.order_id for r in seen) == sorted(ids)
    outcomes = Counter(r.outcome for r in seen)
    assert outcomes == {CancelOutcome.UNKNOWN: 8, CancelOutcome.NOT_SENT: 42}
    assert client_tasks() == []


async def test_activated_stops_are_cancelled_and_easy_to_find(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """An order returned as Activated counts as cancelled and is listed in report.activated."""
    ids = exchange.add_stop_orders(40, account_id=ACCOUNT, activated_fraction=0.25)
    activated = {i for i in ids if exchange.orders[i].status == "Activated"}
    assert activated
    report = await client.cancel_stop_orders(ids)
    assert report.ok
    assert {r.order_id for r in report.activated} == activated
    for result in report.activated:
        assert result.outcome is CancelOutcome.CANCELLED
        assert result.order is not None
        assert result.order.status == asyncstop.OrderStatus.ACTIVATED


async def test_a_200_that_is_not_the_reply_is_unknown_while_the_order_may_be_gone(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A cancel applied behind a garbage 200 is unknown, then already_gone on the retry's 404."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject_for(order_id, Fault.reply(200, b"not json"))
    client = await make_client(max_retries=0)
    report = await client.cancel_stop_orders([order_id])
    [result] = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert not report.ok
    exchange.reset_journal()
    retried = await (await make_client()).cancel_stop_orders([order_id])
    assert retried.results[0].outcome is CancelOutcome.NOT_FOUND


async def test_orders_of_several_accounts_in_one_call(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """(account_id, order_id) pairs cancel each order through its own account."""
    a = exchange.add_stop_orders(10, account_id="acc-a")
    b = exchange.add_stop_orders(10, account_id="acc-b")
    client = await make_client(account_id=None)
    report = await client.cancel_stop_orders(
        [*(("acc-a", i) for i in a), *(("acc-b", i) for i in b)]
    )
    assert report.ok
    assert not exchange.open_stop_orders()
    assert {r.account_id for r in report.results} == {"acc-a", "acc-b"}


@pytest.mark.parametrize(
    "bad_item",
    [
        "a/b",
        ("acc", "x y"),
        ("acc\n", "X"),
        (["acc"], "X"),
        42,
        ("only-one",),
        ("a", "b", "c"),
        None,
    ],
)
async def test_an_invalid_item_in_a_list_refuses_the_whole_call(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, bad_item: object
) -> None:
    """A bad item anywhere in a list raises ValueError naming its index, and nothing is sent."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    with pytest.raises(ValueError, match=r"orders\[2\]"):
        await client.cancel_stop_orders([ids[0], ids[1], bad_item])  # type: ignore[list-item]
    assert exchange.journal == []


async def test_bad_arguments_are_refused(client: asyncstop.AsyncStopClient) -> None:
    """A str instead of a list, a bad deadline or concurrency raise ValueError."""
    with pytest.raises(ValueError, match="single str"):
        await client.cancel_stop_orders("01K2MNGAWPMQJ7WGATFSCAS1G4")
    with pytest.raises(ValueError, match="deadline"):
        await client.cancel_stop_orders([], deadline=-1)
    with pytest.raises(ValueError, match="concurrency"):
        await client.cancel_stop_orders([], concurrency=0)


async def test_an_async_source_is_cancelled_as_it_yields(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Cancelling starts with the first id from an async source, before the source is exhausted."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)

    async def source() -> AsyncIterator[asyncstop.OrderItem]:
        yield ids[0]
        # Times out, failing the test, if cancelling waited for the source to end.
        await wait_until(lambda: exchange.journal, timeout=WAIT_LIMIT)
        for order_id in ids[1:]:
            yield order_id
        yield "bad/id"

    report = await client.cancel_stop_orders(source())
    assert [r.outcome for r in report.results] == [CancelOutcome.CANCELLED] * 5 + [
        CancelOutcome.FAILED
    ]
    assert isinstance(report.results[-1].error, asyncstop.InvalidInputError)
    assert len(exchange.journal) == 5


async def test_a_failing_source_still_reports_what_it_gave(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """If the async source raises, the orders it gave are cancelled and the report says so."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)

    async def source() -> AsyncIterator[str]:
        for order_id in ids:
            yield order_id
        raise ConnectionError("order book went away")

    report = await client.cancel_stop_orders(source())
    assert report.counts[CancelOutcome.CANCELLED] == 3
    assert isinstance(report.source_error, ConnectionError)
    assert not report.ok


async def test_a_failing_exchange_leaves_no_reference_cycles(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Retries and errors leave no cyclic garbage, so the bot's loop meets no long GC pause."""
    ids = exchange.add_stop_orders(300, account_id=ACCOUNT)
    exchange.faults = Faults(error_before=0.2, error_after=0.1)
    exchange.inject_for(ids[0], *[Fault.error(503)] * 4)
    exchange.inject_for(ids[1], Fault.error(400))
    exchange.inject_for(ids[2], Fault.error(500, after=True))
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        report = await client.cancel_stop_orders(ids, concurrency=16)
        gc.collect()
        garbage = len(gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert exchange.pending_faults == 0
    assert report.results[0].outcome is CancelOutcome.UNKNOWN
    assert "HTTP 503" in str(report.results[0].error)
    assert report.results[1].outcome is CancelOutcome.FAILED
    assert garbage == 0
    cancelled = next(r for r in report.results if r.order is not None)
    assert not gc.is_tracked(cancelled)
    assert not gc.is_tracked(cancelled.order)


async def test_a_long_list_does_not_block_the_loop_and_cancelling_its_intake_reports_all(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Taking in 5,000 ids yields to the loop; cancelled then, every id is reported not_sent."""
    ids = [f"ID{i}" for i in range(5000)]
    seen: list[asyncstop.CancelResult] = []
    task = asyncio.create_task(client.cancel_stop_orders(ids, on_result=seen.append))
    await asyncio.sleep(0)  # the call starts taking in the list...
    await asyncio.sleep(0)  # ...and yields back to this task before it is done
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert len(seen) == 5000
    assert {r.outcome for r in seen} == {CancelOutcome.NOT_SENT}
    assert all("the call was cancelled before a request" in str(r.error) for r in seen)
    assert exchange.journal == []


# -- the report's promises and its one JSON record ------------------------------------------------


async def test_under_the_not_found_warning_the_orders_are_pending_and_the_report_not_ok(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A wrong account id: every not_found order is in pending and report.ok is False."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    exchange.add_account("acc-other")
    client = await make_client(account_id="acc-other")
    report = await client.cancel_stop_orders(ids)
    assert report.warning is not None
    assert not report.ok
    assert [r.order_id for r in report.pending] == ids
    assert report.settled == []
    assert exchange.open_stop_orders() == set(ids)  # pending was true: they are all live


async def test_a_few_not_found_orders_without_the_warning_are_settled(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Two not_found among cancelled orders: no warning, report.ok, nothing pending."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    report = await client.cancel_stop_orders([*ids, "GONE-1", "GONE-2"])
    assert report.warning is None
    assert report.ok
    assert report.pending == []
    assert len(report.settled) == 7


async def test_a_result_record_is_json_and_rebuilds_the_result_with_its_error(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """result_record -> JSON -> result_from_record keeps the outcome, the order and the error."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT, activated_fraction=1.0)
    exchange.inject_for(ids[1], Fault.error(403))
    report = await client.cancel_stop_orders(ids, deadline=5.0)
    records = [json.loads(json.dumps(result_record(r))) for r in report.results]
    assert records[0]["outcome"] == "cancelled"
    assert records[0]["activated"] is True
    assert records[0]["order"]["orderId"] == ids[0]
    assert records[1]["error"]["type"] == "PermissionDeniedError"
    for record, result in zip(records, report.results, strict=True):
        rebuilt = result_from_record(record)
        assert (rebuilt.order_id, rebuilt.outcome, rebuilt.attempts, rebuilt.order) == (
            result.order_id,
            result.outcome,
            result.attempts,
            result.order,
        )
        assert type(rebuilt.error) is type(result.error)
    denied = result_from_record(records[1]).error
    assert isinstance(denied, asyncstop.PermissionDeniedError)
    assert denied.status_code == 403


async def test_a_report_record_counts_every_outcome_and_lists_what_may_be_live(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """report_record: every outcome counted, pending ids (warning included), capped by max_ids."""
    ids = exchange.add_stop_orders(4, account_id=ACCOUNT)
    exchange.add_account("acc-other")
    client = await make_client(account_id="acc-other")
    report = await client.cancel_stop_orders(ids)
    record = json.loads(json.dumps(report_record(report, max_ids=3)))
    assert record["counts"] == {outcome.value: 0 for outcome in CancelOutcome} | {"not_found": 4}
    assert record["ok"] is False
    assert record["warning"] == report.warning
    assert record["pending_count"] == 4
    assert record["pending"] == [["acc-other", order_id] for order_id in ids[:3]]
