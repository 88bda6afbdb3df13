"""The watchdog process: ``python -m asyncstop._watchdog``, started by :class:`Watchdog`.

It reads its configuration and the token (and a PostgreSQL registry's DSN)
from stdin (never from its command line or environment), takes the registry's
lock (one watchdog per registry file, or per owner in PostgreSQL: see
:mod:`._guarded`), opens its own client, passes preflight, warms its
connections and says ``Ready``. Then it watches the pipe:

* end of file without a ``Disarm`` first: the bot died, whatever killed it
  (the kernel closes a dead process's pipes): fire at once;
* no message for ``heartbeat_timeout``: the bot's loop is frozen or its
  process stopped: fire;
* ``Fire``: cancel now (one run bounded by ``deadline``) and send the report
  back; keep watching.

Firing by itself, it fences the registry (``add()`` raises WatchdogError there
until a new watchdog starts), tells the bot (``Fired``: a bot that resumes
from a freeze reads it), and keeps cancelling, round after round
(:mod:`._firing`), until every order is settled or ``give_up_after`` passed;
protective stops stay live unless ``cancel_protective_on_death``. With a
``token_command`` it fetches its own tokens once the bot cannot: after a 401,
and ahead of the token's ``exp``. It then exits 0 when no order may still be
live, 1 otherwise (they stay in the registry). A ``TakeOver`` from the bot
(``Watchdog.restart()``) ends the firing early. Exit status 2: it could not start.

SIGINT, SIGTERM and SIGHUP are logged and otherwise ignored: a service
manager that stops the bot signals the watchdog too, and it must outlive the
bot. Its report goes to ``<registry>.watchdog.jsonl`` (:mod:`._reportfile`), or
only to its log for a PostgreSQL registry.

Logging: this process outlives the bot and the bot's logging configuration,
so it always writes its WARNING and ERROR records (firing, each round, the
outcome) to the stderr it inherited, under systemd the journal, whatever
the bot configured; ``ASYNCSTOP_LOG`` (inherited) may ask for INFO or DEBUG.
The bot's own records follow the bot's configuration, as in any library.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from typing import TYPE_CHECKING, Final

import msgspec

from .._auth import command_token_provider, fetch_token
from .._errors import TokenProviderError, WatchdogError
from .._logging import install_stderr_handler, logger, setup_logging_from_env
from .._signals import StopSignals
from ._firing import FiringOutcome, FiringRound, fire_until_settled
from ._guarded import Guarded, open_guarded
from ._protocol import (
    CHUNK,
    LINE_LIMIT,
    BotMessage,
    Config,
    Disarm,
    Fire,
    Fired,
    FireFailed,
    Heartbeat,
    Ready,
    Report,
    Results,
    StartFailed,
    TakeOver,
    Token,
    WatchdogMessage,
    encode,
    encode_results,
    jwt_expiry,
)
from ._reportfile import ReportFile, counts_record, now_iso, pairs

if TYPE_CHECKING:
    from .._client import AsyncStopClient
    from .._killswitch import KillSwitch

__all__ = ["main"]

EXIT_CLEAN: Final = 0
EXIT_PENDING: Final = 1
EXIT_START_FAILED: Final = 2

#: Why the watchdog fired on its own.
BOT_DIED: Final = "bot_died"
HEARTBEAT_TIMEOUT: Final = "heartbeat_timeout"
_WHY: Final = {
    BOT_DIED: "the bot died (its pipe closed)",
    HEARTBEAT_TIMEOUT: "no heartbeat from the bot",
}

#: Seconds between the watchdog's checkpoints of the registry while idle.
_CHECKPOINT_EVERY: Final = 1.0
#: Seconds the Fired message may take to reach a frozen bot's pipe buffer.
_TELL_LIMIT: Final = 1.0
#: A token is renewed this far ahead of its exp at most, and at least.
_RENEW_AHEAD_MAX: Final = 120.0
_RENEW_AHEAD_MIN: Final = 5.0

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
    """One watchdog's state: its client's token, the last heartbeat, how it fires."""

    def __init__(self, config: Config, pipe: _Pipe) -> None:
        self.config = config
        self.settings = config.settings
        self.pipe = pipe
        self.token = config.token
        #: The token the client was last given (at open, after a 401).
        self.handed: str | None = None
        self.command = (
            None
            if self.settings.token_command is None
            else command_token_provider(
                self.settings.token_command, timeout=self.settings.token_command_timeout
            )
        )
        self.disarmed = False
        self.report = ReportFile(config.report_path)
        self.guarded: Guarded = open_guarded(config.registry)
        #: The bot's clock stamp of the last heartbeat, and our wall clock when it came.
        self.last_heartbeat_sent: float | None = None
        self.last_heartbeat_at: str | None = None
        self.last_message_at = time.monotonic()
        self.taken_over = asyncio.Event()
        #: The latest round of a firing by itself (for the database's record of it).
        self.last_round: FiringRound | None = None

    # -- tokens --------------------------------------------------------------------------------

    async def current_token(self) -> str:
        """The client's token provider: at open, and after a 401."""
        if self.token == self.handed and self.command is not None:
            # Refused, and the bot sent nothing newer: ask the token command.
            self.token = await self.from_command(self.token)
        self.handed = self.token
        return self.token

    async def from_command(self, fallback: str) -> str:
        """A token from the token command; on failure, ``fallback`` (the next round tries again).

        Never raises: the client would otherwise take the failure as final.
        """
        assert self.command is not None
        try:
            return await fetch_token(self.command, None)  # the command has its own timeout
        except TokenProviderError as err:
            logger.error("watchdog %d: %s; keeping the current token", os.getpid(), err)
            return fallback

    async def renew_ahead(self) -> None:
        """Once the bot is gone: fetch a token from the command ahead of the current one's exp."""
        while True:
            expiry = jwt_expiry(self.token)
            if expiry is None:
                return  # nothing to schedule by; a 401 still asks the command
            left = expiry - time.time()
            ahead = min(_RENEW_AHEAD_MAX, max(_RENEW_AHEAD_MIN, left / 4))
            if left > ahead:
                await asyncio.sleep(left - ahead)
            fresh = await self.from_command(self.token)
            fresh_expiry = jwt_expiry(fresh)
            if fresh != self.token and (fresh_expiry is None or fresh_expiry > expiry):
                self.token = fresh
                logger.info("watchdog %d: token renewed ahead of its expiry", os.getpid())
                continue
            await asyncio.sleep(min(30.0, max(1.0, (expiry - time.time()) / 4)))

    # -- the watch -----------------------------------------------------------------------------

    async def run(self) -> int:
        # Imported when the process runs, not when the bot imports asyncstop.
        from .._client import AsyncStopClient  # noqa: PLC0415
        from .._killswitch import KillSwitch  # noqa: PLC0415

        config, settings = self.config, self.settings
        guarded = self.guarded
        async with contextlib.AsyncExitStack() as resources:
            try:
                await guarded.open(resources, bot_pid=os.getppid())
                client = await resources.enter_async_context(
                    AsyncStopClient(
                        base_url=config.base_url,
                        token=self.current_token,
                        account_id=config.account_id,
                        max_concurrency=settings.max_concurrency,
                        timeout=settings.timeout,
                    )
                )
                switch = KillSwitch(
                    client,
                    guarded.registry,
                    deadline=settings.deadline,
                    concurrency=settings.concurrency,
                    rate_limit=settings.rate_limit,
                    hedge="auto" if settings.hedge == "auto" else _seconds(settings.hedge),
                )
                if settings.preflight:
                    await client.preflight()
                if settings.warm_up:
                    await client.warm_up()
            except Exception as err:
                # A refusal of ours keeps its kind (RegistryLocked) for the bot's error.
                kind = (err.kind if isinstance(err, WatchdogError) else None) or type(err).__name__
                logger.error("watchdog could not start: %s: %s", type(err).__name__, err)
                await self.pipe.send(StartFailed(kind=kind, message=str(err)))
                return EXIT_START_FAILED
            await self.pipe.send(Ready(pid=os.getpid()))
            logger.info(
                "watchdog %d armed: heartbeat timeout %gs", os.getpid(), settings.heartbeat_timeout
            )
            async with asyncio.TaskGroup() as fires:
                reason = await self.watch(fires, switch)
            if reason is None:
                return EXIT_CLEAN
            return await self.fire_by_itself(reason, client)

    async def watch(self, fires: asyncio.TaskGroup, switch: KillSwitch) -> str | None:
        """Read the pipe until the bot disarms (None) or must be fired for (the reason)."""
        next_checkpoint = time.monotonic()
        while True:
            try:
                async with asyncio.timeout(self.settings.heartbeat_timeout):
                    line = await self.pipe.reader.readline()
            except TimeoutError:
                return None if self.disarmed else HEARTBEAT_TIMEOUT
            except ValueError:  # a line over the limit: not our bot
                logger.error("watchdog: unreadable message on its pipe")
                continue
            if not line:
                if self.disarmed:
                    logger.info("watchdog %d disarmed: exiting", os.getpid())
                    return None
                return BOT_DIED
            self.last_message_at = time.monotonic()
            try:
                message = _decoder.decode(line)
            except msgspec.DecodeError as err:
                logger.error("watchdog: unreadable message on its pipe: %s", err)
                continue
            if isinstance(message, Heartbeat):
                self.last_heartbeat_sent = message.sent
                self.last_heartbeat_at = now_iso()
                if not switch.running and self.last_message_at >= next_checkpoint:
                    next_checkpoint = self.last_message_at + _CHECKPOINT_EVERY
                    self.guarded.checkpoint()
            elif isinstance(message, Token):
                self.token = message.token
            elif isinstance(message, Fire):
                fires.create_task(self.fire_for_bot(switch, message))
            elif isinstance(message, Disarm):
                self.disarmed = True

    async def fire_by_itself(self, reason: str, client: AsyncStopClient) -> int:
        """Fence, tell the bot, and cancel round after round (see the module docstring)."""
        pid, settings, guarded = os.getpid(), self.settings, self.guarded
        at = now_iso()
        why = _WHY[reason]
        await guarded.fence(f"the watchdog (pid {pid}) fired by itself at {at}: {why}")
        await guarded.fire_started()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_TELL_LIMIT):
                await self.pipe.send(Fired(reason=reason, at=at, pid=pid))
        try:
            stops = await guarded.stops()
        except Exception as err:  # a database out of reach: the rounds try again
            logger.error("watchdog %d could not read %s: %s", pid, guarded.name, err)
            stops = []
        protective = sum(1 for stop in stops if stop[2])
        keep = protective and not settings.cancel_protective_on_death
        logger.error(
            "watchdog %d: %s: firing at %d stop order(s)%s",
            pid,
            why if reason == BOT_DIED else f"{why} for {settings.heartbeat_timeout:g} s",
            len(stops) - (protective if keep else 0),
            f"; {protective} protective stop(s) left live, since they guard open positions "
            "(cancel_protective_on_death=False)"
            if keep
            else "",
        )
        self.report.write(
            "fired",
            reason=reason,
            pid=pid,
            bot_pid=os.getppid(),
            registry=guarded.name,
            orders=len(stops),
            protective_left=protective if keep else 0,
            heartbeat_timeout=settings.heartbeat_timeout,
            last_heartbeat=self.last_heartbeat_at,
            # time.monotonic() of the bot when it sent it (one clock per host).
            last_heartbeat_sent_monotonic=self.last_heartbeat_sent,
        )
        firing = asyncio.ensure_future(
            fire_until_settled(
                client,
                guarded.firing_store(self.config.account_id),
                give_up_after=settings.give_up_after,
                round_deadline=settings.deadline,
                cancel_protective=settings.cancel_protective_on_death,
                concurrency=settings.concurrency,
                rate_limit=settings.rate_limit,
                hedge="auto" if settings.hedge == "auto" else _seconds(settings.hedge),
                on_round=self.on_round,
            )
        )
        helpers = [asyncio.ensure_future(self.listen_after_firing())]
        if self.command is not None:
            helpers.append(asyncio.ensure_future(self.renew_ahead()))
        taken_over = asyncio.ensure_future(self.taken_over.wait())
        try:
            await asyncio.wait({firing, taken_over}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (*helpers, taken_over):
                task.cancel()
            if not firing.done():
                firing.cancel()
            await asyncio.gather(firing, taken_over, *helpers, return_exceptions=True)
        if firing.cancelled() or firing.exception() is not None:
            return await self.end_early(firing)
        outcome = firing.result()
        status = self.finish(outcome)
        await guarded.fire_ended(outcome, self.last_round)
        return status

    async def listen_after_firing(self) -> None:
        """Keep reading the pipe after firing: a resumed bot's heartbeats, or its TakeOver."""
        while line := await self.pipe.reader.readline():
            with contextlib.suppress(msgspec.DecodeError):
                if isinstance(_decoder.decode(line), TakeOver):
                    logger.warning(
                        "watchdog %d: the bot arms a new watchdog: this one stops firing",
                        os.getpid(),
                    )
                    self.taken_over.set()
                    return

    def on_round(self, record: FiringRound) -> None:
        self.last_round = record
        self.report.write(
            "round",
            round=record.number,
            next_round_in=record.next_delay,
            retrying=len(record.retrying),
            refused=len(record.refused),
            protective_left=record.protective_left,
            **ReportFile.report_fields(record.report),
        )

    def finish(self, outcome: FiringOutcome) -> int:
        status = EXIT_CLEAN if outcome.ok else EXIT_PENDING
        account = self.config.account_id or ""
        self.report.write(
            "gave_up" if outcome.gave_up else "done",
            rounds=outcome.rounds,
            elapsed=round(outcome.elapsed, 3),
            counts=counts_record(outcome.counts),
            pending=pairs(outcome.pending),
            refused=pairs(outcome.refused),
            protective_left=[
                [s.account_id or account, s.order_id] for s in outcome.protective_left
            ],
            exit_status=status,
        )
        if outcome.ok:
            logger.warning(
                "watchdog %d done after %d round(s): nothing fired at may still be live%s",
                os.getpid(),
                outcome.rounds,
                f"; {len(outcome.protective_left)} protective stop(s) left live"
                if outcome.protective_left
                else "",
            )
        else:
            logger.error(
                "watchdog %d %s after %d round(s): %d order(s) may still be live, kept in %s",
                os.getpid(),
                "gave up" if outcome.gave_up else "stopped",
                outcome.rounds,
                len(outcome.pending),
                self.guarded.name,
            )
        return status

    async def end_early(self, firing: asyncio.Future[FiringOutcome]) -> int:
        """Taken over by a new watchdog, or the firing itself failed: say what is left."""
        error = None if firing.cancelled() else firing.exception()
        if error is not None:
            logger.error(
                "watchdog %d: firing failed: %s: %s",
                os.getpid(),
                type(error).__name__,
                error,
                exc_info=error,
            )
        left = await self.guarded.left()
        self.report.write(
            "taken_over" if error is None else "failed",
            orders_left=left,
            error=None if error is None else f"{type(error).__name__}: {error}",
            exit_status=EXIT_PENDING if left else EXIT_CLEAN,
        )
        return EXIT_PENDING if left else EXIT_CLEAN

    async def fire_for_bot(self, switch: KillSwitch, request: Fire) -> None:
        try:
            report = await switch.trigger(include_protective=request.include_protective)
        except Exception as err:
            logger.error("watchdog fire failed: %s: %s", type(err).__name__, err, exc_info=err)
            await self.pipe.send(
                FireFailed(id=request.id, kind=type(err).__name__, message=str(err))
            )
            return
        results = report.results
        for start in range(0, len(results), CHUNK):
            await self.pipe.send(
                Results(id=request.id, results=encode_results(results[start : start + CHUNK]))
            )
        source_error = report.source_error
        await self.pipe.send(
            Report(
                id=request.id,
                elapsed=report.elapsed,
                source_error=None if source_error is None else repr(source_error),
            )
        )


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
    # It outlives the bot and the bot's logging: its warnings and errors (firing,
    # each round, the outcome) always go to the stderr it inherited (see the
    # module docstring); ASYNCSTOP_LOG (inherited from the bot) may ask for more.
    install_stderr_handler(
        logging.WARNING,
        fmt=f"%(asctime)s asyncstop-watchdog[{os.getpid()}] %(levelname)s %(message)s",
    )
    setup_logging_from_env()
    return asyncio.run(_serve())


def _seconds(hedge: float | str | None) -> float | None:
    """A numeric hedge setting from the pipe (validated on the bot's side)."""
    return None if hedge is None else float(hedge)
