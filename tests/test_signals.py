"""Signals, with a bot in its own process: a supervisor's copies are one request.

Each test starts a real bot (``python -c _BOT``) with a :class:`KillSwitch`, its
``install_signal_handlers()`` and registered stops on the :class:`FakeExchange` of
this process, signals it as supervisors do, and judges by the exchange's live stops.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
from collections.abc import Mapping

import pytest

from asyncstop._signals import SAME_REQUEST_WINDOW, StopSignals
from asyncstop.testing import FakeExchange, Faults, wait_until

from .helpers import ACCOUNT, TOKEN, WAIT_LIMIT

_BOT = """
import asyncio, os, signal, sys
import asyncstop

# The test runner may itself run in the background, where SIGINT is ignored and
# children inherit that: this bot stands for one started from a terminal.
for name in filter(None, os.environ.get("BOT_DEFAULT_SIGNALS", "").split(",")):
    sig = signal.Signals["SIG" + name]
    signal.signal(sig, signal.default_int_handler if name == "INT" else signal.SIG_DFL)

async def main(base_url, token, mode, ids):
    registry = asyncstop.StopOrderRegistry(ids)
    async with asyncstop.AsyncStopClient(base_url=base_url, token=token, account_id="acc-1") as c:
        switch = asyncstop.KillSwitch(c, registry, deadline=30)
        switch.install_signal_handlers()
        try:
            print("ready", flush=True)
            if mode == "pattern":
                await switch.wait_tripped()
                report = await switch.trigger()
                print("report", len(report), report.ok, flush=True)
                return 0
            await asyncio.Event().wait()  # a bot that never looks at the switch
        finally:
            print("closing", len(registry), flush=True)
    return 5

base_url, loop_kind, mode, *ids = sys.argv[1:]
factory = None
if loop_kind == "uvloop":
    import uvloop
    factory = uvloop.new_event_loop
with asyncio.Runner(loop_factory=factory) as runner:
    sys.exit(runner.run(main(base_url, input(), mode, ids)))
"""

#: Long enough that a supervisor's copy of a signal lands while the run is going.
_LATENCY = 0.2
_DEFAULTS = {"BOT_DEFAULT_SIGNALS": "INT,TERM"}


async def _start_bot(
    exchange: FakeExchange,
    ids: list[str],
    *wrapper: str,
    mode: str = "plain",
    loop_kind: str = "asyncio",
    env: Mapping[str, str] = _DEFAULTS,
    own_group: bool = False,
) -> asyncio.subprocess.Process:
    """Start the bot (under ``wrapper``) and return once its signal handlers are installed."""
    bot = await asyncio.create_subprocess_exec(
        *wrapper,
        sys.executable,
        "-c",
        _BOT,
        exchange.base_url,
        loop_kind,
        mode,
        *ids,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "ASYNCSTOP_LOG": "info", **env},
        process_group=0 if own_group else None,
    )
    assert bot.stdin is not None
    assert bot.stdout is not None
    bot.stdin.write(TOKEN.encode() + b"\n")
    await bot.stdin.drain()
    async with asyncio.timeout(30):
        assert await bot.stdout.readline() == b"ready\n"
    return bot


async def _finish(bot: asyncio.subprocess.Process) -> tuple[int, bytes, str]:
    """Wait for the bot to exit: its status, the rest of its stdout, and its stderr."""
    async with asyncio.timeout(30):
        out, err = await bot.communicate()
    assert bot.returncode is not None
    return bot.returncode, out, err.decode()


@pytest.mark.parametrize("trial", range(5))
async def test_a_bot_under_timeout_ends_with_its_stops_cancelled(
    exchange: FakeExchange, trial: int
) -> None:
    """SIGTERM via `timeout` (to the bot, then its group): stops cancelled, exit 143."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    exchange.faults = Faults(latency=_LATENCY)
    bot = await _start_bot(exchange, ids, "timeout", "60")
    bot.send_signal(signal.SIGTERM)  # `timeout` passes it on to the bot, then to its group
    status, out, err = await _finish(bot)
    assert (status, out) == (128 + signal.SIGTERM, b"closing 0\n"), err
    assert not exchange.open_stop_orders()


@pytest.mark.parametrize(
    ("loop_kind", "trial"),
    [*(("asyncio", n) for n in range(12)), *(("uvloop", n) for n in range(6))],
)
async def test_sigterm_to_the_pid_and_its_group_is_one_request(
    exchange: FakeExchange, loop_kind: str, trial: int
) -> None:
    """SIGTERM to the bot and to its group back to back: every stop cancelled, exit 143."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    exchange.faults = Faults(latency=_LATENCY)
    bot = await _start_bot(exchange, ids, loop_kind=loop_kind, own_group=True)
    os.kill(bot.pid, signal.SIGTERM)
    os.killpg(bot.pid, signal.SIGTERM)
    status, out, err = await _finish(bot)
    assert (status, out) == (128 + signal.SIGTERM, b"closing 0\n"), err
    assert not exchange.open_stop_orders()


async def test_sigint_then_sigterm_at_once_is_one_request(exchange: FakeExchange) -> None:
    """Ctrl-C and a supervisor's SIGTERM together are one stop: cancelled, exit 130 or 143."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    exchange.faults = Faults(latency=_LATENCY)
    bot = await _start_bot(exchange, ids)
    bot.send_signal(signal.SIGINT)
    bot.send_signal(signal.SIGTERM)
    status, out, err = await _finish(bot)
    # Either may be handled first: the kernel may hand them to two of the bot's threads.
    assert status in {128 + signal.SIGINT, 128 + signal.SIGTERM}, err
    assert out == b"closing 0\n"
    assert not exchange.open_stop_orders()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda sig: sig.name)
async def test_a_second_signal_later_ends_the_process_at_once(
    exchange: FakeExchange, sig: signal.Signals
) -> None:
    """While the first signal's run hangs, the same signal a second later kills the bot by it."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    exchange.faults = Faults(hang=1.0)
    bot = await _start_bot(exchange, ids)
    bot.send_signal(sig)
    await wait_until(lambda: exchange.in_flight == len(ids), timeout=WAIT_LIMIT)
    # The bot handled the first signal before it sent these requests: from now
    # on, twice the window is certainly past it in the bot's clock too.
    await asyncio.sleep(2 * SAME_REQUEST_WINDOW)
    bot.send_signal(sig)
    status, _, err = await _finish(bot)
    assert status == -sig, err
    assert exchange.open_stop_orders() == set(ids)


async def test_a_signal_the_parent_ignored_stays_ignored(exchange: FakeExchange) -> None:
    """SIGINT ignored by the parent shell stays ignored: SIGTERM after it is the one request."""
    ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    wrapper = ("sh", "-c", 'trap "" INT; exec "$@"', "sh")
    env = {"BOT_DEFAULT_SIGNALS": "TERM", "ASYNCSTOP_LOG": "debug"}
    bot = await _start_bot(exchange, ids, *wrapper, env=env)
    bot.send_signal(signal.SIGINT)  # a handled one would be logged, even as a copy
    bot.send_signal(signal.SIGTERM)
    status, out, err = await _finish(bot)
    assert (status, out) == (128 + signal.SIGTERM, b"closing 0\n"), err
    assert "SIGINT is ignored by this process" in err
    assert "SIGINT received" not in err
    assert not exchange.open_stop_orders()


async def test_a_bot_waiting_on_the_switch_decides_when_to_exit(exchange: FakeExchange) -> None:
    """With wait_tripped(), SIGINT fires the switch and the bot gets the report and exits 0."""
    ids = exchange.add_stop_orders(20, account_id=ACCOUNT)
    bot = await _start_bot(exchange, ids, mode="pattern")
    bot.send_signal(signal.SIGINT)
    status, out, err = await _finish(bot)
    assert (status, out) == (0, b"report 20 True\nclosing 0\n"), err
    assert not exchange.open_stop_orders()


# -- the helper in this process: windows, ignored signals, where handlers cannot go ----------


async def test_a_copy_within_the_window_is_dropped_and_a_later_signal_is_a_new_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """second_press="call": a copy of SIGTERM at once is dropped; one after the window calls."""
    caplog.set_level(logging.DEBUG, logger="asyncstop")
    calls: list[signal.Signals] = []
    handlers = StopSignals(calls.append, [signal.SIGTERM], second_press="call")
    handlers.install()
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: calls, timeout=WAIT_LIMIT)
        os.kill(os.getpid(), signal.SIGTERM)  # the first is handled: this one cannot merge
        await wait_until(lambda: "the same request" in caplog.text, timeout=WAIT_LIMIT)
        assert calls == [signal.SIGTERM]
        await asyncio.sleep(2 * SAME_REQUEST_WINDOW)
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: len(calls) == 2, timeout=WAIT_LIMIT)
    finally:
        handlers.remove()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


async def test_an_ignored_signal_gets_no_handler() -> None:
    """A signal ignored at install time keeps SIG_IGN; the others are handled, then given back."""
    previous = signal.getsignal(signal.SIGHUP)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        handlers = StopSignals(lambda _sig: None, [signal.SIGHUP, signal.SIGTERM])
        handlers.install()
        assert handlers.installed == (signal.SIGTERM,)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
        handlers.remove()
        handlers.remove()  # idempotent
        assert not handlers.installed
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_outside_the_main_thread_install_raises_or_installs_nothing() -> None:
    """A loop in another thread cannot take handlers: RuntimeError, or none with required=False."""

    async def install(required: bool) -> tuple[signal.Signals, ...]:
        handlers = StopSignals(lambda _sig: None)
        handlers.install(required=required)
        return handlers.installed

    def in_thread() -> tuple[signal.Signals, ...]:
        with pytest.raises(RuntimeError):
            asyncio.run(install(required=True))
        return asyncio.run(install(required=False))

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(in_thread).result(timeout=WAIT_LIMIT) == ()
