"""The local Watchdog over a PostgresRegistry: a dead bot's stops cancelled, one watchdog per owner.

Real bot and watchdog processes against the fake exchange in this process and
the temporary PostgreSQL of ``tests/postgres.py``; judged by the exchange's
live stops and the rows left in the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from asyncstop import LeaseLostError, PostgresRegistry, Watchdog, WatchdogError
from asyncstop._postgres._tempserver import TemporaryPostgres
from asyncstop.testing import FakeExchange, wait_until

from .helpers import (
    ACCOUNT,
    WAIT_LIMIT,
    WatchdogBot,
    kill_bot,
    start_bot,
    watchdog_settings,
)

#: A bot: connects a PostgresRegistry, takes a lease, arms a Watchdog over it,
#: registers ``add`` ([order_id, protective] pairs), prints a ready line and waits to be killed.
PG_WATCHDOG_BOT = """
import asyncio, json, sys
import asyncstop

async def main():
    cfg = json.loads(sys.stdin.readline())
    registry = await asyncstop.PostgresRegistry.connect(cfg["dsn"], owner=cfg["owner"])
    async with registry, registry.lease(ttl=60.0):
        async with asyncstop.Watchdog(registry, **cfg["watchdog"]) as watchdog:
            for order_id, protective in cfg["add"]:
                await registry.add(order_id, protective=protective)
            print(json.dumps({"watchdog": watchdog.pid}), flush=True)
            await asyncio.Event().wait()

asyncio.run(main())
"""


async def _start_bot(
    dsn: str, owner: str, watchdog: dict[str, Any], add: list[tuple[str, bool]]
) -> WatchdogBot:
    settings = {"dsn": dsn, "owner": owner, "watchdog": watchdog, "add": add}
    bot = await start_bot(PG_WATCHDOG_BOT, settings)
    assert "error" not in bot.ready, bot.ready
    return bot


def _stall_epoch(server: TemporaryPostgres, dsn: str) -> int:
    """Owner bot-stall's epoch, read with psql (a synchronous call, for a stalled loop)."""
    out = subprocess.run(
        [
            str(server.bindir / "psql"),
            "-X",
            "-qtA",
            "-d",
            dsn,
            "-c",
            "SELECT epoch FROM asyncstop_owners WHERE owner = 'bot-stall'",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return int(out.stdout.strip() or 0)


@pytest.mark.timeout(120)
async def test_sigkill_of_a_bot_cancels_its_stops_in_postgres_but_the_protective_ones(
    exchange: FakeExchange, postgres_dsn: str
) -> None:
    """Bot SIGKILLed: its watchdog cancels every non-protective stop and drops it from the table."""
    ids = exchange.add_stop_orders(30, account_id=ACCOUNT)
    protective = set(ids[:3])
    bot = await _start_bot(
        postgres_dsn,
        "bot-eu-1",
        watchdog_settings(exchange),
        [(order_id, order_id in protective) for order_id in ids],
    )
    try:
        # The DSN went over the pipe: not on the watchdog's command line or in its environment.
        proc = Path(f"/proc/{bot.watchdog_pid}")
        assert postgres_dsn.encode() not in (proc / "cmdline").read_bytes()
        assert postgres_dsn.encode() not in (proc / "environ").read_bytes()
        await kill_bot(bot)
    finally:
        if bot.process.returncode is None:
            bot.process.kill()
        await bot.process.wait()
    assert exchange.open_stop_orders() == protective
    deleted = {e.order_id for e in exchange.requests("DELETE") if e.applied}
    assert deleted == set(ids) - protective
    async with await PostgresRegistry.connect(postgres_dsn, owner="bot-eu-1") as registry:
        assert set(await registry.snapshot()) == protective
        # The bot, back, learns from its new lease what its watchdog did while it was gone.
        async with registry.lease(ttl=5.0) as lease:
            (fire,) = lease.fires
    assert fire["owner"] == "bot-eu-1"
    assert str(fire["service"]).startswith("watchdog ")
    assert fire["counts"]["cancelled"] == 27
    assert fire["ok"] is True
    assert sorted(order for _, order in fire["protective_left"]) == sorted(protective)


async def _arm_when_free(watchdog: Watchdog) -> None:
    """Arm once the server has ended the dead holder's session (it notices within moments)."""
    while True:
        try:
            await watchdog.start()
        except WatchdogError as err:
            if err.kind != "RegistryLocked":
                raise
        else:
            return
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_a_second_watchdog_on_the_same_owner_is_refused_until_the_first_dies(
    exchange: FakeExchange, postgres_dsn: str
) -> None:
    """A second watchdog of one owner is refused naming the first; another owner is not."""
    async with (
        await PostgresRegistry.connect(postgres_dsn, owner="bot-a") as first_handle,
        await PostgresRegistry.connect(postgres_dsn, owner="bot-a") as second,
        await PostgresRegistry.connect(postgres_dsn, owner="bot-b") as other,
    ):
        first = Watchdog(first_handle, **watchdog_settings(exchange))
        async with first:
            assert first.report_path is None
            with pytest.raises(WatchdogError) as refused:
                async with Watchdog(second, **watchdog_settings(exchange)):
                    pytest.fail("the block must not run")
            assert refused.value.kind == "RegistryLocked"
            message = str(refused.value)
            assert f"watchdog pid {first.pid} of bot pid {os.getpid()}" in message
            assert "owner 'bot-a'" in message
            assert "postgres@" not in message
            async with Watchdog(other, **watchdog_settings(exchange)) as beside:
                assert beside.alive
            assert first.alive
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)  # the server releases its lock with its session
            await wait_until(lambda: not first.alive, timeout=WAIT_LIMIT)
            third = Watchdog(second, **watchdog_settings(exchange))
            async with asyncio.timeout(WAIT_LIMIT):
                await _arm_when_free(third)
            assert third.alive
            await third.close()


async def _advisory_locks(dsn: str) -> int:
    import asyncpg

    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError):
        return 0  # not back yet
    try:
        count = await conn.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
        )
    finally:
        await conn.close()
    return int(count)


@pytest.mark.timeout(120)
async def test_a_watchdog_takes_its_lock_again_after_the_database_restarts(
    exchange: FakeExchange,
) -> None:
    """A restart drops the owner's lock: the watchdog takes it again, and a second is refused."""
    server = TemporaryPostgres()
    try:
        await asyncio.to_thread(server.start)
        dsn = server.dsn()
        async with (
            await PostgresRegistry.connect(dsn, owner="bot-r") as first_handle,
            await PostgresRegistry.connect(dsn, owner="bot-r") as second,
            Watchdog(first_handle, **watchdog_settings(exchange)) as first,
        ):
            assert await _advisory_locks(dsn) == 1
            await asyncio.to_thread(server.stop, "fast")  # ends every session, and its locks
            await asyncio.to_thread(server.start)
            await wait_until(lambda: _advisory_locks(dsn), timeout=30)
            with pytest.raises(WatchdogError) as refused:
                async with Watchdog(second, **watchdog_settings(exchange)):
                    pytest.fail("the block must not run")
            assert refused.value.kind == "RegistryLocked"
            assert f"watchdog pid {first.pid} of bot pid {os.getpid()}" in str(refused.value)
            assert first.alive
    finally:
        await asyncio.to_thread(server.close)


@pytest.mark.timeout(90)
async def test_a_stalled_bot_is_fenced_by_the_epoch_and_told(
    exchange: FakeExchange, postgres_dsn: str, postgres_server: TemporaryPostgres
) -> None:
    """A stall past heartbeat_timeout fires it: the lease is refused in the database, add() too."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    later = exchange.add_stop_orders(1, account_id=ACCOUNT)[0]
    registry = await PostgresRegistry.connect(postgres_dsn, owner="bot-stall")
    async with (
        registry,
        registry.lease(ttl=60.0) as lease,
        Watchdog(registry, **watchdog_settings(exchange)) as watchdog,
    ):
        for order_id in ids:
            await registry.add(order_id)
        before = lease.epoch
        # Block the loop (no heartbeat) until the watchdog has raised the epoch.
        stalled = time.monotonic()
        while _stall_epoch(postgres_server, postgres_dsn) == before:
            assert time.monotonic() - stalled < 30, "the watchdog never fenced"
            time.sleep(0.1)  # noqa: ASYNC251 - the stall under test
        with pytest.raises((LeaseLostError, WatchdogError)):
            await registry.add(later)  # refused by the database or by the bot's side
        fired = await asyncio.wait_for(watchdog.wait_fired(), WAIT_LIMIT)
        assert fired.reason == "heartbeat_timeout"
        with pytest.raises(WatchdogError, match="restart"):
            await registry.add(later)
        await wait_until(lambda: exchange.open_stop_orders() == {later}, timeout=WAIT_LIMIT)
        await wait_until(lambda: lease.lost, timeout=WAIT_LIMIT)

        async def registry_emptied() -> bool:
            return await registry.snapshot() == []

        await wait_until(registry_emptied, timeout=WAIT_LIMIT)  # settled rows are deleted
        await watchdog.restart()
        assert watchdog.alive
        assert watchdog.fired is None
        with pytest.raises(LeaseLostError):  # the lost lease is still refused: take a new one
            await registry.add(later)


async def test_fire_cancels_from_the_watchdog_and_the_settled_rows_leave(
    exchange: FakeExchange, postgres_dsn: str
) -> None:
    """watchdog.fire() over a PostgresRegistry: leftovers named, stops cancelled and forgotten."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    async with await PostgresRegistry.connect(postgres_dsn, owner="bot-fire") as earlier:
        await earlier.add(ids[-1])  # left by an earlier session
    async with (
        await PostgresRegistry.connect(postgres_dsn, owner="bot-fire") as registry,
        Watchdog(registry, **watchdog_settings(exchange)) as watchdog,
    ):
        assert watchdog.leftovers == ((ACCOUNT, ids[-1]),)
        for order_id in ids[:-1]:
            await registry.add(order_id, protective=order_id == ids[0])
        report = await watchdog.fire(include_protective=False)
        assert sorted(r.order_id for r in report.results) == sorted(ids[1:])
        assert exchange.open_stop_orders() == {ids[0]}
        assert await registry.snapshot() == [ids[0]]
        report = await watchdog.fire()
        assert [(r.order_id, r.protective) for r in report.results] == [(ids[0], True)]
        assert not exchange.open_stop_orders()
