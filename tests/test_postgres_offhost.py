"""The off-host service against real processes, a temporary PostgreSQL and the fake exchange.

Each test proves one acceptance point of the off-host issue, judged by the
fake exchange's journal and its own count of live stops. The journal's times
and ``time.monotonic()`` here are the same system-wide monotonic clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import asyncstop
from asyncstop.testing import FakeExchange, wait_until

from .helpers import ACCOUNT
from .postgres import FreezableProxy, bot_process, owner_dsn_via, service_process

TTL = 3.0
#: Seconds after the ttl within which every stop must be cancelled (the issue's bound).
CANCEL_SLACK = 3.0


def _deletes(exchange: FakeExchange, ids: set[str]) -> list[float]:
    return sorted(e.time for e in exchange.requests("DELETE") if e.order_id in ids)


async def _fires(dsn: str) -> list[dict[str, Any]]:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch("SELECT record FROM asyncstop_fires WHERE record IS NOT NULL")
    finally:
        await conn.close()
    return [json.loads(row["record"]) for row in rows]


async def _wait_for_fires(dsn: str, count: int) -> None:
    for _ in range(200):
        if len(await _fires(dsn)) >= count:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"fewer than {count} fires recorded after 20 s")


@pytest.mark.timeout(120)
async def test_a_sigkilled_bot_has_every_stop_cancelled_after_two_thirds_and_within_ttl_plus_3(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """The bot's group SIGKILLed: stops cancelled by kill + ttl + 3 s, none before 2/3 ttl."""
    ids = exchange.add_stop_orders(50, account_id=ACCOUNT)
    protective = set(ids[:5])
    orders = [(ACCOUNT, order_id, order_id in protective) for order_id in ids]
    async with (
        service_process(postgres_dsn, exchange, tmp_path),
        bot_process(postgres_dsn, {"bot-1": orders}, ttl=TTL, log=tmp_path / "bot.log") as bot,
    ):
        # Kill right after a renewal, as a machine dies at any moment after one.
        renewed = len(bot.named("renewed"))
        await wait_until(lambda: len(bot.named("renewed")) > renewed, 30)
        os.killpg(bot.process.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        await bot.process.wait()
        cancelled = set(ids) - protective
        await wait_until(lambda: not (exchange.open_stop_orders(ACCOUNT) & cancelled), 30)
        deletes = _deletes(exchange, set(ids))
        assert deletes[0] >= killed_at + 2 / 3 * TTL
        assert deletes[-1] <= killed_at + TTL + CANCEL_SLACK
        # Protective stops guard positions: left live, and said so in the record.
        assert exchange.open_stop_orders(ACCOUNT) == protective
        await _wait_for_fires(postgres_dsn, 1)
    (record,) = await _fires(postgres_dsn)
    assert record["owner"] == "bot-1"
    assert record["counts"]["cancelled"] == 45
    assert len(record["protective_left"]) == 5
    log = (tmp_path / "svc.log").read_text()
    assert "fired for owner 'bot-1' (epoch 1): 45 cancelled" in log
    # A bot that comes back learns what was done while it was gone.
    async with (
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as registry,
        registry.lease(ttl=TTL) as lease,
    ):
        assert [fire["counts"]["cancelled"] for fire in lease.fires] == [45]
        assert sorted(await registry.snapshot()) == sorted((ACCOUNT, i) for i in protective)


@pytest.mark.timeout(120)
async def test_a_partitioned_bot_knows_it_lost_the_lease_before_the_first_delete(
    postgres_server: object, postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """A frozen TCP path to the database: lost before the first DELETE, then LeaseLostError."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    protective = set(ids[:3])
    port = int(postgres_dsn.rpartition(":")[2].partition("/")[0])
    async with (
        FreezableProxy("127.0.0.1", port) as proxy,
        service_process(postgres_dsn, exchange, tmp_path),
    ):
        registry = await asyncstop.PostgresRegistry.connect(
            owner_dsn_via(postgres_dsn, proxy.port), owner="bot-1", command_timeout=2.0
        )
        async with registry:
            lease_cm = registry.lease(ttl=TTL)
            lease = await lease_cm.__aenter__()
            try:
                for order_id in ids:
                    await registry.add(order_id, ACCOUNT, protective=order_id in protective)
                proxy.freeze()
                await lease.wait_lost()
                lost_at = time.monotonic()
                cancelled = set(ids) - protective
                await wait_until(lambda: not (exchange.open_stop_orders(ACCOUNT) & cancelled), 30)
                assert lost_at < _deletes(exchange, set(ids))[0]
                with pytest.raises(asyncstop.LeaseLostError):
                    await registry.add("late-1", ACCOUNT)
                assert exchange.open_stop_orders(ACCOUNT) == protective
                # Healed, the database fences the old epoch too: the service raised it.
                proxy.thaw()
                import asyncpg

                conn = await asyncpg.connect(postgres_dsn)
                try:
                    epoch = await conn.fetchval(
                        "SELECT epoch FROM asyncstop_owners WHERE owner = 'bot-1'"
                    )
                finally:
                    await conn.close()
                assert epoch > lease.epoch
            finally:
                await lease_cm.__aexit__(None, None, None)
            assert "late-1" not in await registry.snapshot()


@pytest.mark.timeout(120)
async def test_two_services_never_cancel_an_order_twice(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """Two services over one database: each dead owner's stops are cancelled by one of them."""
    owners: dict[str, list[tuple[str, str, bool]]] = {}
    for number in range(6):
        ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
        owners[f"bot-{number}"] = [(ACCOUNT, order_id, False) for order_id in ids]
    all_ids = {order_id for orders in owners.values() for _, order_id, _ in orders}
    async with (
        service_process(postgres_dsn, exchange, tmp_path, name="svc-a"),
        service_process(postgres_dsn, exchange, tmp_path, name="svc-b"),
        bot_process(postgres_dsn, owners, ttl=1.5, log=tmp_path / "bot.log") as bot,
    ):
        os.killpg(bot.process.pid, signal.SIGKILL)
        await bot.process.wait()
        await wait_until(lambda: not (exchange.open_stop_orders(ACCOUNT) & all_ids), 30)
        await _wait_for_fires(postgres_dsn, len(owners))
    per_order = Counter(e.order_id for e in exchange.requests("DELETE") if e.order_id in all_ids)
    assert set(per_order) == all_ids
    assert max(per_order.values()) == 1
    records = await _fires(postgres_dsn)
    assert sorted(r["owner"] for r in records) == sorted(owners)


@pytest.mark.timeout(120)
async def test_a_clean_release_fires_nothing(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """A bot that leaves its lease block normally: no DELETE, and its orders stay registered."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    async with service_process(postgres_dsn, exchange, tmp_path):
        async with bot_process(
            postgres_dsn,
            {"bot-1": [(ACCOUNT, i, False) for i in ids]},
            ttl=1.5,
            log=tmp_path / "bot.log",
        ) as bot:
            pass  # stdin closes: the bot leaves its block normally
        assert bot.process.returncode == 0
        # Three ttls: any expiry would have been claimed by now.
        await asyncio.sleep(3 * 1.5)
    assert exchange.requests("DELETE") == []
    assert exchange.open_stop_orders(ACCOUNT) == set(ids)
    async with await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as registry:
        assert len(await registry.snapshot()) == 10


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
async def test_a_service_stopped_mid_fire_is_taken_over_by_the_other(
    how: str, postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """SIGTERM hands the claim back at once, SIGKILL after --claim-ttl: the other finishes."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    orders = [(ACCOUNT, order_id, False) for order_id in ids]
    async with service_process(
        postgres_dsn, exchange, tmp_path, "--claim-ttl", "2", name="svc-a"
    ) as first:
        # The exchange refuses the token until A is gone: A fires round after round (401s).
        tokens = exchange.tokens
        exchange.tokens = set()
        async with bot_process(
            postgres_dsn, {"bot-1": orders}, ttl=1.5, log=tmp_path / "b.log"
        ) as bot:
            os.killpg(bot.process.pid, signal.SIGKILL)
            await bot.process.wait()
        await wait_until(lambda: len(exchange.requests("DELETE")) >= len(ids), 30)
        assert exchange.open_stop_orders(ACCOUNT) == set(ids)
        async with service_process(postgres_dsn, exchange, tmp_path, name="svc-b"):
            if how == "SIGTERM":
                first.terminate()
                assert await asyncio.wait_for(first.wait(), 15) == 0
            else:
                first.kill()
                await first.wait()
            exchange.tokens = tokens
            await wait_until(lambda: not exchange.open_stop_orders(ACCOUNT), 30)
            await _wait_for_fires(postgres_dsn, 1)
    (record,) = await _fires(postgres_dsn)
    assert record["service"] == "svc-b"
    assert record["counts"]["cancelled"] == len(ids)
    if how == "SIGTERM":
        assert "claim handed back" in (tmp_path / "svc-a.log").read_text()


@pytest.mark.timeout(120)
async def test_cancel_protective_cancels_the_protective_stops_too(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """With --cancel-protective the service cancels every stop, protective ones included."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    orders = [(ACCOUNT, order_id, True) for order_id in ids]
    async with (
        service_process(postgres_dsn, exchange, tmp_path, "--cancel-protective"),
        bot_process(postgres_dsn, {"bot-1": orders}, ttl=1.5, log=tmp_path / "bot.log") as bot,
    ):
        os.killpg(bot.process.pid, signal.SIGKILL)
        await bot.process.wait()
        await wait_until(lambda: not exchange.open_stop_orders(ACCOUNT), 30)
        await _wait_for_fires(postgres_dsn, 1)
    (record,) = await _fires(postgres_dsn)
    assert record["counts"]["cancelled"] == len(ids)
    assert record["protective_left"] == []
