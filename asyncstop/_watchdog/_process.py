"""The watchdog process: ``python -m asyncstop._watchdog``, started by :class:`Watchdog`.

It reads its configuration and the token from stdin (never from its command
line or environment), opens its own client, passes preflight, warms its
connections and says ``Ready``. Then it watches the pipe:

* end of file without a ``Disarm`` first: the bot died, whatever killed it
  (the kernel closes a dead process's pipes): fire at once;
* no message for ``heartbeat_timeout``: the bot's loop is frozen or its
  process stopped: fire;
* ``Fire``: cancel now and send the report back; keep watching.

SIGINT, SIGTERM and SIGHUP are logged and otherwise ignored: a service
manager that stops the bot signals the watchdog too, and it must outlive the
bot. After firing on its own it appends its report to ``report_path`` as JSON lines,
logs the outcome, and exits 0 when no order may still be live, 1 otherwise.
Exit status 2 means it could not start.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import msgspec

from .._logging import install_stderr_handler, logger, setup_logging_from_env
from .._signals import StopSignals
from ._protocol import (
    CHUNK,
    LINE_LIMIT,
    BotMessage,
    Config,
    Disarm,
    Fire,
    FireFailed,
    Heartbeat,
    Ready,
    Report,
    Results,
    StartFailed,
    Token,
    WatchdogMessage,
    encode,
    encode_results,
)

if TYPE_CHECKING:
    from .._killswitch import KillSwitch
    from .._registry import StopOrderRegistry
    from .._report import CancelReport

__all__ = ["main"]

EXIT_CLEAN: Final = 0
EXIT_PENDING: Final = 1
EXIT_START_FAILED: Final = 2

#: Why the watchdog fired on its own.
BOT_DIED: Final = "bot_died"
HEARTBEAT_TIMEOUT: Final = "heartbeat_timeout"

#: Seconds between the watchdog's checkpoints of the registry while idle.
_CHECKPOINT_EVERY: Final = 1.0

_decoder: Final = msgspec.json.Decoder(BotMessage)


class _Pipe:
    """The watchdog's ends of the pipe: stdin (from the bot) and stdout (to it)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.bot_gone = False

    async def send(self, message: WatchdogMessage) -> None:
        if self.bot_gone:
            return
        try:
            self.writer.write(encode(message))
            await self.writer.drain()
        except (ConnectionError, RuntimeError):
            # The bot is gone; the pipe's end of file will say so to the reader.
            self.bot_gone = True


async def _open_pipe() -> _Pipe:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=LINE_LIMIT)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, None, loop)
    return _Pipe(reader, writer)


class _Watch:
    """One watchdog's state: its client's token, the last heartbeat, its kill switch."""

    def __init__(self, config: Config, pipe: _Pipe) -> None:
        self.config = config
        self.pipe = pipe
        self.token = config.token
        self.disarmed = False
        #: The bot's clock stamp of the last heartbeat, and our clock when it came.
        self.last_heartbeat_sent: float | None = None
        self.last_message_at = time.monotonic()

    async def current_token(self) -> str:
        return self.token

    async def run(self) -> int:
        # Imported when the process runs, not when the bot imports asyncstop.
        from .._client import AsyncStopClient  # noqa: PLC0415
        from .._killswitch import KillSwitch  # noqa: PLC0415
        from .._registry import StopOrderRegistry  # noqa: PLC0415

        config = self.config
        async with contextlib.AsyncExitStack() as resources:
            try:
                registry = resources.enter_context(StopOrderRegistry.open(config.registry))
                client = await resources.enter_async_context(
                    AsyncStopClient(
                        base_url=config.base_url,
                        token=self.current_token,
                        account_id=config.account_id,
                        max_concurrency=config.max_concurrency,
                        timeout=config.timeout,
                    )
                )
                switch = KillSwitch(
                    client,
                    registry,
                    deadline=config.deadline,
                    concurrency=config.concurrency,
                    rate_limit=config.rate_limit,
                    hedge="auto" if config.hedge == "auto" else _seconds(config.hedge),
                )
                if config.preflight:
                    await client.preflight()
                if config.warm_up:
                    await client.warm_up()
            except Exception as err:
                logger.error("watchdog could not start: %s: %s", type(err).__name__, err)
                await self.pipe.send(StartFailed(kind=type(err).__name__, message=str(err)))
                return EXIT_START_FAILED
            await self.pipe.send(Ready(pid=os.getpid()))
            logger.info(
                "watchdog %d armed: heartbeat timeout %gs", os.getpid(), config.heartbeat_timeout
            )
            return await self.watch(switch, registry)

    async def watch(self, switch: KillSwitch, registry: StopOrderRegistry) -> int:
        reason: str
        next_checkpoint = time.monotonic()
        async with asyncio.TaskGroup() as fires:
            while True:
                try:
                    async with asyncio.timeout(self.config.heartbeat_timeout):
                        line = await self.pipe.reader.readline()
                except TimeoutError:
                    if self.disarmed:
                        return EXIT_CLEAN
                    reason = HEARTBEAT_TIMEOUT
                    break
                except ValueError:  # a line over the limit: not our bot
                    logger.error("watchdog: unreadable message on its pipe")
                    continue
                if not line:
                    if self.disarmed:
                        logger.info("watchdog %d disarmed: exiting", os.getpid())
                        return EXIT_CLEAN
                    reason = BOT_DIED
                    break
                self.last_message_at = time.monotonic()
                try:
                    message = _decoder.decode(line)
                except msgspec.DecodeError as err:
                    logger.error("watchdog: unreadable message on its pipe: %s", err)
                    continue
                if isinstance(message, Heartbeat):
                    self.last_heartbeat_sent = message.sent
                    if not switch.running and self.last_message_at >= next_checkpoint:
                        next_checkpoint = self.last_message_at + _CHECKPOINT_EVERY
                        self.checkpoint(registry)
                elif isinstance(message, Token):
                    self.token = message.token
                elif isinstance(message, Fire):
                    fires.create_task(self.fire_for_bot(switch, message.id))
                elif isinstance(message, Disarm):
                    self.disarmed = True
            fired_at = time.monotonic()
            if reason == BOT_DIED:
                logger.error("watchdog %d: the bot died (its pipe closed): firing", os.getpid())
            else:
                logger.error(
                    "watchdog %d: no heartbeat for %gs: firing",
                    os.getpid(),
                    self.config.heartbeat_timeout,
                )
            report = await switch.trigger()
        done_at = time.monotonic()
        self.write_report(report, reason, fired_at, done_at)
        pending = len(report.pending)
        if pending:
            logger.error(
                "watchdog %d done: %r; %d order(s) may still be live, kept in %s",
                os.getpid(),
                report,
                pending,
                self.config.registry,
            )
            return EXIT_PENDING
        logger.warning("watchdog %d done: %r", os.getpid(), report)
        return EXIT_CLEAN

    def checkpoint(self, registry: StopOrderRegistry) -> None:
        """Keep the registry's write-ahead log short, so that the bot's adds need not."""
        try:
            registry.checkpoint()
        except sqlite3.Error as err:  # a busy or locked file: next time
            logger.debug("watchdog: registry checkpoint skipped: %s", err)

    async def fire_for_bot(self, switch: KillSwitch, request: int) -> None:
        try:
            report = await switch.trigger()
        except Exception as err:
            logger.error("watchdog fire failed: %s: %s", type(err).__name__, err, exc_info=err)
            await self.pipe.send(FireFailed(id=request, kind=type(err).__name__, message=str(err)))
            return
        results = report.results
        for start in range(0, len(results), CHUNK):
            await self.pipe.send(
                Results(id=request, results=encode_results(results[start : start + CHUNK]))
            )
        source_error = report.source_error
        await self.pipe.send(
            Report(
                id=request,
                elapsed=report.elapsed,
                source_error=None if source_error is None else repr(source_error),
            )
        )

    def write_report(
        self, report: CancelReport, reason: str, fired_at: float, done_at: float
    ) -> None:
        """Append the report to the JSON-lines file next to the registry: summary, then results."""
        summary = {
            "event": "watchdog_fired",
            "reason": reason,
            "time": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            "pid": os.getpid(),
            "registry": self.config.registry,
            "orders": len(report),
            "counts": {str(k): v for k, v in report.counts.items() if v},
            "pending": len(report.pending),
            "elapsed": report.elapsed,
            "heartbeat_timeout": self.config.heartbeat_timeout,
            # time.monotonic() stamps (one clock for every process of the host):
            # the bot's last heartbeat as it sent it, and when we fired and finished.
            "last_heartbeat_sent": self.last_heartbeat_sent,
            "last_message_at": self.last_message_at,
            "fired_at": fired_at,
            "done_at": done_at,
        }
        lines = [json.dumps(summary)]
        for result in report.results:
            error = result.error
            lines.append(
                json.dumps(
                    {
                        "order_id": result.order_id,
                        "account_id": result.account_id,
                        "outcome": str(result.outcome),
                        "attempts": result.attempts,
                        "error": None if error is None else f"{type(error).__name__}: {error}",
                    }
                )
            )
        try:
            with Path(self.config.report_path).open("a", encoding="utf-8") as out:
                out.write("\n".join(lines) + "\n")
        except OSError as err:
            logger.error(
                "watchdog could not write its report to %s: %s", self.config.report_path, err
            )
        else:
            logger.info("watchdog report appended to %s", self.config.report_path)


def _outlive(sig: signal.Signals) -> None:
    logger.warning(
        "watchdog %d: %s ignored: it exits when the bot does, after firing if the bot "
        "dies without disarming it (SIGKILL stops it at once)",
        os.getpid(),
        sig.name,
    )


async def _serve() -> int:
    # A service manager stopping the bot (systemd, `docker stop`) signals every
    # process of the unit at once: the watchdog must outlive the bot, not die with it.
    # Its copies of one stop (the unit, then the group) are logged once.
    StopSignals(_outlive, second_press="call").install()
    pipe = await _open_pipe()
    try:
        first = await pipe.reader.readline()
        config = _decoder.decode(first)
    except (ValueError, msgspec.DecodeError) as err:
        logger.error("watchdog: no configuration on its pipe: %s", err)
        return EXIT_START_FAILED
    if not isinstance(config, Config):
        logger.error("watchdog: the first message on its pipe is not its configuration")
        return EXIT_START_FAILED
    try:
        return await _Watch(config, pipe).run()
    finally:
        pipe.writer.close()


def main() -> int:
    """Run the watchdog process until it is disarmed or has fired; return its exit status."""
    # ASYNCSTOP_LOG (inherited from the bot) may ask for INFO or DEBUG; otherwise
    # warnings and errors (firing, its outcome) go to the bot's stderr.
    install_stderr_handler(
        logging.WARNING,
        fmt=f"%(asctime)s asyncstop-watchdog[{os.getpid()}] %(levelname)s %(message)s",
    )
    setup_logging_from_env()
    return asyncio.run(_serve())


def _seconds(hedge: float | str | None) -> float | None:
    """A numeric hedge setting from the pipe (validated on the bot's side)."""
    return None if hedge is None else float(hedge)
