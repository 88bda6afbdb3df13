"""Part 2 of ``asyncstop demo``: a bot is SIGKILLed in an exchange outage; its watchdog keeps going.

The bot is ``python -m asyncstop._cli.demo_bot`` (:mod:`.demo_bot`). It gets
its settings, the token among them, as one JSON line on stdin (never on its
command line or in its environment, the pattern a real bot should follow),
arms an :class:`asyncstop.Watchdog`, records every order id in a durable
:class:`asyncstop.StopOrderRegistry` and answers with one ``ready`` line.
Then the exchange (in this process) starts answering every cancel with 503,
this process kills the bot with SIGKILL, and the exchange recovers
:data:`OUTAGE_SECONDS` later. The watchdog must not give up meanwhile: its
work is judged by the fake exchange's own journal and count of live stops.

The bot and its watchdog write their log (stderr) to a file in a temporary
directory, shown only with ``-v`` or when something went wrong; the directory
(the registry, the watchdog's report, the log) is removed at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from asyncstop._watchdog._settings import WatchdogSettings

from .common import PROG
from .output import Output

if TYPE_CHECKING:
    from asyncstop.testing import FakeExchange, JournalEntry

__all__ = [
    "BOT_ORDERS",
    "BotConfig",
    "BotReady",
    "run_watchdog_part",
]

#: Stop orders the bot holds when it is killed.
BOT_ORDERS: Final = 200
#: The bot's account: its own, so that the exchange's count is the bot's alone.
BOT_ACCOUNT: Final = "demo-bot"
#: Seconds the exchange answers every cancel with 503, from the kill on.
OUTAGE_SECONDS: Final = 3.0
#: The bot's watchdog: a quick heartbeat, short rounds, and no end to its trying
#: within the demo (it gives up only after an hour, the default).
WATCHDOG: Final = WatchdogSettings(heartbeat_interval=0.2, heartbeat_timeout=1.0, deadline=5.0)
#: Seconds the bot may take to start, fill its registry and arm its watchdog
#: (which itself may take up to 30 s to pass preflight): generous for a loaded machine.
_READY_TIMEOUT: Final = 45.0
#: Seconds to wait after the recovery for the exchange to hold none of the bot's stops.
_SETTLE_TIMEOUT: Final = 15.0
#: Seconds a process gets to exit on its own before it is killed.
_EXIT_GRACE: Final = 5.0
#: Lines of the bot's and the watchdog's log shown at most.
_LOG_LINES: Final = 40
_MS: Final = 1000
_BOT_MODULE: Final = "asyncstop._cli.demo_bot"
_LOG_ENV_VAR: Final = "ASYNCSTOP_LOG"


class BotConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """What the demo sends the bot: one JSON line on its stdin."""

    base_url: str
    token: str
    account_id: str
    registry: str
    order_ids: list[str]
    #: Passed on as ``Watchdog(..., **watchdog.as_kwargs())``.
    watchdog: WatchdogSettings


class BotReady(msgspec.Struct, frozen=True, kw_only=True, tag="ready", tag_field="event"):
    """The bot's one line on stdout once its watchdog is armed."""

    pid: int
    watchdog_pid: int
    #: Where the watchdog appends its report after it fired on its own.
    report_path: str
    #: Seconds the bot spent in ``registry.add()`` for all its orders.
    add_seconds: float


def _say(out: Output, text: str = "") -> None:
    out.run(lambda stream: print(text, file=stream))


async def run_watchdog_part(
    exchange: FakeExchange,
    out: Output,
    *,
    token: str,
    orders: int,
    concurrency: int,
    verbose: int,
) -> bool:
    """Run part 2 against ``exchange``; True when it leaves none of the bot's stops live."""
    order_ids = exchange.add_stop_orders(orders, account_id=BOT_ACCOUNT)
    _say(out)
    _say(
        out,
        f"Part 2: the exchange fails every cancel (503) for {OUTAGE_SECONDS:g} s, and the bot "
        f"dies (SIGKILL) with {orders:,} live stops in it; its watchdog keeps going",
    )
    with tempfile.TemporaryDirectory(prefix="asyncstop-demo-") as directory:
        log_path = Path(directory) / "bot.log"
        config = BotConfig(
            base_url=exchange.base_url,
            token=token,
            account_id=BOT_ACCOUNT,
            registry=str(Path(directory) / "stops.db"),
            order_ids=order_ids,
            watchdog=msgspec.structs.replace(WATCHDOG, max_concurrency=concurrency),
        )
        ok = await _kill_the_bot(exchange, out, config, log_path, verbose)
        if not ok or verbose:
            _show_log(log_path, failed=not ok)
    return ok


async def _kill_the_bot(
    exchange: FakeExchange, out: Output, config: BotConfig, log_path: Path, verbose: int
) -> bool:
    # Only the demo needs the testing kit.
    from asyncstop.testing import Faults, wait_until  # noqa: PLC0415

    account = config.account_id
    settings = config.watchdog
    async with _bot_process(log_path, _bot_env(verbose)) as bot:
        ready = await _start(bot, config)
        if ready is None:
            _say(
                out,
                f"  the bot did not get ready (exit status {bot.returncode}); "
                f"its stops are still live: {len(exchange.open_stop_orders(account)):,}",
            )
            return False
        async with _OtherProcess.watch(ready.watchdog_pid) as watchdog:
            added = ready.add_seconds / len(config.order_ids)
            _say(
                out,
                f"  bot       pid {ready.pid} recorded {len(config.order_ids):,} stops of account "
                f"{account} in a durable registry (SQLite, {added * _MS:.2f} ms per add())",
            )
            _say(
                out,
                f"  watchdog  pid {ready.watchdog_pid}, its own process and session: heartbeat "
                f"every {settings.heartbeat_interval:g} s; fires when the bot's pipe closes, or "
                f"after {settings.heartbeat_timeout:g} s without a heartbeat",
            )
            before = len(exchange.open_stop_orders(account))
            _say(out, f"  live stops before the kill: {before:,} (exchange's count)")
            loop = asyncio.get_running_loop()
            exchange.faults = Faults(error_before=1.0)  # the outage: every cancel gets 503
            killed_at = loop.time()  # the journal's clock
            try:
                bot.kill()
                await bot.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(watchdog.ended), OUTAGE_SECONDS)
            finally:
                exchange.faults = Faults()
            recovered_at = loop.time()
            _say(out, _outage_line(exchange, account, killed_at, watchdog.ended.done()))
            orders = exchange.orders
            # On a timeout the exchange's count below says what is left.
            with contextlib.suppress(AssertionError):
                await wait_until(
                    lambda: (
                        watchdog.ended.done()
                        or not any(orders[oid].live for oid in config.order_ids)
                    ),
                    timeout=_SETTLE_TIMEOUT,
                )
            # The watchdog writes its last report line, then exits: wait for it, briefly.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_EXIT_GRACE):
                    await asyncio.shield(watchdog.ended)
            deletes = [
                entry
                for entry in exchange.journal
                if entry.method == "DELETE" and entry.account_id == account
            ]
            _say(out, _timing_line(deletes, killed_at, recovered_at))
            _say(out, _report_line(Path(ready.report_path), len(deletes)))
            after = len(exchange.open_stop_orders(account))
            _say(out, f"  live stops after: {after:,} (exchange's count)")
            if not watchdog.ended.done():
                _say(
                    out,
                    f"  the watchdog (pid {watchdog.pid}) had not exited "
                    f"{_SETTLE_TIMEOUT + _EXIT_GRACE:g} s after the recovery: killing it",
                )
            return after == 0


def _outage_line(exchange: FakeExchange, account: str, killed_at: float, ended: bool) -> str:
    refused = sum(
        1
        for entry in exchange.journal
        if entry.method == "DELETE" and entry.account_id == account and entry.status == 503
    )
    state = "had exited (it gave up)" if ended else "still running, still trying"
    return (
        f"  outage    {OUTAGE_SECONDS:g} s from the kill: {refused:,} DELETEs answered 503, "
        f"{len(exchange.open_stop_orders(account)):,} stops still live; the watchdog {state}"
    )


def _timing_line(deletes: list[JournalEntry], killed_at: float, recovered_at: float) -> str:
    def ms(at: float) -> str:
        return f"+{(at - killed_at) * _MS:.0f} ms"

    if not deletes:
        return "  bot killed (SIGKILL) at +0 ms; no DELETE reached the exchange"
    text = (
        f"  bot killed (SIGKILL) at +0 ms; first DELETE at {ms(min(e.time for e in deletes))}; "
        f"exchange recovered at {ms(recovered_at)}"
    )
    cancels = [e.done_time for e in deletes if e.applied]
    if cancels:
        last = max(cancels)
        text += f"; last cancel at {ms(last)} ({last - recovered_at:.1f} s after the recovery)"
    return text


def _report_line(path: Path, requests: int) -> str:
    """The watchdog's own account of its firing: the last line of the report it wrote."""
    try:
        with path.open(encoding="utf-8") as report:
            lines = report.read().splitlines()
        first: dict[str, Any] = json.loads(lines[0])
        last: dict[str, Any] = json.loads(lines[-1])
    except (OSError, ValueError, IndexError) as err:
        return f"  the watchdog wrote no readable report ({type(err).__name__}: {err})"
    counts: Mapping[str, int] = last.get("counts", {})
    tally = ", ".join(f"{n:,} {outcome}" for outcome, n in counts.items()) or "nothing"
    return (
        f"  watchdog  its report, next to the registry: {first.get('reason')}; "
        f"{last.get('rounds', 0)} round(s), {last.get('event')}: {tally}; "
        f"{len(last.get('pending', [])):,} may still be live ({requests:,} DELETEs, "
        "retries included)"
    )


# -- the bot's and the watchdog's processes ----------------------------------------------------


def _bot_env(verbose: int) -> dict[str, str]:
    """This environment, with ASYNCSTOP_LOG asking the watchdog for its INFO records (-vv: DEBUG).

    They go to the log file, which is shown only with -v or when the part failed.
    """
    env = dict(os.environ)
    env[_LOG_ENV_VAR] = "debug" if verbose > 1 else "info"
    return env


@contextlib.asynccontextmanager
async def _bot_process(
    log_path: Path, env: dict[str, str]
) -> AsyncIterator[asyncio.subprocess.Process]:
    """Start the bot in its own session (Ctrl-C here reaches only the demo), with its log in a file.

    On the way out, a bot still running is told to stop by the end of its stdin:
    it leaves its watchdog's block normally, which disarms the watchdog.
    """
    with log_path.open("wb") as log:
        bot = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            _BOT_MODULE,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            start_new_session=True,
            env=env,
        )
    try:
        yield bot
    finally:
        if bot.returncode is None and bot.stdin is not None:
            bot.stdin.close()
        try:
            async with asyncio.timeout(_EXIT_GRACE):
                await bot.wait()
        except TimeoutError:
            bot.kill()
            await bot.wait()


async def _start(bot: asyncio.subprocess.Process, config: BotConfig) -> BotReady | None:
    """Send the bot its settings; return its ready line, or None once it exited without one."""
    assert bot.stdin is not None
    assert bot.stdout is not None
    try:
        bot.stdin.write(msgspec.json.encode(config) + b"\n")
        await bot.stdin.drain()
        async with asyncio.timeout(_READY_TIMEOUT):
            line = await bot.stdout.readline()
    except (ConnectionError, TimeoutError):
        line = b""
    if line:
        try:
            return msgspec.json.decode(line, type=BotReady)
        except msgspec.DecodeError:
            pass
    bot.kill()
    await bot.wait()
    return None


class _OtherProcess:
    """A process that is not this one's child (the bot's watchdog): see it end, or end it.

    On Linux a pidfd says when it ends (even as a zombie nobody reaps) and
    signals it without the risk of a reused pid; elsewhere its pid is polled.
    """

    def __init__(self, pid: int) -> None:
        self.pid = pid
        loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = loop.create_future()
        self._fd: int | None = None
        self._poller: asyncio.Task[None] | None = None
        pidfd_open = getattr(os, "pidfd_open", None)
        try:
            self._fd = None if pidfd_open is None else pidfd_open(pid)
        except ProcessLookupError:
            self.ended.set_result(None)
            return
        if self._fd is None:
            self._poller = loop.create_task(self._poll())
        else:
            loop.add_reader(self._fd, self._set_ended)

    @classmethod
    @contextlib.asynccontextmanager
    async def watch(cls, pid: int) -> AsyncIterator[_OtherProcess]:
        """Watch ``pid``; on the way out, kill it if it still runs, and wait for its end."""
        process = cls(pid)
        try:
            yield process
        finally:
            if not process.ended.done():
                process.kill()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(_EXIT_GRACE):
                        await asyncio.shield(process.ended)
            process.close()

    def _set_ended(self) -> None:
        if not self.ended.done():
            self.ended.set_result(None)

    async def _poll(self) -> None:
        while True:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self._set_ended()
                return
            except PermissionError:
                pass
            await asyncio.sleep(0.01)

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self._fd is not None:
                signal.pidfd_send_signal(self._fd, signal.SIGKILL)
            else:
                os.kill(self.pid, signal.SIGKILL)

    def close(self) -> None:
        if self._fd is not None:
            asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = None
        if self._poller is not None:
            self._poller.cancel()
        if not self.ended.done():
            self.ended.cancel()


def _show_log(path: Path, *, failed: bool) -> None:
    """Copy the end of the bot's and the watchdog's log to stderr."""
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return
    if not lines:
        return
    why = "what went wrong may be here" if failed else "-v"
    print(f"{PROG} demo: the bot's and its watchdog's log ({why}):", file=sys.stderr)
    if len(lines) > _LOG_LINES:
        print(f"  ... {len(lines) - _LOG_LINES} earlier line(s) not shown", file=sys.stderr)
    for line in lines[-_LOG_LINES:]:
        print(f"  {line}", file=sys.stderr)
