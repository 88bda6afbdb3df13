"""Scenario 1: client overhead against a server that answers at once.

N cancels at concurrency 16, 64 and 256 through asyncstop and through the
hand-written baselines (see ``baselines.py``), on asyncio's loop and on uvloop.
Per case: cancels per second (wall), client CPU microseconds per cancel
(``time.process_time`` of this process, which runs nothing but the client),
and the ratio of its cancels/s to baseline (b) measured in the same run. The
fast server runs in its own process on the other core; its busy share of that
core is reported too, to show it was not the bottleneck.

Every client gets a new pool per sample, warmed with one request per
connection, then times its N cancels: what a kill switch on a fresh client
sees. httpx and the sequential loop run N = 200 (they are slow); see the
README for httpx's pool, which speeds up after ~5 s of use. asyncio's loop
runs every concurrency, uvloop only 64, the concurrency of the targets (all
three would add half a minute to a suite that must finish in five).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Final

import asyncstop

from . import baselines
from .common import (
    ACCOUNT_ID,
    TOKEN,
    Figure,
    FigureSet,
    Settings,
    Stopwatch,
    loop_factories,
    order_ids,
    ratio,
    rotate,
    run_in_loop,
)
from .servers import ServerProcess, ServerSpec

__all__ = ["run"]

CONCURRENCIES: Final = (16, 64, 256)
ASYNCSTOP: Final = "asyncstop"
BARE: Final = "(a) aiohttp"
DECODE: Final = "(b) aiohttp+msgspec"
HTTPX: Final = "(c) httpx"
SEQUENTIAL: Final = "(d) sequential"
#: The clients measured at every concurrency; the sequential one has none.
CONCURRENT_CLIENTS: Final = (ASYNCSTOP, BARE, DECODE, HTTPX)
#: The concurrency whose figures carry the targets.
TARGET_CONCURRENCY: Final = 64


@dataclass(frozen=True, slots=True)
class _Sample:
    wall: float
    cpu: float
    count: int
    server_cpu: float


# One timed run of one client: (base url, timed ids, warm-up ids, concurrency) -> wall, cpu.
_Timer = Callable[[str, list[str], list[str], int], Awaitable[Stopwatch]]


def _check(failed: int, client: str) -> None:
    if failed:
        raise RuntimeError(f"{client}: {failed} cancels did not get a 200 from the fast server")


async def _time_asyncstop(
    base_url: str, ids: list[str], warm: list[str], concurrency: int
) -> Stopwatch:
    async with asyncstop.AsyncStopClient(
        base_url=base_url, token=TOKEN, account_id=ACCOUNT_ID, max_concurrency=concurrency
    ) as client:
        await client.cancel_stop_orders(warm, concurrency=concurrency)
        with Stopwatch() as watch:
            report = await client.cancel_stop_orders(ids, concurrency=concurrency)
    _check(len(ids) - report.counts[asyncstop.CancelOutcome.CANCELLED], ASYNCSTOP)
    return watch


def _aiohttp_timer(*, decode: bool) -> _Timer:
    async def timer(base_url: str, ids: list[str], warm: list[str], concurrency: int) -> Stopwatch:
        async with baselines.new_aiohttp_session(concurrency) as session:
            await baselines.aiohttp_gather(session, base_url, warm, concurrency, decode=decode)
            with Stopwatch() as watch:
                failed = await baselines.aiohttp_gather(
                    session, base_url, ids, concurrency, decode=decode
                )
        _check(failed, DECODE if decode else BARE)
        return watch

    return timer


async def _time_httpx(
    base_url: str, ids: list[str], warm: list[str], concurrency: int
) -> Stopwatch:
    async with baselines.new_httpx_client(concurrency) as client:
        await baselines.httpx_gather(client, base_url, warm, concurrency)
        with Stopwatch() as watch:
            failed = await baselines.httpx_gather(client, base_url, ids, concurrency)
    _check(failed, HTTPX)
    return watch


async def _time_sequential(
    base_url: str, ids: list[str], warm: list[str], concurrency: int
) -> Stopwatch:
    async with baselines.new_aiohttp_session(1) as session:
        await baselines.aiohttp_sequential(session, base_url, warm)
        with Stopwatch() as watch:
            failed = await baselines.aiohttp_sequential(session, base_url, ids)
    _check(failed, SEQUENTIAL)
    return watch


_TIMERS: Final[dict[str, _Timer]] = {
    ASYNCSTOP: _time_asyncstop,
    BARE: _aiohttp_timer(decode=False),
    DECODE: _aiohttp_timer(decode=True),
    HTTPX: _time_httpx,
    SEQUENTIAL: _time_sequential,
}


class _Overhead:
    def __init__(self, settings: Settings, server: ServerProcess) -> None:
        self.settings = settings
        self.server = server
        self.figures = FigureSet(1)
        self.n = 2_000 if settings.quick else 20_000
        # httpx manages 100-800 cancels/s and the sequential loop ~8,000: fewer
        # orders keep the run short; cancels/s and CPU per cancel stay comparable.
        self.n_slow = 100 if settings.quick else 200
        self.ids = order_ids(self.n, "S1")

    async def sample(self, client: str, concurrency: int) -> _Sample:
        count = self.n_slow if client in (HTTPX, SEQUENTIAL) else self.n
        warm = self.ids[: min(count, concurrency)]  # one request per pooled connection
        ids = self.ids[:count]
        before = self.server.stats()["cpu"]
        watch = await _TIMERS[client](self.server.base_url, ids, warm, concurrency)
        server_cpu = self.server.stats()["cpu"] - before
        return _Sample(watch.wall, watch.cpu, count, server_cpu)

    async def measure(self, loop_name: str, concurrencies: tuple[int, ...]) -> None:
        # One untimed round first: the first requests of a process pay for
        # imports, caches and CPU frequency ramp-up.
        await self.sample(ASYNCSTOP, TARGET_CONCURRENCY)
        figures = self.figures
        for run in range(self.settings.runs):
            busiest = 0.0
            for concurrency in concurrencies:
                rates: dict[str, float] = {}
                clients = rotate(CONCURRENT_CLIENTS, run)
                if concurrency == TARGET_CONCURRENCY:
                    clients.append(SEQUENTIAL)
                for client in clients:
                    sample = await self.sample(client, concurrency)
                    rate = sample.count / sample.wall
                    rates[client] = rate
                    case = self.case(loop_name, client, concurrency)
                    figures.add(case, "cancels/s", "/s", rate)
                    figures.add(
                        case, "client CPU per cancel", "µs", sample.cpu / sample.count * 1e6
                    )
                    busiest = max(busiest, sample.server_cpu / sample.wall)
                for client, rate in rates.items():
                    if client != DECODE:
                        case = self.case(loop_name, client, concurrency)
                        figures.add(case, "cancels/s / (b)", "x", ratio(rate, rates[DECODE]))
                figures.add(
                    self.case(loop_name, ASYNCSTOP, concurrency),
                    "cancels/s / httpx",
                    "x",
                    ratio(rates[ASYNCSTOP], rates[HTTPX]),
                )
            figures.add(
                f"{loop_name}: fast server",
                "busiest share of its core",
                "%",
                100 * busiest,
            )

    @staticmethod
    def case(loop_name: str, client: str, concurrency: int) -> str:
        if client == SEQUENTIAL:
            return f"{loop_name} C=1 {client}"
        return f"{loop_name} C={concurrency} {client}"

    def targets(self) -> None:
        for loop_name in loop_factories():
            case = self.case(loop_name, ASYNCSTOP, TARGET_CONCURRENCY)
            versus_b = self.figures.get(case, "cancels/s / (b)")
            if versus_b is not None:
                versus_b.check(">= 0.95", lambda v: v >= 0.95)
            versus_httpx = self.figures.get(case, "cancels/s / httpx")
            if versus_httpx is not None:
                versus_httpx.check(">= 15", lambda v: v >= 15)
        for figure in self.figures:
            if HTTPX in figure.case or SEQUENTIAL in figure.case:
                figure.note = f"N={self.n_slow}"
            elif figure.metric.startswith("cancels/s") or figure.metric.startswith("client"):
                figure.note = f"N={self.n}"


def run(settings: Settings) -> list[Figure]:
    """Run scenario 1 and return its figures."""
    with ServerProcess(ServerSpec(), core=settings.server_core) as server:
        overhead = _Overhead(settings, server)
        for loop_name, factory in loop_factories().items():
            # uvloop at the target concurrency only: all three would add ~30 s.
            concurrencies = CONCURRENCIES if factory is None else (TARGET_CONCURRENCY,)
            run_in_loop(factory, partial(overhead.measure, loop_name, concurrencies))
    overhead.targets()
    return overhead.figures.as_list()
