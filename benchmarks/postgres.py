"""Scenario 7: the PostgreSQL registry and the off-host service.

A temporary PostgreSQL from this machine's binaries (``fsync`` on, as in
production; skipped with the reason when the machine has none or asyncpg is
missing). Measured:

* **add() latency.** One ``await registry.add()`` under a lease (the fenced
  insert: the owner's row locked FOR SHARE, the epoch and expiry checked, one
  commit), timed in the bot's loop; p50 and p99 of every add.
* **Renewals per second for 1,000 owners.** 1,000 owners hold leases; their
  renewals (the lease's own UPDATE, judged by ``clock_timestamp()``) go as fast
  as 16 connections can send them while an off-host service polls every 0.5 s
  for expired leases. The rate, divided by 3/ttl, is how many bots one
  database and one service keep alive (at ttl 10 s, each bot renews 0.3 times a
  second).
* **Machine death to last cancel.** A bot process holding 1,000 stops under a
  lease (ttl 3 s) is SIGKILLed with its process group; ``asyncstop watchdog
  --store`` in another process cancels them on a fake exchange. Measured from
  the kill: the first DELETE and the last cancel. The floor is 2/3 ttl (the
  lease is valid that long after the last renewal at worst); the bound is ttl
  plus the service's poll interval and the cancels.
"""

from __future__ import annotations

import asyncio
import functools
import math
import os
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Final

import asyncstop
from asyncstop._postgres._lease import _ACQUIRE, _RENEW
from asyncstop._postgres._tempserver import TemporaryPostgres, unavailable_reason
from asyncstop._watchdog._service import _FIND

from .common import Figure, FigureSet, ScenarioSkipped, Settings, run_in_loop

__all__ = ["run"]

SCENARIO: Final = 7
ADDS: Final = 2000
QUICK_ADDS: Final = 200
OWNERS: Final = 1000
RENEW_CONNECTIONS: Final = 16
RENEW_SECONDS: Final = 5.0
QUICK_RENEW_SECONDS: Final = 1.0
DEATH_ORDERS: Final = 1000
QUICK_DEATH_ORDERS: Final = 200
DEATH_TTL: Final = 3.0
POLL_INTERVAL: Final = 0.5
_TOKEN: Final = "bench-token"  # noqa: S105 - the fake exchange's token
_ACCOUNT: Final = "bench-acc"
_MS: Final = 1000


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def _add_latency(dsn: str, count: int) -> list[float]:
    registry = await asyncstop.PostgresRegistry.connect(dsn, owner="bench-add")
    took: list[float] = []
    async with registry, registry.lease(ttl=10.0):
        for number in range(count):
            started = time.perf_counter()
            await registry.add(f"ADD-{number}", _ACCOUNT)
            took.append(time.perf_counter() - started)
    return took


async def _renewals(dsn: str, seconds: float) -> float:
    import asyncpg  # noqa: PLC0415 - the postgres extra

    setup = await asyncpg.connect(dsn)
    try:
        epochs = [
            await setup.fetchval(_ACQUIRE, f"bench-owner-{n}", 60.0, "bench") for n in range(OWNERS)
        ]
    finally:
        await setup.close()
    conns = [await asyncpg.connect(dsn) for _ in range(RENEW_CONNECTIONS)]
    done = 0
    stop_at = time.monotonic() + seconds

    async def renew(conn: asyncpg.Connection, first: int) -> None:
        nonlocal done
        owner = first
        while time.monotonic() < stop_at:
            renewed = await conn.fetchval(_RENEW, f"bench-owner-{owner}", epochs[owner])
            assert renewed == 1
            done += 1
            owner = (owner + RENEW_CONNECTIONS) % OWNERS

    polls = 0

    async def poll(conn: asyncpg.Connection) -> None:
        # The service's look for expired leases (none expire here), as often as it looks.
        nonlocal polls
        while time.monotonic() < stop_at:
            async with conn.transaction():
                assert await conn.fetchrow(_FIND) is None
            polls += 1
            await asyncio.sleep(POLL_INTERVAL)

    service = await asyncpg.connect(dsn)
    try:
        started = time.monotonic()
        await asyncio.gather(poll(service), *(renew(c, i) for i, c in enumerate(conns)))
        assert polls > 0
        return done / (time.monotonic() - started)
    finally:
        for conn in [*conns, service]:
            await conn.close()


async def _machine_death(dsn: str, orders: int, folder: Path) -> dict[str, float]:
    from asyncstop.testing import FakeExchange, wait_until, watchdog_service  # noqa: PLC0415

    async with (
        FakeExchange(tokens={_TOKEN}, seed=7, keep_journal=True) as exchange,
        watchdog_service(
            dsn,
            exchange.base_url,
            token=_TOKEN,
            folder=folder,
            account_id=_ACCOUNT,
            name="bench-service",
            poll_interval=POLL_INTERVAL,
            ready_timeout=60,
        ),
    ):
        ids = exchange.add_stop_orders(orders, account_id=_ACCOUNT)
        bot = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop._cli.offhost_bot",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            import msgspec  # noqa: PLC0415

            from asyncstop._cli.offhost_bot import (  # noqa: PLC0415
                OffHostBotConfig,
                OwnerOrders,
            )

            config = OffHostBotConfig(
                dsn=dsn,
                ttl=DEATH_TTL,
                owners=[OwnerOrders(owner="bench-bot", orders=[(_ACCOUNT, i, False) for i in ids])],
            )
            assert bot.stdin is not None
            assert bot.stdout is not None
            bot.stdin.write(msgspec.json.encode(config) + b"\n")
            await bot.stdin.drain()
            async with asyncio.timeout(120):
                while b'"ready"' not in await bot.stdout.readline():
                    pass
            killed_at = time.monotonic()
            os.killpg(bot.pid, signal.SIGKILL)
            await bot.wait()
            await wait_until(lambda: not exchange.open_stop_orders(_ACCOUNT), 120)
            deletes = exchange.requests("DELETE")
            first = min(e.time for e in deletes)
            last = max(e.done_time for e in deletes if e.applied)
            return {"first": first - killed_at, "last": last - killed_at}
        finally:
            if bot.returncode is None:
                os.killpg(bot.pid, signal.SIGKILL)
                await bot.wait()


def run(settings: Settings) -> list[Figure]:
    """Run scenario 7 and return its figures (ScenarioSkipped without PostgreSQL)."""
    reason = unavailable_reason()
    if reason is None:
        try:
            import asyncpg  # noqa: F401, PLC0415
        except ImportError:
            reason = "asyncpg is not installed (pip install -e '.[postgres]')"
    if reason is not None:
        raise ScenarioSkipped(reason)
    figures = FigureSet(SCENARIO)
    adds = QUICK_ADDS if settings.quick else ADDS
    orders = QUICK_DEATH_ORDERS if settings.quick else DEATH_ORDERS
    seconds = QUICK_RENEW_SECONDS if settings.quick else RENEW_SECONDS
    with TemporaryPostgres(durable=True) as server:
        for number in range(settings.runs):
            dsn = server.create_database(f"bench_{os.getpid()}_{number}")
            took = run_in_loop(None, functools.partial(_add_latency, dsn, adds))
            figures.add("add() under a lease", "p50", "ms", _percentile(took, 0.50) * _MS)
            figures.add("add() under a lease", "p99", "ms", _percentile(took, 0.99) * _MS)
            rate = run_in_loop(None, functools.partial(_renewals, dsn, seconds))
            figures.add(f"{OWNERS:,} owners' renewals", "renewals per second", "/s", rate)
            figures.add(
                f"{OWNERS:,} owners' renewals",
                "bots kept alive at ttl 10 s",
                "bots",
                rate * 10.0 / 3,
            )
            with tempfile.TemporaryDirectory(prefix="asyncstop-bench7-") as folder:
                death: dict[str, Any] = run_in_loop(
                    None, functools.partial(_machine_death, dsn, orders, Path(folder))
                )
            case = f"machine death, {orders:,} stops, ttl {DEATH_TTL:g} s"
            figures.add(case, "kill -> first DELETE", "s", death["first"])
            figures.add(case, "kill -> last cancel", "s", death["last"])
    floor = 2 / 3 * DEATH_TTL
    bound = DEATH_TTL + 3.0
    first = figures.get(case, "kill -> first DELETE")
    last = figures.get(case, "kill -> last cancel")
    if first is not None:
        first.check(f">= {floor:g} (2/3 ttl)", lambda v: v >= floor)
    if last is not None:
        last.check(f"<= {bound:g} (ttl + 3 s)", lambda v: v <= bound, on_max=True)
    return figures.as_list()
