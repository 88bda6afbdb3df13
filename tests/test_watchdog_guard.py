"""What guards the watchdog's promise: protective stops, one watchdog per registry, a resumed
bot that is told, PID 1, the report file, and registry files from 0.2.

Real watchdog processes (and bot processes where the bot must die) against the
fake exchange in this process, judged by its live stops and the registry file.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import asyncstop
from asyncstop import KillSwitch, StopOrderRegistry, Watchdog, WatchdogError
from asyncstop._registry import fence_reason
from asyncstop._watchdog._reportfile import ReportFile
from asyncstop.testing import FakeExchange, Faults, wait_until

from .helpers import (
    ACCOUNT,
    TOKEN,
    WAIT_LIMIT,
    ClientFactory,
    kill_bot,
    process_exited,
    read_report,
    start_watchdog_bot,
    stop_watchdog_bot,
    watchdog_settings,
)

REPO = Path(__file__).resolve().parent.parent


def _stall_until_fenced(registry: StopOrderRegistry) -> None:
    """Block the event loop (a long synchronous call) until the watchdog has fenced the file."""
    stalled = time.monotonic()
    while fence_reason(registry) is None and time.monotonic() - stalled < 30:
        time.sleep(0.05)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[StopOrderRegistry]:
    """An empty durable registry in a temporary directory."""
    with StopOrderRegistry.open(tmp_path / "stops.db") as opened:
        yield opened


# -- protective stops ---------------------------------------------------------------------------


async def test_protective_stops_stay_live_on_the_bots_death(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """SIGKILL: the 7 entry stops are cancelled, the 3 protective ones stay live and registered."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    protective = set(ids[:3])
    registry = tmp_path / "stops.db"
    bot = await start_watchdog_bot(
        registry, watchdog_settings(exchange), [(i, i in protective) for i in ids]
    )
    try:
        await kill_bot(bot)
    finally:
        await stop_watchdog_bot(bot)
    assert exchange.open_stop_orders() == protective
    assert {e.order_id for e in exchange.requests("DELETE")} == set(ids) - protective
    with StopOrderRegistry.open(registry) as reopened:
        assert set(reopened.snapshot()) == protective
        assert set(reopened.snapshot(protective=True)) == protective
    lines = read_report(Path(f"{registry}.watchdog.jsonl"))
    assert lines[0]["protective_left"] == 3
    assert {order for _, order in lines[-1]["protective_left"]} == protective
    assert lines[-1]["exit_status"] == 0


async def test_cancel_protective_on_death_cancels_them_too(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """cancel_protective_on_death=True: the bot's death cancels every stop, protective included."""
    ids = exchange.add_stop_orders(6, account_id=ACCOUNT)
    bot = await start_watchdog_bot(
        tmp_path / "stops.db",
        watchdog_settings(exchange, cancel_protective_on_death=True),
        [(i, True) for i in ids],
    )
    try:
        await kill_bot(bot)
    finally:
        await stop_watchdog_bot(bot)
    assert not exchange.open_stop_orders()


async def test_fire_cancels_protective_stops_unless_told_not_to(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """fire(include_protective=False) leaves the stop-losses; fire() cancels them, marked so."""
    ids = exchange.add_stop_orders(6, account_id=ACCOUNT)
    for index, order_id in enumerate(ids):
        registry.add(order_id, protective=index % 2 == 0)
    async with Watchdog(registry, **watchdog_settings(exchange)) as watchdog:
        kept = await watchdog.fire(include_protective=False)
        assert {r.order_id for r in kept.results} == set(ids[1::2])
        assert exchange.open_stop_orders() == set(ids[::2])
        everything = await watchdog.fire()
    assert {r.order_id for r in everything.results} == set(ids[::2])
    assert all(r.protective for r in everything.results)
    assert not any(r.protective for r in kept.results)
    assert not exchange.open_stop_orders()
    assert len(registry) == 0


async def test_kill_switch_and_kill_registry_take_include_protective(
    exchange: FakeExchange, make_client: ClientFactory, tmp_path: Path
) -> None:
    """KillSwitch.trigger(include_protective=False), `kill --keep-protective`: stop-losses kept."""
    ids = exchange.add_stop_orders(8, account_id=ACCOUNT)
    memory = StopOrderRegistry()
    for order_id in ids[:4]:
        memory.add(order_id, protective=order_id == ids[0])
    async with KillSwitch(await make_client(), memory) as switch:
        report = await switch.trigger(include_protective=False)
        assert len(report) == 3
        assert memory.snapshot() == [ids[0]]
        everything = await switch.trigger()
    assert [(r.order_id, r.protective) for r in everything.results] == [(ids[0], True)]
    path = tmp_path / "stops.db"
    with StopOrderRegistry.open(path) as durable:
        for order_id in ids[4:]:
            durable.add(order_id, protective=order_id == ids[4])
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTOP_")},
        "PYTHONPATH": str(REPO),
        "ASYNCSTOP_BASE_URL": exchange.base_url,
        "ASYNCSTOP_TOKEN": TOKEN,
        "ASYNCSTOP_ACCOUNT_ID": ACCOUNT,
    }
    cli = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "asyncstop",
        "kill",
        "--registry",
        str(path),
        "--keep-protective",
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _, stderr = await cli.communicate()
    assert cli.returncode == 0, stderr
    assert exchange.open_stop_orders() == {ids[4]}
    with StopOrderRegistry.open(path) as reopened:
        assert reopened.snapshot() == [ids[4]]


def test_an_0_2_registry_file_gains_the_protective_column_without_losing_rows(
    tmp_path: Path,
) -> None:
    """A schema-1 file (asyncstop 0.2) opens: its rows are kept, not protective, and writable."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(
            "CREATE TABLE stop_orders (seq INTEGER PRIMARY KEY, account_id TEXT NOT NULL, "
            "order_id TEXT NOT NULL, UNIQUE (account_id, order_id))"
        )
        conn.executemany(
            "INSERT INTO stop_orders (account_id, order_id) VALUES (?, ?)",
            [("", "01OLD1"), ("acc-2", "01OLD2")],
        )
        conn.execute("PRAGMA user_version=1")
    conn.close()
    with StopOrderRegistry.open(path) as registry:
        assert registry.stops() == [(None, "01OLD1", False), ("acc-2", "01OLD2", False)]
        registry.add("01NEW", protective=True)
        assert registry.snapshot(protective=True) == ["01NEW"]
    with StopOrderRegistry.open(path) as again:
        assert len(again) == 3


# -- one watchdog per registry ------------------------------------------------------------------


async def test_a_second_watchdog_on_the_same_registry_file_is_refused(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """A second is refused, naming the live watchdog's and its bot's pids; a killed one frees it."""
    path = tmp_path / "stops.db"
    with StopOrderRegistry.open(path) as first_handle, StopOrderRegistry.open(path) as second:
        first = Watchdog(first_handle, **watchdog_settings(exchange))
        async with first:
            with pytest.raises(WatchdogError) as refused:
                async with Watchdog(second, **watchdog_settings(exchange)):
                    pytest.fail("the block must not run")
            message = str(refused.value)
            assert f"watchdog pid {first.pid}" in message
            assert f"bot pid {os.getpid()}" in message
            assert first.alive
            first_pid = first.pid
            assert first_pid is not None
            os.kill(first_pid, signal.SIGKILL)  # the kernel releases its lock
            await wait_until(lambda: not first.alive, timeout=WAIT_LIMIT)
            async with Watchdog(second, **watchdog_settings(exchange)) as third:
                assert third.alive


# -- a bot that comes back from a freeze ----------------------------------------------------------


async def test_a_frozen_then_resumed_bot_is_told_and_its_adds_refused_until_restart(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """A blocking stall past heartbeat_timeout fires it: fired, add() refused; restart() re-arms."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    later = exchange.add_stop_orders(1, account_id=ACCOUNT)[0]
    async with Watchdog(registry, **watchdog_settings(exchange)) as watchdog:
        for order_id in ids:
            registry.add(order_id)
        _stall_until_fenced(registry)
        with pytest.raises(WatchdogError, match="restart"):
            registry.add(later)
        fired = await asyncio.wait_for(watchdog.wait_fired(), WAIT_LIMIT)
        assert fired.reason == "heartbeat_timeout"
        assert fired.at.tzinfo is dt.UTC
        assert watchdog.fired == fired
        assert not watchdog.alive
        with pytest.raises(WatchdogError, match="fired by itself"):
            await watchdog.fire()
        await wait_until(lambda: exchange.open_stop_orders() == {later}, timeout=WAIT_LIMIT)
        await watchdog.restart()
        assert watchdog.alive
        assert watchdog.fired is None
        registry.add(later)
        report = await watchdog.fire()
    assert [r.order_id for r in report.results] == [later]
    assert not exchange.open_stop_orders()


# -- PID 1 ----------------------------------------------------------------------------------------


def _unshare_works() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = subprocess.run(
        [unshare, "--pid", "--fork", sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    return probe.returncode == 0 and probe.stdout.strip() == "1"


@pytest.mark.skipif(
    not sys.platform.startswith("linux") or not _unshare_works(),
    reason="needs `unshare --pid --fork` (Linux, root or user namespaces)",
)
async def test_a_bot_that_is_pid_1_of_its_namespace_is_refused(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """A bot as PID 1 (a container without --init): Watchdog refuses to arm, naming the fixes."""
    unshare = shutil.which("unshare")
    assert unshare is not None
    bot = await start_watchdog_bot(
        tmp_path / "stops.db", watchdog_settings(exchange), argv_prefix=(unshare, "--pid", "--fork")
    )
    try:
        error = bot.ready.get("error", "")
        assert "PID 1" in error
        assert "--init" in error
        assert "tini" in error
        assert "asyncstop watchdog --store" in error
    finally:
        await stop_watchdog_bot(bot)


# -- the report file ------------------------------------------------------------------------------


def test_the_report_file_has_utc_times_and_rotates_once(tmp_path: Path) -> None:
    """Each line has an ISO 8601 UTC time; past the bound the file moves to .1, once."""
    path = tmp_path / "stops.db.watchdog.jsonl"
    report = ReportFile(path, max_bytes=2000)
    for number in range(60):
        report.write("round", round=number, pending=[["acc-1", f"01ORDER{number:04d}"]])
    current = [json.loads(line) for line in path.read_text().splitlines()]
    older = [json.loads(line) for line in Path(f"{path}.1").read_text().splitlines()]
    assert path.stat().st_size <= 2000
    assert Path(f"{path}.1").stat().st_size <= 2000
    assert not Path(f"{path}.2").exists()
    assert current[-1]["round"] == 59
    assert older[-1]["round"] == current[0]["round"] - 1
    stamp = dt.datetime.fromisoformat(current[-1]["time"])
    assert stamp.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60


def test_watchdog_settings_are_checked_once_at_construction(registry: StopOrderRegistry) -> None:
    """Bad give_up_after or token_command are refused when the Watchdog is built."""
    url = "http://127.0.0.1:1"
    with pytest.raises(asyncstop.InvalidInputError, match="give_up_after"):
        Watchdog(registry, base_url=url, token=TOKEN, give_up_after=0)
    with pytest.raises(asyncstop.InvalidInputError, match="token command"):
        Watchdog(registry, base_url=url, token=TOKEN, token_command="vault read secret")
    watchdog = Watchdog(registry, base_url=url, token=TOKEN)
    assert watchdog.settings.heartbeat_timeout == 10.0
    assert watchdog.settings.give_up_after == 3600.0


async def test_restart_takes_over_from_a_watchdog_still_firing_in_an_outage(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """After a stall in an outage, restart() stops the firing one and arms a new one that works."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    async with Watchdog(registry, **watchdog_settings(exchange)) as watchdog:
        for order_id in ids:
            registry.add(order_id)
        exchange.faults = Faults(error_before=1.0)
        stalled = time.monotonic()
        while fence_reason(registry) is None and time.monotonic() - stalled < 30:
            time.sleep(0.05)  # noqa: ASYNC251 - the stall under test
        old_pid = watchdog.pid
        assert old_pid is not None
        await asyncio.wait_for(watchdog.wait_fired(), WAIT_LIMIT)
        await wait_until(lambda: exchange.requests("DELETE"), timeout=WAIT_LIMIT)
        assert watchdog.returncode is None  # still firing: the outage goes on
        await watchdog.restart()
        assert watchdog.pid != old_pid
        assert watchdog.alive
        exchange.faults = Faults()
        report = await watchdog.fire()
    assert report.ok
    assert not exchange.open_stop_orders()
    assert len(registry) == 0
    assert watchdog.report_path is not None  # a StopOrderRegistry's watchdog writes a report
    assert read_report(watchdog.report_path)[-1]["event"] == "taken_over"


async def test_a_bot_that_leaves_after_its_watchdog_fired_leaves_it_firing(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """Leaving the block after a fire does not stop the watchdog: it cancels all once it can."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    exchange.faults = Faults(error_before=1.0)
    try:
        async with Watchdog(registry, **watchdog_settings(exchange)) as watchdog:
            for order_id in ids:
                registry.add(order_id)
            _stall_until_fenced(registry)
            await asyncio.wait_for(watchdog.wait_fired(), WAIT_LIMIT)
            pid = watchdog.pid
            assert pid is not None
        assert watchdog.returncode is None  # still running after the bot left
        assert exchange.open_stop_orders() == set(ids)
    finally:
        exchange.faults = Faults()
    async with asyncio.timeout(60):
        await process_exited(pid)
    assert not exchange.open_stop_orders()
    assert len(registry) == 0
    await wait_until(lambda: watchdog.returncode == 0, timeout=WAIT_LIMIT)  # reaped, exit 0
