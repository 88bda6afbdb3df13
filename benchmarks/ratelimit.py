"""Scenario 3: a kill switch against a per-account rate limit.

The server allows R = 200 cancels per second per account (a token bucket one
second deep) and answers 429 with ``Retry-After: 1`` beyond it, keeping the
account paused for that second (see ``servers.py``). N = 2,000 orders, so no
client can finish in less than about N/R = 10 s.

Three clients, each on a fresh account so that no bucket or pause carries over:
asyncstop with ``rate_limit=R`` (it paces itself), asyncstop without it (it
runs flat out and obeys the 429s), and a naive ``asyncio.gather`` over every
order in which each request sleeps its own 429's ``Retry-After`` and tries
again. The server counts the 429s it sent and the requests that arrived inside
a pause: at least 20 ms (the grace for requests already in flight) after the
429 that started it.

Each client runs in its own process on the client core. The one with a time
target (``rate_limit=R``) runs alone; the other two run at the same time, on
their own accounts, because each takes ~10 s of mostly waiting and the whole
suite must finish in 5 minutes. They share the core only during their bursts.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import sys
from typing import Any, Final

import aiohttp

import asyncstop

from . import baselines
from .common import (
    TOKEN,
    Figure,
    FigureSet,
    Settings,
    Stopwatch,
    order_ids,
    ratio,
    rotate,
    run_children,
)
from .servers import ServerProcess, ServerSpec

__all__ = ["run"]

RATE: Final = 200.0
PAUSE: Final = 1.0
GRACE: Final = 0.02
CONCURRENCY: Final = 64
WITH_LIMIT: Final = f"asyncstop rate_limit={RATE:g}"
WITHOUT_LIMIT: Final = "asyncstop rate_limit=None"
NAIVE: Final = "naive asyncio.gather"
VARIANTS: Final = (WITH_LIMIT, WITHOUT_LIMIT, NAIVE)

#: Clients run together in one group; the one with the time target runs alone.
GROUPS: Final = ((WITH_LIMIT,), (WITHOUT_LIMIT, NAIVE))
#: A client that has not finished by then is killed and the run fails.
_CHILD_TIMEOUT: Final = 120.0


async def _asyncstop(
    base_url: str, ids: list[str], account_id: str, rate_limit: float | None
) -> tuple[int, float]:
    async with asyncstop.AsyncStopClient(
        base_url=base_url,
        token=TOKEN,
        account_id=account_id,
        max_concurrency=CONCURRENCY,
        rate_limit=rate_limit,
    ) as client:
        with Stopwatch() as watch:
            report = await client.cancel_stop_orders(ids, concurrency=CONCURRENCY)
    return len(report.pending), watch.wall


async def _naive(base_url: str, ids: list[str], account_id: str) -> tuple[int, float]:
    # The way most bots are written: a default session (a pool of 100 connections).
    async with aiohttp.ClientSession() as session:
        with Stopwatch() as watch:
            left = await baselines.naive_gather(session, base_url, ids, account_id)
    return left, watch.wall


async def _child(variant: str, base_url: str, account_id: str, count: int) -> dict[str, Any]:
    ids = order_ids(count, "S3")
    if variant == NAIVE:
        left, wall = await _naive(base_url, ids, account_id)
    else:
        rate_limit = RATE if variant == WITH_LIMIT else None
        left, wall = await _asyncstop(base_url, ids, account_id, rate_limit)
    return {"left": left, "wall": wall}


class _RateLimit:
    def __init__(self, settings: Settings, server: ServerProcess) -> None:
        self.settings = settings
        self.server = server
        self.figures = FigureSet(3)
        self.n = 400 if settings.quick else 2_000
        self.accounts = (f"acc-s3-{i}" for i in itertools.count())

    def measure(self) -> None:
        floor = self.n / RATE
        figures = self.figures
        for run in range(self.settings.runs):
            for group in rotate(GROUPS, run):
                accounts = {variant: next(self.accounts) for variant in group}
                outputs = run_children(
                    [
                        [
                            "benchmarks.ratelimit",
                            variant,
                            self.server.base_url,
                            account,
                            str(self.n),
                        ]
                        for variant, account in accounts.items()
                    ],
                    _CHILD_TIMEOUT,
                )
                stats = self.server.stats()["accounts"]
                for (variant, account_id), output in zip(accounts.items(), outputs, strict=True):
                    account = stats.get(account_id, {})
                    wall = output["wall"]
                    figures.add(variant, "time", "s", wall)
                    figures.add(
                        variant, "time / (N/R)", "x", ratio(wall, floor)
                    ).note = f"N/R = {self.n}/{RATE:g} = {floor:g} s"
                    figures.add(variant, "429s received", "", account.get("rejected", 0))
                    inside = account.get("inside_pause", 0)
                    figures.add(variant, "requests inside a pause", "", inside)
                    figures.add(variant, "orders not cancelled", "", output["left"])

    def check_targets(self) -> None:
        for variant in (WITH_LIMIT, WITHOUT_LIMIT):
            inside = self.figures.get(variant, "requests inside a pause")
            if inside is not None:
                inside.check("0 in every run", lambda v: v == 0, on_max=True)
            left = self.figures.get(variant, "orders not cancelled")
            if left is not None:
                left.check("0 in every run", lambda v: v == 0, on_max=True)
        timing = self.figures.get(WITH_LIMIT, "time / (N/R)")
        if timing is not None:
            timing.check("<= 1.05", lambda v: v <= 1.05)


def run(settings: Settings) -> list[Figure]:
    """Run scenario 3 and return its figures."""
    spec = ServerSpec(rate_limit=RATE, pause=PAUSE, grace=GRACE)
    with ServerProcess(spec, core=settings.server_core) as server:
        scenario = _RateLimit(settings, server)
        scenario.measure()
    scenario.check_targets()
    return scenario.figures.as_list()


if __name__ == "__main__":
    variant, base_url, account_id, count = sys.argv[1:5]
    print(json.dumps(asyncio.run(_child(variant, base_url, account_id, int(count)))))
