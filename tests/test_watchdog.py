"""The watchdog: a separate process that cancels a durable registry's stops when the bot dies.

Every test runs the real watchdog process (and, where the bot must die, a real
bot process) against a FakeExchange in this process. What happened is judged by
the exchange's journal and the watchdog's report, never by how long it took.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import asyncstop
from asyncstop import StopOrderRegistry, Watchdog, WatchdogError
from asyncstop.testing import FakeExchange, Faults, wait_until

from .helpers import (
    ACCOUNT,
    TOKEN,
    order_ids,
    process_exited,
    read_report,
    start_watchdog_bot,
    stop_watchdog_bot,
    watchdog_settings,
)
from .helpers import HEARTBEAT_INTERVAL as INTERVAL
from .helpers import HEARTBEAT_TIMEOUT as TIMEOUT

_log = logging.getLogger(__name__)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[StopOrderRegistry]:
    """An empty durable registry in a temporary directory."""
    with StopOrderRegistry.open(tmp_path / "stops.db") as opened:
        yield opened


def _watchdog(exchange: FakeExchange, registry: StopOrderRegistry, **overrides: Any) -> Watchdog:
    return Watchdog(registry, **watchdog_settings(exchange, **overrides))


def _proc_file(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


def _summary(report_path: Path) -> dict[str, Any]:
    """The report file's fired line with its last line's pending list and exit status."""
    lines = read_report(report_path)
    fired, last = lines[0], lines[-1]
    assert fired["event"] == "fired"
    assert last["event"] in ("done", "gave_up")
    return {**fired, "pending": len(last["pending"]), "exit_status": last["exit_status"]}


# -- a bot in its own process ------------------------------------------------------------------


@pytest.fixture
async def bot_process(
    exchange: FakeExchange, tmp_path: Path
) -> AsyncIterator[tuple[asyncio.subprocess.Process, int, list[str]]]:
    """A bot process with 200 registered stops and its armed watchdog: (bot, watchdog pid, ids)."""
    ids = exchange.add_stop_orders(200, account_id=ACCOUNT)
    bot = await start_watchdog_bot(
        tmp_path / "stops.db", watchdog_settings(exchange), [(i, False) for i in ids]
    )
    try:
        assert bot.watchdog_pid, bot.ready
        yield bot.process, bot.watchdog_pid, ids
    finally:
        if bot.process.returncode is None:
            bot.process.send_signal(signal.SIGCONT)  # a SIGSTOPped bot dies at once
        await stop_watchdog_bot(bot)


async def test_sigkill_of_the_bot_cancels_every_registered_stop(
    exchange: FakeExchange,
    bot_process: tuple[asyncio.subprocess.Process, int, list[str]],
    tmp_path: Path,
) -> None:
    """The bot is SIGKILLed: its watchdog cancels all 200 stops, empties the registry, reports."""
    bot, watchdog_pid, ids = bot_process
    killed_at = asyncio.get_running_loop().time()  # the journal's clock
    bot.kill()
    async with asyncio.timeout(30):
        await process_exited(watchdog_pid)
    assert not exchange.open_stop_orders()
    deletes = exchange.requests("DELETE")
    assert sorted(order_ids(deletes)) == sorted(ids)
    assert min(e.time for e in deletes) > killed_at  # nothing before the death
    with StopOrderRegistry.open(tmp_path / "stops.db") as reopened:
        assert len(reopened) == 0
    summary = _summary(tmp_path / "stops.db.watchdog.jsonl")
    assert (summary["reason"], summary["orders"], summary["pending"]) == ("bot_died", 200, 0)
    # Measured, not asserted (benchmarks/watchdog.py reports the figures); shown
    # with `pytest --log-cli-level=INFO`.
    _log.info(
        "kill -> first DELETE %.1f ms, -> last DELETE answered %.1f ms (%d orders)",
        (min(e.time for e in deletes) - killed_at) * 1e3,
        (max(e.done_time for e in deletes) - killed_at) * 1e3,
        len(deletes),
    )


async def test_a_stopped_bot_is_cancelled_after_the_heartbeat_timeout_and_not_before(
    exchange: FakeExchange,
    bot_process: tuple[asyncio.subprocess.Process, int, list[str]],
    tmp_path: Path,
) -> None:
    """SIGSTOP: no DELETE goes out until heartbeat_timeout after the last heartbeat sent."""
    bot, watchdog_pid, ids = bot_process
    await asyncio.sleep(5 * INTERVAL)  # several heartbeats went out
    assert not exchange.requests("DELETE")  # a live bot's watchdog does not fire
    stopped_at = asyncio.get_running_loop().time()
    bot.send_signal(signal.SIGSTOP)
    async with asyncio.timeout(30):
        await process_exited(watchdog_pid)
    summary = _summary(tmp_path / "stops.db.watchdog.jsonl")
    assert summary["reason"] == "heartbeat_timeout"
    assert summary["pending"] == 0
    last_heartbeat = summary["last_heartbeat_sent_monotonic"]
    assert last_heartbeat <= stopped_at
    first_delete = min(e.time for e in exchange.requests("DELETE"))
    assert first_delete >= last_heartbeat + TIMEOUT
    assert not exchange.open_stop_orders()
    assert sorted(order_ids(exchange.requests("DELETE"))) == sorted(ids)


# -- the bot in this process -------------------------------------------------------------------


async def test_a_clean_exit_sends_no_delete(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """Leaving the block normally disarms the watchdog: it exits 0 and cancels nothing."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    for order_id in ids:
        registry.add(order_id)
    async with _watchdog(exchange, registry) as watchdog:
        assert watchdog.alive
        await asyncio.sleep(3 * INTERVAL)
    assert not watchdog.alive
    assert watchdog.returncode == 0
    assert exchange.requests("DELETE") == []
    assert exchange.open_stop_orders() == set(ids)
    assert len(registry) == 20
    assert not watchdog.report_path.exists()


async def test_fire_cancels_from_the_watchdog_while_the_bot_loop_ticks(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """fire() returns the watchdog's report of every order; the bot's ticker runs meanwhile."""
    ids = exchange.add_stop_orders(1000, account_id=ACCOUNT)
    ids.append("01NOTLIVE")  # a 404: counted ok, and leaves the registry too
    for order_id in ids:
        registry.add(order_id)
    registry.add("ACC2-ORDER", account_id="acc-2")
    exchange.faults = Faults(latency=0.005)
    ticks: list[float] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.005)
            ticks.append(time.monotonic())

    async with _watchdog(exchange, registry) as watchdog:
        ticking = asyncio.create_task(ticker())
        started = time.monotonic()
        report = await watchdog.fire()
        ended = time.monotonic()
        ticking.cancel()
    assert report.ok
    assert len(report) == 1002
    assert {r.order_id for r in report.results} == {*ids, "ACC2-ORDER"}
    gone = next(r for r in report.results if r.order_id == "01NOTLIVE")
    assert isinstance(gone.error, asyncstop.OrderNotFoundError)
    assert gone.error.status_code == 404
    cancelled = next(r for r in report.results if r.order_id == ids[0])
    assert cancelled.order is not None
    assert cancelled.order.order_id == ids[0]
    assert not exchange.open_stop_orders()
    assert len(registry) == 0
    assert len([t for t in ticks if started < t < ended]) > 0
    assert watchdog.returncode == 0


async def test_leaving_with_an_error_fires_unless_told_not_to(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """An exception out of the block fires the watchdog; with fire_on_error=False it does not."""
    kept = exchange.add_stop_orders(5, account_id=ACCOUNT)
    for order_id in kept:
        registry.add(order_id)
    with pytest.raises(RuntimeError, match="bot bug"):
        async with _watchdog(exchange, registry, fire_on_error=False):
            raise RuntimeError("bot bug")
    assert exchange.requests("DELETE") == []
    with pytest.raises(RuntimeError, match="bot bug"):
        async with _watchdog(exchange, registry):
            raise RuntimeError("bot bug")
    assert not exchange.open_stop_orders()
    assert len(registry) == 0


async def test_the_token_is_not_on_the_command_line_or_in_the_environment(
    exchange: FakeExchange, registry: StopOrderRegistry, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The token travels over the pipe: /proc shows it in neither cmdline nor environ."""
    monkeypatch.setenv("BOT_B2TRADER_TOKEN", TOKEN)
    monkeypatch.setenv("BOT_HARMLESS_SETTING", "kept")
    async with _watchdog(exchange, registry) as watchdog:
        pid = watchdog.pid
        assert pid is not None
        cmdline = _proc_file(pid, "cmdline")
        environ = _proc_file(pid, "environ")
        assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C does not reach it
    assert TOKEN.encode() not in cmdline
    assert TOKEN.encode() not in environ
    assert b"BOT_HARMLESS_SETTING=kept" in environ
    assert b"BOT_B2TRADER_TOKEN" not in environ


async def test_a_killed_watchdog_is_noticed_and_can_be_restarted(
    exchange: FakeExchange, registry: StopOrderRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGKILL of the watchdog: an ERROR record, alive False, fire() refused; restart() works."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    for order_id in ids:
        registry.add(order_id)
    async with _watchdog(exchange, registry) as watchdog:
        first_pid = watchdog.pid
        assert first_pid is not None
        os.kill(first_pid, signal.SIGKILL)
        await wait_until(lambda: not watchdog.alive, timeout=30)
        gone = [r for r in caplog.records if r.levelno == logging.ERROR and "gone" in r.message]
        assert len(gone) == 1
        assert str(first_pid) in gone[0].message
        with pytest.raises(WatchdogError, match="not running"):
            await watchdog.fire()
        await watchdog.restart()
        assert watchdog.alive
        assert watchdog.pid != first_pid
        report = await watchdog.fire()
    assert report.ok
    assert len(report) == 10
    assert not exchange.open_stop_orders()


async def test_a_watchdog_that_cannot_reach_the_exchange_does_not_start(
    registry: StopOrderRegistry,
) -> None:
    """Warm-up fails against a closed port: entering raises WatchdogError naming the cause."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    watchdog = Watchdog(registry, base_url=f"http://127.0.0.1:{port}", token=TOKEN, account_id="a")
    with pytest.raises(WatchdogError, match="could not start") as caught:
        async with watchdog:
            pytest.fail("the block must not run")
    assert caught.value.kind == "APIConnectionError"
    assert not watchdog.alive
    assert watchdog.returncode == 2


def _jwt(expires_in: float, serial: int) -> str:
    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).decode().rstrip("=")

    claims = {"exp": time.time() + expires_in, "jti": serial}
    return f"{part({'alg': 'none'})}.{part(claims)}.sig"


async def test_the_bot_refreshes_the_token_ahead_of_its_expiry_and_passes_it_on(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """With a provider, a fresh token reaches the watchdog before the old one expires."""
    exchange.tokens.clear()
    issued: list[str] = []
    refreshed = asyncio.Event()

    async def provider() -> str:
        token = _jwt(expires_in=6.0, serial=len(issued))
        exchange.tokens.clear()  # the exchange accepts only the latest token
        exchange.tokens.add(token)
        issued.append(token)
        if len(issued) == 2:
            refreshed.set()
        return token

    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    for order_id in ids:
        registry.add(order_id)
    # 1 s heartbeat timeout + 2 s deadline: a 6 s token is refreshed well before it expires.
    async with _watchdog(exchange, registry, token=provider, deadline=2.0) as watchdog:
        async with asyncio.timeout(30):
            await refreshed.wait()
        report = await watchdog.fire()  # after the Token message on the same pipe
        pid = watchdog.pid
        assert pid is not None
        environ = _proc_file(pid, "environ")
    assert report.ok
    assert not exchange.open_stop_orders()
    assert all(e.authorized for e in exchange.requests("DELETE") if e.status != 401)
    assert not any(token.encode() in environ for token in issued)


def test_settings_are_checked_when_the_watchdog_is_built(registry: StopOrderRegistry) -> None:
    """An in-memory registry or a timeout shorter than the interval is refused at once."""
    with pytest.raises(asyncstop.InvalidInputError, match="durable"):
        Watchdog(StopOrderRegistry(), base_url="http://127.0.0.1:1", token=TOKEN)
    with pytest.raises(asyncstop.InvalidInputError, match="heartbeat_timeout"):
        Watchdog(
            registry,
            base_url="http://127.0.0.1:1",
            token=TOKEN,
            heartbeat_interval=1.0,
            heartbeat_timeout=0.5,
        )
    with pytest.raises(asyncstop.InvalidInputError, match="concurrency"):
        Watchdog(registry, base_url="http://127.0.0.1:1", token=TOKEN, concurrency=0)


async def test_cancelling_the_bot_task_fires_the_watchdog(
    exchange: FakeExchange, registry: StopOrderRegistry
) -> None:
    """A cancelled block (as Ctrl-C under asyncio.run does) fires before the watchdog exits."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    for order_id in ids:
        registry.add(order_id)
    inside = asyncio.Event()

    async def bot() -> None:
        async with _watchdog(exchange, registry):
            inside.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(bot())
    async with asyncio.timeout(30):
        await inside.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not exchange.open_stop_orders()
    assert len(registry) == 0


async def test_the_watchdog_outlives_a_sigterm_sent_to_it_and_the_bot(
    exchange: FakeExchange,
    bot_process: tuple[asyncio.subprocess.Process, int, list[str]],
    tmp_path: Path,
) -> None:
    """SIGTERM to the watchdog (a service manager stopping the unit), then the bot dies: fired."""
    bot, watchdog_pid, ids = bot_process
    os.kill(watchdog_pid, signal.SIGTERM)
    bot.kill()
    async with asyncio.timeout(30):
        await process_exited(watchdog_pid)
    assert sorted(order_ids(exchange.requests("DELETE"))) == sorted(ids)
    assert not exchange.open_stop_orders()
    assert _summary(tmp_path / "stops.db.watchdog.jsonl")["reason"] == "bot_died"


async def test_a_failing_token_provider_is_reported_ahead_of_the_expiry(
    exchange: FakeExchange, registry: StopOrderRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    """When the provider cannot refresh, a WARNING says how long the watchdog's token lasts."""
    first = _jwt(expires_in=6.0, serial=0)
    exchange.tokens.add(first)
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls > 1:
            raise ConnectionError("identity service down")
        return first

    caplog.set_level(logging.WARNING, logger="asyncstop")
    async with _watchdog(exchange, registry, token=provider, deadline=2.0) as watchdog:
        await wait_until(
            lambda: any("token provider raised" in r.message for r in caplog.records), timeout=30
        )
        assert watchdog.alive
    warning = next(r for r in caplog.records if "token provider raised" in r.message)
    assert warning.levelno == logging.WARNING
    assert "ConnectionError" in warning.message
    assert "expires in" in warning.message
    assert "identity service down" not in caplog.text  # a provider's message may hold secrets
    assert first not in caplog.text
