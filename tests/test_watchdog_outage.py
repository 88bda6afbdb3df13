"""A watchdog that does not give up: outages, refused tokens, give_up_after and leftovers.

A real bot process (``helpers.WATCHDOG_BOT``) arms a real watchdog process and
is SIGKILLed; the fake exchange in this process is switched into an outage and
back at runtime. Judged by the exchange's live stops, the registry file and
the watchdog's report file.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import asyncstop
from asyncstop import StopOrderRegistry
from asyncstop.testing import FakeExchange, Faults, wait_until

from .helpers import (
    ACCOUNT,
    TOKEN,
    WAIT_LIMIT,
    kill_bot,
    process_exited,
    read_report,
    start_watchdog_bot,
    stop_watchdog_bot,
    watchdog_settings,
)

_log = logging.getLogger(__name__)

#: Every DELETE answered 503: the exchange in trouble.
OUTAGE = Faults(error_before=1.0)


def _settings(exchange: FakeExchange, **overrides: Any) -> dict[str, Any]:
    return watchdog_settings(exchange, **{"deadline": 5.0, **overrides})


def _alive(pid: int) -> bool:
    return (
        Path(f"/proc/{pid}").exists()
        and b"zombie" not in Path(f"/proc/{pid}/status").read_bytes().lower()
    )


@pytest.mark.timeout(150)
async def test_a_20_s_outage_from_the_bots_sigkill_is_waited_out(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """Every DELETE 503 for 20 s from the kill: still trying throughout, all cancelled after."""
    ids = exchange.add_stop_orders(200, account_id=ACCOUNT)
    registry = tmp_path / "stops.db"
    bot = await start_watchdog_bot(
        registry, _settings(exchange, give_up_after=600.0), [(i, False) for i in ids]
    )
    loop = asyncio.get_running_loop()
    try:
        exchange.faults = OUTAGE
        killed_at = loop.time()
        bot.process.kill()
        await asyncio.sleep(20.0)
        still_trying = [e for e in exchange.requests("DELETE") if e.time > killed_at + 10.0]
        assert _alive(bot.watchdog_pid)
        assert exchange.open_stop_orders() == set(ids)
        # Taken before the switch: a round whose line was written earlier had
        # every answer within the outage.
        recovered_wall = dt.datetime.now(dt.UTC)
        exchange.faults = Faults()
        recovered_at = loop.time()
        async with asyncio.timeout(60):
            await process_exited(bot.watchdog_pid)
    finally:
        exchange.faults = Faults()
        await stop_watchdog_bot(bot)
    assert still_trying  # a round went out in the outage's second half
    assert not exchange.open_stop_orders()
    last_cancel = max(e.done_time for e in exchange.requests("DELETE") if e.applied)
    assert last_cancel - recovered_at < 45.0
    with StopOrderRegistry.open(registry) as reopened:
        assert len(reopened) == 0
    lines = read_report(Path(f"{registry}.watchdog.jsonl"))
    assert [line["event"] for line in (lines[0], lines[-1])] == ["fired", "done"]
    assert lines[-1]["exit_status"] == 0
    assert lines[-1]["pending"] == []
    rounds = [line for line in lines if line["event"] == "round"]
    # The rounds that ended within the outage left all 200 pending. (A round may
    # straddle its end: started in the outage, answered after it.)
    during = [r for r in rounds if dt.datetime.fromisoformat(r["time"]) < recovered_wall]
    assert len(during) >= 3
    assert all(r["pending_count"] == 200 for r in during)
    _log.info(
        "outage 20 s: %d rounds; recovery -> last cancel %.1f s",
        len(rounds),
        last_cancel - recovered_at,
    )


@pytest.mark.timeout(120)
async def test_give_up_after_keeps_the_orders_for_the_next_bot_whose_death_cancels_them(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """Outage past give_up_after: exit 1, orders kept; the next bot's leftovers, then cancelled."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    registry = tmp_path / "stops.db"
    first = await start_watchdog_bot(
        registry, _settings(exchange, give_up_after=2.0), [(i, False) for i in ids]
    )
    try:
        exchange.faults = OUTAGE
        await kill_bot(first)
    finally:
        exchange.faults = Faults()
        await stop_watchdog_bot(first)
    last = read_report(Path(f"{registry}.watchdog.jsonl"))[-1]
    assert (last["event"], last["exit_status"]) == ("gave_up", 1)
    assert sorted(order for _, order in last["pending"]) == sorted(ids)
    assert exchange.open_stop_orders() == set(ids)
    with StopOrderRegistry.open(registry) as reopened:
        assert sorted(reopened.snapshot()) == sorted(ids)

    second = await start_watchdog_bot(registry, _settings(exchange))
    try:
        assert sorted(order for _, order in second.ready["leftovers"]) == sorted(ids)
        await kill_bot(second)
    finally:
        await stop_watchdog_bot(second)
    assert not exchange.open_stop_orders()
    with StopOrderRegistry.open(registry) as reopened:
        assert len(reopened) == 0


_TOKEN_COMMAND = "import pathlib, sys; print(pathlib.Path(sys.argv[1]).read_text())"


@pytest.mark.timeout(90)
async def test_a_token_revoked_at_the_bots_death_is_renewed_by_token_command(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """The bot's token stops working as it dies: the watchdog's token_command gets a new one."""
    ids = exchange.add_stop_orders(30, account_id=ACCOUNT)
    registry = tmp_path / "stops.db"
    token_file = tmp_path / "token"
    token_file.write_text("not-yet")
    command = [sys.executable, "-c", _TOKEN_COMMAND, str(token_file)]
    bot = await start_watchdog_bot(
        registry, _settings(exchange, token_command=command), [(i, False) for i in ids]
    )
    try:
        fresh = "FRESH-TOKEN-7b21"
        exchange.tokens.clear()  # the bot's token is revoked as it dies
        exchange.tokens.add(fresh)
        token_file.write_text(fresh + "\n")
        await kill_bot(bot)
    finally:
        await stop_watchdog_bot(bot)
    assert not exchange.open_stop_orders()
    deletes = exchange.requests("DELETE")
    assert any(e.status == 401 for e in deletes)  # the revoked token was refused first
    lines = read_report(Path(f"{registry}.watchdog.jsonl"))
    assert fresh not in json.dumps(lines)
    assert TOKEN not in json.dumps(lines)
    assert lines[-1]["exit_status"] == 0


async def test_without_token_command_the_protection_ends_at_the_tokens_exp(
    exchange: FakeExchange, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """protected_until is the JWT's exp, logged at WARNING at start; None with token_command."""
    token = _jwt(time.time() + 3600.0)
    exchange.tokens.add(token)
    caplog.set_level(logging.WARNING, logger="asyncstop")
    with StopOrderRegistry.open(tmp_path / "stops.db") as registry:
        settings = _settings(exchange, token=token)
        async with asyncstop.Watchdog(registry, **settings) as watchdog:
            until = watchdog.protected_until
        command = [sys.executable, "-c", "print('x')"]
        async with asyncstop.Watchdog(registry, token_command=command, **settings) as watchdog:
            assert watchdog.protected_until is None
    assert until is not None
    assert abs(until.timestamp() - (time.time() + 3600.0)) < 120.0
    warnings = [r for r in caplog.records if "token_command" in r.message]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert until.isoformat(timespec="seconds") in warnings[0].message


_COUNTING_COMMAND = (
    "import pathlib, sys, time\n"
    "log = pathlib.Path(sys.argv[1])\n"
    "before = log.read_text() if log.exists() else ''\n"
    "log.write_text(before + f'{time.time()}\\n')\n"
    "print(pathlib.Path(sys.argv[2]).read_text())\n"
)


def _jwt(expires_at: float) -> str:
    claims = base64.urlsafe_b64encode(json.dumps({"exp": expires_at}).encode()).decode()
    return f"eyJhbGciOiJub25lIn0.{claims.rstrip('=')}.sig"


@pytest.mark.timeout(90)
async def test_once_the_bot_is_dead_the_token_is_renewed_ahead_of_its_exp(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """A dead bot's JWT near its exp: token_command runs before the exp, with no 401 first."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    # Renewed 5 s ahead of its exp (the least lead): about 7 s after the kill.
    expires_at = time.time() + 12.0
    old, fresh = _jwt(expires_at), _jwt(time.time() + 3600.0)
    exchange.tokens.update({old, fresh})
    runs, token_file = tmp_path / "runs", tmp_path / "token"
    token_file.write_text(fresh)
    command = [sys.executable, "-c", _COUNTING_COMMAND, str(runs), str(token_file)]
    bot = await start_watchdog_bot(
        tmp_path / "stops.db",
        _settings(exchange, token=old, token_command=command),
        [(i, False) for i in ids],
    )
    try:
        exchange.faults = OUTAGE  # the firing lasts: the renewal runs meanwhile
        bot.process.kill()
        await wait_until(runs.exists, timeout=2 * WAIT_LIMIT)
        exchange.faults = Faults()
        async with asyncio.timeout(60):
            await process_exited(bot.watchdog_pid)
    finally:
        exchange.faults = Faults()
        await stop_watchdog_bot(bot)
    first_run = float(runs.read_text().split()[0])
    assert first_run < expires_at
    assert not [e for e in exchange.requests("DELETE") if e.status == 401]
    assert not exchange.open_stop_orders()
