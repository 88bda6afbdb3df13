"""The reliability suite: every fault at once, judged by the exchange's own state."""

from __future__ import annotations

import asyncio
from collections import Counter

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncstop
from asyncstop import CancelOutcome
from asyncstop.testing import FakeExchange, Faults, LongTailLatency

from .conftest import PAUSE_GRACE, TOKEN

SUCCESS = {CancelOutcome.CANCELLED, CancelOutcome.ALREADY_GONE}


def check_report_against_exchange(
    report: asyncstop.CancelReport, items: list[tuple[str, str]], exchange: FakeExchange
) -> None:
    """The invariants every run must satisfy, read from the exchange's state and journal."""
    # Every order reported once, in input order.
    assert [(r.account_id, r.order_id) for r in report.results] == items
    live = exchange.open_stop_orders()
    for result in report.results:
        if result.outcome in SUCCESS:
            # No order reported cancelled or already gone is still live.
            assert result.order_id not in live, result
        if result.order_id in live:
            # No order still live is reported as a success.
            assert result.outcome not in SUCCESS, result
        if result.outcome is CancelOutcome.FAILED:
            # No failed result for an order the exchange shows as cancelled.
            assert result.order_id in live, result
        if result.outcome is CancelOutcome.NOT_SENT:
            assert result.attempts == 0
            assert result.order_id in live
    sent = Counter(e.order_id for e in exchange.journal if e.method == "DELETE")
    for result in report.results:
        assert result.attempts == sent[result.order_id], result


async def test_two_thousand_orders_under_every_fault() -> None:
    """2,000 orders over 2 accounts, 5xx, drops, 429s, long tails, hangs: every invariant holds."""
    faults = Faults(
        error_before=0.05,
        error_after=0.05,
        drop_after=0.02,
        hang=0.002,
        latency=LongTailLatency(median=0.002, p99=0.03, max=0.2),
    )
    async with FakeExchange(
        tokens={TOKEN},
        seed=2026,
        faults=faults,
        rate_limit=400,
        retry_after=0.25,
        pause_grace=PAUSE_GRACE,
    ) as exchange:
        items = [("acc-1", i) for i in exchange.add_stop_orders(1000, account_id="acc-1")]
        items += [("acc-2", i) for i in exchange.add_stop_orders(1000, account_id="acc-2")]
        concurrency, deadline = 48, 8.0
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, timeout=0.5, max_retries=4
        ) as client:
            loop = asyncio.get_running_loop()
            started = loop.time()
            report = await client.cancel_stop_orders(
                items, deadline=deadline, concurrency=concurrency
            )
            assert loop.time() - started <= deadline + 0.05
        check_report_against_exchange(report, items, exchange)
        assert exchange.max_in_flight <= concurrency
        assert exchange.pause_violations == []
        outcomes = Counter(e.outcome for e in exchange.journal)
        # The faults really fired, so the invariants were tested under them.
        for fired in ("error_before", "error_after", "dropped_after", "hung", "rate_limited"):
            assert outcomes[fired] > 0, fired
        assert (
            report.counts[CancelOutcome.CANCELLED] + report.counts[CancelOutcome.ALREADY_GONE]
            >= 1990
        )


fault_mixes = st.fixed_dictionaries(
    {
        "error_before": st.floats(0, 0.4),
        "error_after": st.floats(0, 0.4),
        "drop_before": st.floats(0, 0.2),
        "drop_after": st.floats(0, 0.2),
        "hang": st.sampled_from([0.0, 0.0, 0.05]),
    }
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    mix=fault_mixes,
    seed=st.integers(0, 2**16),
    max_retries=st.integers(0, 3),
    deadline=st.sampled_from([None, 0.3, 2.0]),
)
def test_invariants_hold_for_any_fault_mix(
    mix: dict[str, float], seed: int, max_retries: int, deadline: float | None
) -> None:
    """For any mix of faults, each order is reported once and no report contradicts the exchange."""

    async def scenario() -> None:
        async with FakeExchange(tokens={TOKEN}, seed=seed, faults=Faults(**mix)) as exchange:
            items = [("acc-1", i) for i in exchange.add_stop_orders(40, account_id="acc-1")]
            items += [("acc-2", i) for i in exchange.add_stop_orders(20, account_id="acc-2")]
            items.append(items[0])  # a duplicate
            async with asyncstop.AsyncStopClient(
                base_url=exchange.base_url, token=TOKEN, timeout=0.2, max_retries=max_retries
            ) as client:
                report = await client.cancel_stop_orders(items, deadline=deadline, concurrency=8)
            check_report_against_exchange(report, items, exchange)

    asyncio.run(scenario())
