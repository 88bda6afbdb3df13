"""Watchdog: the bot's side of a dead man's switch that runs in its own process."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

import msgspec

from .._auth import command_token_provider
from .._constants import DEFAULT_KILL_SWITCH_HEDGE, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT
from .._errors import AsyncStopError, WatchdogError
from .._logging import logger
from .._report import CancelReport
from .._validation import check_account_id, check_base_url
from ._protocol import (
    LINE_LIMIT,
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
    decode_results,
    encode,
)
from ._settings import (
    DEFAULT_DEADLINE,
    DEFAULT_GIVE_UP_AFTER,
    DEFAULT_HEARTBEAT_INTERVAL,
    DEFAULT_HEARTBEAT_TIMEOUT,
    DEFAULT_START_TIMEOUT,
    DEFAULT_TOKEN_COMMAND_TIMEOUT,
    WatchdogSettings,
)
from ._source import describe, fence_bot_side, leftovers, unfence_bot_side
from ._spawn import Child, child_env, end, kill
from ._tokens import BotTokens

if TYPE_CHECKING:
    from .._auth import TokenProvider
    from .._postgres import PostgresRegistry
    from .._registry import StopOrderRegistry
    from .._report import CancelResult

__all__ = ["Watchdog", "WatchdogError", "WatchdogFired"]

#: Seconds a fire's report may come after its deadline.
_FIRE_GRACE: Final = 10.0
#: What a bot in PID 1 of its namespace is told (its death kills the whole namespace).
_PID1: Final = (
    "this process is PID 1 of its PID namespace (a container started without an init): "
    "when it dies the kernel kills every process of the namespace, the watchdog too, "
    "before it can send a cancel. Run the bot under an init: `docker run --init`, tini "
    '(`ENTRYPOINT ["tini", "--"]`), or `init: true` in docker compose; or protect '
    "the stops from another host with `asyncstop watchdog --store`"
)

_decoder: Final = msgspec.json.Decoder(WatchdogMessage)


@dataclass(frozen=True, slots=True)
class WatchdogFired:
    """Why and when a watchdog fired by itself (``Watchdog.fired``)."""

    #: ``"heartbeat_timeout"`` (this bot's loop stalled) or ``"bot_died"``.
    reason: str
    #: When it fired (UTC).
    at: dt.datetime
    #: The watchdog process that fired (it goes on cancelling until settled).
    pid: int


class Watchdog:
    """A dead man's switch in a separate process that cancels a durable registry's stops.

    ::

        registry = asyncstop.StopOrderRegistry.open("stops.db")
        async with asyncstop.Watchdog(
            registry, base_url=..., token=..., account_id=...,
            token_command=["vault", "read", "-field=jwt", "secret/b2"],
        ) as watchdog:
            ...                                   # the bot; registry.add() every stop it places
            report = await watchdog.fire()        # cancel every stop, from the watchdog

    Entering starts ``python -m asyncstop._watchdog`` in its own session (a
    terminal's Ctrl-C does not reach it) with its own client; it returns once
    the watchdog holds the registry's lock (one watchdog per registry file),
    passed preflight and warmed its connections. The token goes over a private
    pipe, never on a command line or in an environment.

    **A PostgresRegistry** (``await PostgresRegistry.connect(dsn, owner=...)``)
    is guarded the same way: its DSN goes over the same pipe, the watchdog
    opens connections of its own and holds an advisory lock there (one
    watchdog per owner of a database), and its report goes to its log only
    (:attr:`report_path` is None). Its fence raises the owner's epoch: a
    lease the bot holds is refused by the database (``add()`` raises
    :class:`LeaseLostError`; take a new lease after :meth:`restart`); without
    a lease, ``add()`` raises :class:`WatchdogError` once the bot read the fire.

    **Firing by itself.** When the bot dies (its pipe closes without a clean
    exit: at once) or sends no heartbeat for ``heartbeat_timeout`` seconds
    (its loop froze, its process stopped), the watchdog fences the registry
    (``add()`` raises :class:`WatchdogError` until :meth:`restart`), tells the
    bot (:attr:`fired`, :meth:`wait_fired`), and cancels the registry's
    stops round after round, backing off up to 30 s between rounds, until
    every one is settled or ``give_up_after`` seconds have passed; what it
    cancelled leaves the registry, what may still be live stays. Protective
    stops (``registry.add(..., protective=True)``: stop-losses) stay live,
    unless ``cancel_protective_on_death=True``. It appends a line per round to
    :attr:`report_path` and exits 0 when nothing may still be live, 1 otherwise.
    With ``token_command`` (argv, no shell) it fetches its own tokens once the
    bot cannot: after a 401 and ahead of the JWT's ``exp``; without one, its
    protection of a dead bot ends at the token's ``exp`` (:attr:`protected_until`).

    **fire()** is one run bounded by ``deadline``, protective stops included
    unless ``include_protective=False``, whose report goes back to the bot.

    ``heartbeat_timeout`` (default 10 s) trades a frozen bot's unguarded time
    against false fires: a 3 s stall (a garbage-collector pass, a blocking
    call) is common in Python bots, and a false fire cancels every stop and
    fences the registry until :meth:`restart`.

    Leaving the block normally disarms it: nothing is cancelled. Leaving it
    with an exception (cancellation and KeyboardInterrupt included) fires it
    first, unless ``fire_on_error=False``. If the watchdog dies, the bot
    learns it (an ERROR log record, :attr:`alive` False); :meth:`restart`
    starts a new one. A bot that is PID 1 of its namespace is refused.
    """

    def __init__(
        self,
        registry: StopOrderRegistry | PostgresRegistry,
        *,
        base_url: str,
        token: str | TokenProvider,
        account_id: str | None = None,
        heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL,
        heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT,
        deadline: float | None = DEFAULT_DEADLINE,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        hedge: float | Literal["auto"] | None = DEFAULT_KILL_SWITCH_HEDGE,
        fire_on_error: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        preflight: bool = True,
        warm_up: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        give_up_after: float | None = DEFAULT_GIVE_UP_AFTER,
        cancel_protective_on_death: bool = False,
        token_command: Sequence[str] | None = None,
        token_command_timeout: float = DEFAULT_TOKEN_COMMAND_TIMEOUT,
    ) -> None:
        self._source, self._name, report_path = describe(registry)
        self.registry: Final = registry
        self.base_url: Final = check_base_url(base_url)
        self.account_id: Final = None if account_id is None else check_account_id(account_id)
        if token_command is not None:
            # The same rules as any token command (a list of str, no shell).
            command_token_provider(token_command, timeout=token_command_timeout)
        #: Every setting but the registry, the base URL, the token and the account.
        self.settings: Final = WatchdogSettings(
            heartbeat_interval=heartbeat_interval,
            heartbeat_timeout=heartbeat_timeout,
            deadline=deadline,
            concurrency=concurrency,
            rate_limit=rate_limit,
            hedge=hedge,
            fire_on_error=fire_on_error,
            max_concurrency=max_concurrency,
            timeout=timeout,
            preflight=preflight,
            warm_up=warm_up,
            start_timeout=start_timeout,
            give_up_after=give_up_after,
            cancel_protective_on_death=cancel_protective_on_death,
            token_command=None if token_command is None else tuple(token_command),
            token_command_timeout=token_command_timeout,
        )
        self._tokens = BotTokens(token, self.settings)
        #: Where a watchdog that fired on its own appends its report (JSON lines);
        #: None for a PostgresRegistry (its log only).
        self.report_path: Final = report_path
        #: The registry's orders when this watchdog first started, as (account_id, order_id):
        #: what a previous session left. It protects them like the rest.
        self.leftovers: tuple[tuple[str | None, str], ...] = ()
        self._child: Child | None = None
        self._started_once = False
        self._tasks: list[asyncio.Task[None]] = []
        self._fires: dict[int, tuple[asyncio.Future[CancelReport], list[CancelResult]]] = {}
        self._next_fire = 0
        self._alive = False
        self._closing = False
        self._fired: WatchdogFired | None = None
        self._fired_event = asyncio.Event()

    # -- what the bot sees ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The watchdog's process id (None before the first start)."""
        return None if self._child is None else self._child.pid

    @property
    def alive(self) -> bool:
        """True while the watchdog process is running and armed (False once it fired)."""
        return self._alive

    @property
    def returncode(self) -> int | None:
        """The exit status of the watchdog process once it has exited, else None."""
        return None if self._child is None else self._child.returncode

    @property
    def fired(self) -> WatchdogFired | None:
        """Why and when the watchdog fired by itself, or None (reset by :meth:`restart`)."""
        return self._fired

    async def wait_fired(self) -> WatchdogFired:
        """Return once the watchdog has fired by itself (at once if it has)."""
        await self._fired_event.wait()
        assert self._fired is not None
        return self._fired

    @property
    def protected_until(self) -> dt.datetime | None:
        """Until when a dead bot's stops are protected: its token's ``exp`` (UTC).

        None when the watchdog can renew its token by itself (``token_command``)
        or the token is not a JWT with an ``exp`` claim.
        """
        return self._tokens.protected_until

    def __repr__(self) -> str:
        return (
            f"<Watchdog pid={self.pid} alive={self._alive} fired={self._fired is not None} "
            f"registry={self._name!r}>"
        )

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        fire = exc is not None and self.settings.fire_on_error
        # Cleanup runs to its end even if this task is cancelled again meanwhile.
        leave = asyncio.get_running_loop().create_task(self._leave(fire))
        try:
            await asyncio.shield(leave)
        except asyncio.CancelledError:
            await asyncio.gather(leave, return_exceptions=True)
            raise

    async def _leave(self, fire: bool) -> None:
        if fire and self._alive:
            logger.warning("leaving the watchdog's block with an error: firing it")
            try:
                await self.fire()
            except WatchdogError as err:
                logger.error("the watchdog could not fire: %s", err)
        await self.close()

    async def start(self) -> None:
        """Start the watchdog process; return once it is armed (preflight passed, warm).

        Raises :class:`WatchdogError` when it cannot get ready (its ``kind``
        names the cause, such as ``"AuthenticationError"``), when another
        watchdog guards the registry file, or when this process is PID 1 of
        its namespace; :class:`TokenProviderError` when the token provider
        raises, takes longer than ``timeout`` or gives an unusable token (then
        no process is started).
        """
        if self._alive:
            raise RuntimeError(f"the watchdog (pid {self.pid}) is running already")
        if os.getpid() == 1:
            raise WatchdogError(f"the watchdog refuses to arm: {_PID1}", kind="PID1")
        await self._take_over()
        await self._cleanup_tasks()
        self._closing = False
        token = await self._tokens.first()
        if not self._started_once:
            self.leftovers = await leftovers(self.registry, self.account_id, self._name)
        child = await Child.start(
            [sys.executable, "-m", "asyncstop._watchdog"], env=child_env(token), limit=LINE_LIMIT
        )
        self._child = child
        try:
            ready = await self._handshake(child, token)
        except WatchdogError as err:
            if err.kind is not None:
                await end(child)  # it said why and is exiting: let it finish
                raise
            # Not ready in time: it must not arm later and fire on the closed pipe.
            await kill(child)
            raise
        except BaseException:
            await kill(child)
            raise
        self._started_once = True
        self._alive = True
        self._fired = None
        self._fired_event.clear()
        self._tokens.armed_with(token)
        unfence_bot_side(self.registry)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(child), name="asyncstop-watchdog-heartbeat"),
            loop.create_task(self._read(child), name="asyncstop-watchdog-reader"),
            loop.create_task(self._wait(child), name="asyncstop-watchdog-wait"),
        ]
        if self._tokens.provider is not None:
            refresh = self._tokens.refresh(
                lambda fresh: self._send_token(child, fresh), lambda: self._fired is not None
            )
            self._tasks.append(loop.create_task(refresh, name="asyncstop-watchdog-token"))
        logger.info("watchdog %d armed for %s", ready.pid, self._name)

    async def restart(self) -> None:
        """Arm a new watchdog after the last one died or fired (no-op while one is armed).

        A watchdog still cancelling after it fired hands over to the new one,
        which protects what is left in the registry; ``registry.add()`` works
        again and :attr:`fired` is None.
        """
        if not self._alive:
            await self.start()

    async def fire(self, *, include_protective: bool = True) -> CancelReport:
        """Cancel every stop in the registry from the watchdog's process; return its report.

        Protective stops are cancelled too unless ``include_protective`` is
        False. The cancels run in the watchdog, so this loop only waits for the
        report. Cancelling this call does not stop the watchdog's run. Raises
        :class:`WatchdogError` when the watchdog is gone, has fired by itself,
        or fails, or sends no report within ``deadline`` plus a grace.
        """
        child = self._require_alive()
        request = self._next_fire = self._next_fire + 1
        future: asyncio.Future[CancelReport] = asyncio.get_running_loop().create_future()
        self._fires[request] = (future, [])
        try:
            try:
                child.writer.write(encode(Fire(id=request, include_protective=include_protective)))
                await child.writer.drain()
            except (ConnectionError, RuntimeError) as err:
                self._lost(f"its pipe broke ({err})")
            deadline = self.settings.deadline
            limit = None if deadline is None else deadline + _FIRE_GRACE
            try:
                async with asyncio.timeout(limit):
                    return await future
            except TimeoutError:
                raise WatchdogError(f"the watchdog sent no report within {limit:g} s") from None
        finally:
            self._fires.pop(request, None)

    async def close(self) -> None:
        """Disarm the watchdog and let it exit without cancelling anything; idempotent.

        A watchdog that fired by itself is not stopped: it goes on cancelling
        until every stop is settled or ``give_up_after`` passed, and exits then.
        """
        self._closing = True
        self._alive = False
        child = self._child
        if child is not None and child.returncode is None:
            if self._fired is not None:
                logger.warning(
                    "the watchdog (pid %d) fired and goes on cancelling after the bot leaves; "
                    "its report: %s",
                    child.pid,
                    self.report_path or "its log",
                )
                child.close_pipes()
            else:
                try:
                    child.writer.write(encode(Disarm()))
                    await child.writer.drain()
                except (ConnectionError, RuntimeError):
                    pass
                await end(child)
        await self._cleanup_tasks()

    # -- the machinery -------------------------------------------------------------------------

    def _require_alive(self) -> Child:
        child = self._child
        if self._fired is not None:
            raise WatchdogError(
                f"the watchdog fired by itself at {self._fired.at.isoformat()} "
                f"({self._fired.reason}) and is cancelling the registry's stops: "
                "`await watchdog.restart()` arms a new one"
            )
        if not self._alive or child is None:
            raise WatchdogError(
                "the watchdog is not running: use `async with Watchdog(...)`, "
                "or `await watchdog.restart()` after it died"
            )
        return child

    async def _take_over(self) -> None:
        """Stop a previous watchdog of ours that is still firing, so that a new one can lock."""
        child = self._child
        if child is None or child.returncode is not None:
            return
        logger.warning("the watchdog (pid %d) is still firing: taking over from it", child.pid)
        try:
            child.writer.write(encode(TakeOver()))
            await child.writer.drain()
        except (ConnectionError, RuntimeError):
            pass
        await end(child)

    async def _handshake(self, child: Child, token: str) -> Ready:
        config = Config(
            registry=self._source,
            report_path=None if self.report_path is None else str(self.report_path),
            base_url=self.base_url,
            token=token,
            account_id=self.account_id,
            settings=self.settings,
        )
        limit = self.settings.start_timeout
        try:
            child.writer.write(encode(config))
            await child.writer.drain()
            async with asyncio.timeout(limit):
                line = await child.reader.readline()
        except TimeoutError:
            raise WatchdogError(f"the watchdog was not ready within {limit:g} s") from None
        except (ConnectionError, RuntimeError) as err:
            raise WatchdogError(f"the watchdog process ended at start ({err})") from None
        if not line:
            raise WatchdogError("the watchdog process exited before it was ready")
        message = _decoder.decode(line)
        if isinstance(message, StartFailed):
            raise WatchdogError(
                f"the watchdog could not start: {message.kind}: {message.message}",
                kind=message.kind,
            )
        if not isinstance(message, Ready):
            raise WatchdogError(f"the watchdog sent {type(message).__name__} instead of Ready")
        return message

    async def _beat(self, child: Child) -> None:
        while self._fired is None:
            try:
                child.writer.write(encode(Heartbeat(sent=time.monotonic())))
                await child.writer.drain()
            except (ConnectionError, RuntimeError) as err:
                self._lost(f"its heartbeat pipe broke ({type(err).__name__})")
                return
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _read(self, child: Child) -> None:
        while True:
            try:
                line = await child.reader.readline()
                message = _decoder.decode(line) if line else None
            except (ValueError, msgspec.DecodeError) as err:
                logger.error("unreadable message from the watchdog: %s", err)
                for future, _ in self._fires.values():
                    if not future.done():
                        future.set_exception(WatchdogError(f"unreadable report: {err}"))
                continue
            if message is None:
                return
            if isinstance(message, Results):
                fire = self._fires.get(message.id)
                if fire is not None:
                    fire[1].extend(decode_results(message.results))
                # Lines already buffered would otherwise be decoded in one go:
                # a 10,000-order report must not stall the bot's loop.
                await asyncio.sleep(0)
            elif isinstance(message, Report):
                fire = self._fires.get(message.id)
                if fire is not None and not fire[0].done():
                    error = (
                        None
                        if message.source_error is None
                        else AsyncStopError(message.source_error)
                    )
                    fire[0].set_result(CancelReport(fire[1], message.elapsed, error))
            elif isinstance(message, FireFailed):
                fire = self._fires.get(message.id)
                if fire is not None and not fire[0].done():
                    fire[0].set_exception(
                        WatchdogError(
                            f"the watchdog's fire failed: {message.kind}: {message.message}",
                            kind=message.kind,
                        )
                    )
            elif isinstance(message, Fired):
                self._on_fired(message)

    def _on_fired(self, message: Fired) -> None:
        self._fired = WatchdogFired(
            reason=message.reason, at=dt.datetime.fromisoformat(message.at), pid=message.pid
        )
        self._alive = False
        fence_bot_side(
            self.registry,
            f"the watchdog (pid {message.pid}) fired by itself at {message.at} "
            f"({message.reason}) and is cancelling the registry's stops; "
            "`await watchdog.restart()` arms a new watchdog",
        )
        for future, _ in self._fires.values():
            if not future.done():
                future.set_exception(
                    WatchdogError(f"the watchdog fired by itself ({message.reason})")
                )
        self._fired_event.set()
        logger.error(
            "the watchdog (pid %d) fired by itself at %s (%s): it is cancelling the registry's "
            "stops; registry.add() raises WatchdogError and nothing protects new stops until "
            "`await watchdog.restart()`",
            message.pid,
            message.at,
            "no heartbeat: this bot's loop stalled longer than heartbeat_timeout"
            if message.reason == "heartbeat_timeout"
            else message.reason,
        )

    async def _wait(self, child: Child) -> None:
        status = await asyncio.shield(child.exited)
        if self._fired is None:
            self._lost(
                f"it exited with status {status} (if it fired on its own, its report is "
                f"in {self.report_path or 'its log'})"
            )

    async def _send_token(self, child: Child, token: str) -> bool:
        try:
            child.writer.write(encode(Token(token=token)))
            await child.writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _lost(self, why: str) -> None:
        """The watchdog is gone: say so once, and fail the fires waiting for it."""
        for future, _ in self._fires.values():
            if not future.done():
                future.set_exception(WatchdogError(f"the watchdog is gone: {why}"))
        if not self._alive or self._closing:
            return
        self._alive = False
        logger.error(
            "the watchdog (pid %s) is gone: %s. Stops are not protected if the bot dies; "
            "`await watchdog.restart()` starts a new one",
            self.pid,
            why,
        )

    async def _cleanup_tasks(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
