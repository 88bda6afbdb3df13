"""The reliability suite: every fault at once, judged by the exchange's own state."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Literal, TypedDict

import aiohttp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import asyncstop
from asyncstop.testing import FakeExchange, Fault, Faults, LongTailLatency, spread_faults

from .helpers import PAUSE_GRACE, TOKEN, check_report_against_exchange

STOP_ORDERS = "/frontoffice/api/v3/stop-orders/"


#: Faults every run of the big test meets, whatever the machine's speed: each is
#: scheduled for a request number that is certain to come (see spread_faults).
CERTAIN_FAULTS = (
    [Fault.rate_limited("0.25")] * 4
    + [Fault.error(503)] * 20
    + [Fault.error(503, after=True)] * 20
    + [Fault.drop(after=True)] * 10
    + [Fault.hang()] * 3
)


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
        # At least 1,990 orders end cancelled below, so at least as many
        # requests pass the gate: every scheduled fault fires. No deadline and a
        # roomy attempt time limit: a machine too loaded to answer in time can
        # only slow the test down, not make orders end unknown.
        schedule=spread_faults(CERTAIN_FAULTS, within=1500, seed=2026),
        rate_limit=400,
        retry_after=0.25,
        pause_grace=PAUSE_GRACE,
    ) as exchange:
        items = [("acc-1", i) for i in exchange.add_stop_orders(1000, account_id="acc-1")]
        items += [("acc-2", i) for i in exchange.add_stop_orders(1000, account_id="acc-2")]
        concurrency = 48
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, timeout=2.0, max_retries=4
        ) as client:
            report = await client.cancel_stop_orders(items, concurrency=concurrency)
        check_report_against_exchange(report, items, exchange)
        assert sum(result.ok for result in report.results) >= 1990
        assert exchange.max_in_flight <= concurrency
        assert exchange.pause_violations == []
        # The faults really fired, so the invariants were tested under them.
        assert exchange.pending_faults == 0
        outcomes = Counter(e.outcome for e in exchange.journal)
        for fired in ("error_before", "error_after", "dropped_after", "hung", "rate_limited"):
            assert outcomes[fired] > 0, fired


async def test_a_client_that_ignores_pauses_is_caught() -> None:
    """Plain aiohttp retrying 429s at once is caught sending inside the pause, stalls or not."""
    async with (
        FakeExchange(
            tokens={TOKEN},
            # Answers take 5 ms, so 8 workers need far longer than the grace
            # for 1,000 orders: they are still sending when it ends.
            faults=Faults(latency=0.005),
            schedule={5: Fault.rate_limited("1")},
            pause_grace=PAUSE_GRACE,
        ) as exchange,
        aiohttp.ClientSession() as session,
    ):
        ids = exchange.add_stop_orders(1000, account_id="acc-1")
        headers = {
            "Authorization": f"Bearer {TOKEN}",
            "accountId": "acc-1",
            "Content-Type": "application/json; x-api-version=4.0",
            "Accept": "*/*",
        }

        async def cancel_ignoring_pauses(queue: list[str]) -> None:
            while queue:
                order_id = queue.pop()
                status = 429
                while status == 429:
                    async with session.delete(
                        exchange.base_url + STOP_ORDERS + order_id, headers=headers
                    ) as response:
                        status = response.status

        async with asyncio.TaskGroup() as workers:
            for _ in range(8):
                workers.create_task(cancel_ignoring_pauses(ids))
        assert exchange.open_stop_orders() == set()
        assert len(exchange.pause_violations) > 0


class FaultMix(TypedDict):
    """The random fault rates a hypothesis example gives :class:`Faults`."""

    error_before: float
    error_after: float
    drop_before: float
    drop_after: float
    hang: float


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
    hedge=st.sampled_from([None, 0.02, "auto"]),
)
def test_invariants_hold_for_any_fault_mix(
    mix: FaultMix,
    seed: int,
    max_retries: int,
    deadline: float | None,
    hedge: float | Literal["auto"] | None,
) -> None:
    """For any mix of faults, hedged or not, each order is reported once and truly."""

    async def scenario() -> None:
        async with FakeExchange(tokens={TOKEN}, seed=seed, faults=Faults(**mix)) as exchange:
            items = [("acc-1", i) for i in exchange.add_stop_orders(40, account_id="acc-1")]
            items += [("acc-2", i) for i in exchange.add_stop_orders(20, account_id="acc-2")]
            items.append(items[0])  # a duplicate
            async with asyncstop.AsyncStopClient(
                base_url=exchange.base_url, token=TOKEN, timeout=0.2, max_retries=max_retries
            ) as client:
                report = await client.cancel_stop_orders(
                    items, deadline=deadline, concurrency=8, hedge=hedge
                )
            check_report_against_exchange(report, items, exchange, exact_attempts=False)
            assert exchange.max_in_flight <= 8

    asyncio.run(scenario())
