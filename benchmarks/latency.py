"""Scenario 2: a kill switch against a server that takes 20 ms to answer.

N orders through asyncstop at concurrency 16, 64 and 256 against a server that
answers each DELETE after a fixed 20 ms, and against one whose delay has a long
tail (log-normal, median 20 ms). Each case runs warm (``await
client.warm_up()`` first, so every connection is open) and cold (a new client
that opens its connections during the call), over plain HTTP and over TLS
(a certificate made by trustme for this run).

No client can finish N orders at concurrency C in less than ``ceil(N/C)``
round trips. The round trip is measured at the start of every run (the median
of sequential requests on one warm connection: 20 ms plus the time both ends
take), and the table reports each time divided by that bound, and cold minus
warm from the same run. A small kill switch (64 orders at concurrency 64, one
round trip) shows the case where the handshakes dominate.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
import statistics
import time
from dataclasses import dataclass
from typing import Final, Literal

import asyncstop

from . import baselines
from .common import (
    ACCOUNT_ID,
    TOKEN,
    Figure,
    FigureSet,
    Settings,
    Stopwatch,
    order_ids,
    ratio,
    rotate,
    run_in_loop,
)
from .servers import STOP_ORDERS_PATH, ServerProcess, ServerSpec, TLSFiles, tls_files

__all__ = ["run"]

LATENCY: Final = 0.020
#: Sigma of the long-tail (log-normal) delay: p50 20 ms, p90 52 ms, p99 115 ms, mean 26.5 ms.
TAIL_SIGMA: Final = 0.75
TAIL_MEAN: Final = LATENCY * math.exp(TAIL_SIGMA**2 / 2)
CONCURRENCIES: Final = (16, 64, 256)
SMALL_ORDERS: Final = 64
TARGET_CONCURRENCY: Final = 64
#: Sequential requests whose median round trip sets the bound of a run.
RTT_SAMPLES: Final = 15

#: How the client's connections stand when the timed call starts.
COLD: Final = "cold"  # a new client: the call opens its connections
WARM: Final = "warm"  # a new client after `await client.warm_up()`
HOT: Final = "hot"  # a client that has just run the same call: the best warm can do
HEDGED: Final = "warm hedge=auto"  # warm, with hedge="auto"
BARE: Final = "(a) aiohttp warm"  # the hand-written baseline (a), after the same warm-up


@dataclass(slots=True)
class _Target:
    name: str
    server: ServerProcess
    context: ssl.SSLContext | None
    #: The server's mean delay beyond the fixed 20 ms (the long tail's excess).
    extra_delay: float = 0.0
    #: The target whose round trip is measured for this one (itself when None).
    rtt_from: _Target | None = None
    #: The round trip measured at the start of the current run, in seconds.
    rtt: float = math.nan

    @property
    def fixed(self) -> bool:
        return self.extra_delay == 0.0


async def _measure_rtt(target: _Target) -> float:
    """Median seconds of a sequential request on one warm connection."""
    async with baselines.new_aiohttp_session(1, target.context) as session:
        url = target.server.base_url + STOP_ORDERS_PATH + "rtt"
        headers = baselines.headers_for()
        samples = []
        for _ in range(RTT_SAMPLES + 1):
            started = time.perf_counter()
            async with session.delete(url, headers=headers) as resp:
                await resp.read()
            samples.append(time.perf_counter() - started)
    return statistics.median(samples[1:])  # the first one opened the connection


async def _time_cancel(
    target: _Target, ids: list[str], concurrency: int, mode: str
) -> tuple[Stopwatch, asyncstop.CancelReport]:
    session = None
    if target.context is not None:
        session = baselines.new_aiohttp_session(concurrency, target.context)
    try:
        async with asyncstop.AsyncStopClient(
            base_url=target.server.base_url,
            token=TOKEN,
            account_id=ACCOUNT_ID,
            max_concurrency=concurrency,
            session=session,
        ) as client:
            if mode != COLD:
                await client.warm_up()
            if mode == HOT:
                await client.cancel_stop_orders(ids, concurrency=concurrency)
            hedge: Literal["auto"] | None = "auto" if mode == HEDGED else None
            with Stopwatch() as watch:
                report = await client.cancel_stop_orders(ids, concurrency=concurrency, hedge=hedge)
    finally:
        if session is not None:
            await session.close()
    if not report.ok:
        raise RuntimeError(f"{target.name}: not every order was cancelled: {report!r}")
    return watch, report


async def _time_bare(target: _Target, ids: list[str], concurrency: int) -> Stopwatch:
    async with baselines.new_aiohttp_session(concurrency, target.context) as session:
        # The same warm-up as asyncstop's: one concurrent HEAD per connection.
        async def head() -> None:
            async with session.head(target.server.base_url + STOP_ORDERS_PATH) as resp:
                await resp.read()

        await asyncio.gather(*(head() for _ in range(concurrency)))
        with Stopwatch() as watch:
            failed = await baselines.aiohttp_gather(
                session, target.server.base_url, ids, concurrency, decode=False
            )
    if failed:
        raise RuntimeError(f"{target.name}: {failed} orders did not get a 200")
    return watch


class _Latency:
    def __init__(self, settings: Settings, targets: list[_Target]) -> None:
        self.settings = settings
        self.targets = targets
        self.figures = FigureSet(2)
        self.n = 300 if settings.quick else 1_000
        self.ids = order_ids(self.n, "S2")

    async def measure(self) -> None:
        for target in self.targets:  # untimed: imports, TLS session caches, CPU ramp-up
            await _time_cancel(target, self.ids[:SMALL_ORDERS], SMALL_ORDERS, COLD)
        for run in range(self.settings.runs):
            for target in self.targets:
                if target.rtt_from is None:
                    target.rtt = await _measure_rtt(target)
                    self.figures.add(target.name, "round trip, one request", "ms", target.rtt * 1e3)
            for target in self.targets:
                if target.rtt_from is not None:
                    target.rtt = target.rtt_from.rtt + target.extra_delay
                for concurrency in CONCURRENCIES:
                    await self.compare(target, self.ids, concurrency, run)
                if target.fixed:
                    await self.compare(target, self.ids[:SMALL_ORDERS], SMALL_ORDERS, run)

    async def compare(self, target: _Target, ids: list[str], concurrency: int, run: int) -> None:
        """Measure the modes back to back; differences are taken within the run."""
        rounds = math.ceil(len(ids) / concurrency)
        bound = rounds * target.rtt
        label = target.name if len(ids) == self.n else f"{target.name} {len(ids)} orders"
        modes = [WARM, COLD]
        if not target.fixed or concurrency == TARGET_CONCURRENCY:
            # Hedging against the tail it is for, and once where it should never fire.
            modes.append(HEDGED)
        if concurrency == TARGET_CONCURRENCY and target.fixed:
            # Hot and the baseline only where they are judged: on the long tail
            # the run-to-run spread (tens of ms) hides the few ms they differ by.
            modes.append(HOT)
            if len(ids) == self.n:
                modes.append(BARE)
        times: dict[str, float] = {}
        for mode in rotate(modes, run):
            if mode == BARE:
                watch = await _time_bare(target, ids, concurrency)
            else:
                watch, report = await _time_cancel(target, ids, concurrency, mode)
                if mode == HEDGED:
                    case = f"{label} C={concurrency} {mode}"
                    self.figures.add(
                        case, "extra requests (hedges)", "%", 100 * report.hedges_sent / len(ids)
                    )
                    self.figures.add(
                        case,
                        "hedges that won",
                        "%",
                        100 * ratio(report.hedges_won, report.hedges_sent),
                    )
            times[mode] = watch.wall
            case = f"{label} C={concurrency} {mode}"
            if mode != HOT:
                self.figures.add(case, "time", "ms", watch.wall * 1e3)
                self.figures.add(
                    case, "time / bound", "x", ratio(watch.wall, bound)
                ).note = f"bound = {rounds} round trips"
        case = f"{label} C={concurrency}"
        self.figures.add(case, "cold - warm", "ms", (times[COLD] - times[WARM]) * 1e3)
        if HOT in times:
            # The share of the cold start's cost that warm_up() leaves: 0 % when a
            # warmed-up client is as fast as one that has just run the same call.
            self.figures.add(
                case,
                "cold cost left after warm_up()",
                "%",
                100 * ratio(times[WARM] - times[HOT], times[COLD] - times[HOT]),
            ).note = "(warm - hot) / (cold - hot)"
        if HEDGED in times:
            self.figures.add(
                f"{label} C={concurrency} {HEDGED}",
                "time / warm without hedging",
                "x",
                ratio(times[HEDGED], times[WARM]),
            )
        if BARE in times:
            self.figures.add(
                f"{label} C={concurrency} warm",
                "time / (a) aiohttp's",
                "x",
                ratio(times[WARM], times[BARE]),
            )

    def check_targets(self) -> None:
        for figure in self.figures:
            if HEDGED in figure.case:
                self.check_hedged(figure)
                continue
            if "fixed" not in figure.case or f"C={TARGET_CONCURRENCY}" not in figure.case:
                continue
            small = "orders" in figure.case
            asyncstop_warm = figure.case.endswith(f" {WARM}") and BARE not in figure.case
            if figure.metric == "time / bound" and asyncstop_warm and not small:
                figure.check("<= 1.1", lambda v: v <= 1.1)
            elif figure.metric == "cold cost left after warm_up()" and small:
                # Judged where the handshakes dominate; with 1,000 orders over
                # plain HTTP the cold cost is a few ms, within the machine's noise.
                figure.check("<= 10", lambda v: v <= 10)

    @staticmethod
    def check_hedged(figure: Figure) -> None:
        """Issue 12's targets: the tail cut at little cost, and no change without a tail."""
        tail = "long-tail" in figure.case
        if figure.metric == "time / bound" and tail:
            if "C=256" in figure.case:
                figure.check("<= 1.3", lambda v: v <= 1.3)
            elif f"C={TARGET_CONCURRENCY}" in figure.case:
                figure.check("<= 1.05", lambda v: v <= 1.05)
        elif figure.metric == "extra requests (hedges)":
            if tail:
                figure.check("<= 10 %", lambda v: v <= 10)
            else:
                figure.check("0 in every run", lambda v: v == 0, on_max=True)


def run(settings: Settings) -> list[Figure]:
    """Run scenario 2 and return its figures."""
    with contextlib.ExitStack() as stack:
        tls: TLSFiles = stack.enter_context(tls_files())

        def start(spec: ServerSpec) -> ServerProcess:
            return stack.enter_context(ServerProcess(spec, core=settings.server_core))

        http = _Target("http fixed", start(ServerSpec(latency=LATENCY, uvloop=False)), None)
        https_server = start(
            ServerSpec(latency=LATENCY, certfile=tls.certfile, keyfile=tls.keyfile, uvloop=False)
        )
        https = _Target("https fixed", https_server, tls.client_context())
        tail_server = start(
            ServerSpec(latency=LATENCY, latency_sigma=TAIL_SIGMA, seed=2, uvloop=False)
        )
        # The tail is independent of the transport: plain HTTP only, to keep the run short.
        # Its bound uses the mean delay, plus what a round trip costs beyond the delay.
        tail = _Target(
            "http long-tail", tail_server, None, extra_delay=TAIL_MEAN - LATENCY, rtt_from=http
        )
        latency = _Latency(settings, [http, https, tail])
        run_in_loop(None, latency.measure)
    latency.check_targets()
    return latency.figures.as_list()
