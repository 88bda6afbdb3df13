"""Scenario 4: the bot's event loop stays responsive during a kill switch.

While N = 10,000 cancels run at concurrency 64 against the fast server, a
ticker task in the same loop sleeps 5 ms over and over and records how late it
wakes up (the lag: measured sleep minus 5 ms). A bot's market-data handlers
and heartbeats see the same lag. Reported per run: p50, p99 and the maximum;
for asyncstop, for baseline (a) (the bare aiohttp loop), and for an idle loop,
whose lag is the floor that the event loop's timer granularity sets.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from typing import Final

import asyncstop

from . import baselines
from .common import (
    ACCOUNT_ID,
    TOKEN,
    Figure,
    FigureSet,
    Settings,
    order_ids,
    rotate,
    run_in_loop,
)
from .servers import ServerProcess, ServerSpec

__all__ = ["run"]

CONCURRENCY: Final = 64
TICK: Final = 0.005
TARGET_P99_MS: Final = 5.0
ASYNCSTOP: Final = "asyncstop"
BARE: Final = "(a) aiohttp"
IDLE: Final = "idle loop"
#: How long the idle loop is sampled.
IDLE_SECONDS: Final = 0.5


async def _ticker(lags: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        started = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - started - TICK)


def _percentile(values: list[float], fraction: float) -> float:
    """The nearest-rank percentile (no interpolation: a reported lag really happened)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


class _Responsiveness:
    def __init__(self, settings: Settings, server: ServerProcess) -> None:
        self.settings = settings
        self.server = server
        self.figures = FigureSet(4)
        self.n = 2_000 if settings.quick else 10_000
        self.ids = order_ids(self.n, "S4")

    async def asyncstop_load(self) -> None:
        async with asyncstop.AsyncStopClient(
            base_url=self.server.base_url,
            token=TOKEN,
            account_id=ACCOUNT_ID,
            max_concurrency=CONCURRENCY,
        ) as client:
            await client.warm_up()
            await self.sampled(
                client.cancel_stop_orders(self.ids, concurrency=CONCURRENCY), ASYNCSTOP
            )

    async def bare_load(self) -> None:
        async with baselines.new_aiohttp_session(CONCURRENCY) as session:
            base_url = self.server.base_url
            await baselines.aiohttp_gather(
                session, base_url, self.ids[:CONCURRENCY], CONCURRENCY, decode=False
            )
            await self.sampled(
                baselines.aiohttp_gather(session, base_url, self.ids, CONCURRENCY, decode=False),
                BARE,
            )

    async def idle_load(self) -> None:
        await self.sampled(asyncio.sleep(IDLE_SECONDS), IDLE)

    async def sampled(self, work: Awaitable[object], case: str) -> None:
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(lags, stop))
        await asyncio.sleep(0)  # the ticker is sleeping before the work starts
        try:
            await work
        finally:
            stop.set()
            await ticker
        figures = self.figures
        figures.add(case, "lag p50", "ms", _percentile(lags, 0.50) * 1e3)
        figures.add(
            case, "lag p99", "ms", _percentile(lags, 0.99) * 1e3
        ).note = f"{len(lags)} ticks"
        figures.add(case, "lag max", "ms", max(lags, default=math.nan) * 1e3)

    async def measure(self) -> None:
        loads: dict[str, Callable[[], Awaitable[None]]] = {
            ASYNCSTOP: self.asyncstop_load,
            BARE: self.bare_load,
            IDLE: self.idle_load,
        }
        await self.asyncstop_load()  # untimed: the first run of a process is slower
        self.figures = FigureSet(4)
        for run in range(self.settings.runs):
            for name in rotate(list(loads), run):
                await loads[name]()

    def check_targets(self) -> None:
        p99 = self.figures.get(ASYNCSTOP, "lag p99")
        if p99 is not None:
            p99.check(f"<= {TARGET_P99_MS:g} ms", lambda v: v <= TARGET_P99_MS)


def run(settings: Settings) -> list[Figure]:
    """Run scenario 4 and return its figures."""
    with ServerProcess(ServerSpec(), core=settings.server_core) as server:
        scenario = _Responsiveness(settings, server)
        run_in_loop(None, scenario.measure)
    scenario.check_targets()
    return scenario.figures.as_list()
