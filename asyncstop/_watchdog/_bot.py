"""Watchdog: the bot's side of a dead man's switch that runs in its own process."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

import msgspec

from .._auth import fetch_token
from .._constants import DEFAULT_KILL_SWITCH_HEDGE, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT
from .._errors import AsyncStopError, InvalidInputError, TokenProviderError, WatchdogError
from .._logging import logger
from .._registry import StopOrderRegistry
from .._report import CancelReport
from .._validation import (
    check_account_id,
    check_base_url,
    check_bulk_settings,
    check_count,
    check_seconds,
    check_token_source,
)
from ._protocol import (
    LINE_LIMIT,
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
    decode_results,
    encode,
    jwt_expiry,
)

if TYPE_CHECKING:
    from .._auth import TokenProvider
    from .._report import CancelResult

__all__ = ["Watchdog", "WatchdogError"]

#: Seconds to wait for the watchdog's preflight and warm-up.
DEFAULT_START_TIMEOUT: Final = 30.0
#: A fresh token is fetched at most this long before it is needed.
_REFRESH_AHEAD_MAX: Final = 300.0
#: Seconds a disarmed watchdog gets to exit before it is killed.
_EXIT_GRACE: Final = 10.0

_decoder: Final = msgspec.json.Decoder(WatchdogMessage)


class Watchdog:
    """A dead man's switch in a separate process that cancels a durable registry's stops.

    ::

        registry = asyncstop.StopOrderRegistry.open("stops.db")
        async with asyncstop.Watchdog(
            registry, base_url=..., token=..., account_id=...,
            heartbeat_interval=0.5, heartbeat_timeout=3.0, deadline=10.0,
        ) as watchdog:
            ...                                   # the bot; registry.add() every stop it places
            report = await watchdog.fire()        # cancel every stop, from the watchdog

    Entering starts ``python -m asyncstop._watchdog`` in its own session (a
    terminal's Ctrl-C does not reach it) with its own client; it returns once
    the watchdog passed preflight and warmed its connections. The token goes
    over a private pipe, never on a command line or in an environment. The
    watchdog cancels every stop in the registry (and removes what it
    cancelled) when the bot dies (the pipe closes without a clean exit: at
    once), when no heartbeat came for ``heartbeat_timeout`` seconds (the bot's
    loop froze or its process stopped), or when :meth:`fire` asks.
    After firing on its own it appends its report to :attr:`report_path` as
    JSON lines and exits 0 when no order may still be live, 1 otherwise.

    Leaving the block normally disarms it: nothing is cancelled. Leaving it
    with an exception (cancellation and KeyboardInterrupt included) fires it
    first, unless ``fire_on_error=False``. If the watchdog dies, the bot
    learns it (an ERROR log record, :attr:`alive` False); :meth:`restart`
    starts a new one.

    ``token`` may be an async provider: the bot's side then fetches a fresh
    token ahead of the JWT's ``exp`` claim and passes it on, so that the
    watchdog holds one valid for longer than ``heartbeat_timeout + deadline``.
    """

    def __init__(
        self,
        registry: StopOrderRegistry,
        *,
        base_url: str,
        token: str | TokenProvider,
        account_id: str | None = None,
        heartbeat_interval: float = 0.5,
        heartbeat_timeout: float = 3.0,
        deadline: float | None = 10.0,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        hedge: float | Literal["auto"] | None = DEFAULT_KILL_SWITCH_HEDGE,
        fire_on_error: bool = True,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float = DEFAULT_TIMEOUT,
        preflight: bool = True,
        warm_up: bool = True,
        start_timeout: float = DEFAULT_START_TIMEOUT,
    ) -> None:
        path = registry.path
        if path is None:
            raise InvalidInputError(
                "the watchdog reads the registry from its own process: "
                "use a durable one, StopOrderRegistry.open(path)"
            )
        self.registry: Final = registry
        self.base_url: Final = check_base_url(base_url)
        self.account_id: Final = None if account_id is None else check_account_id(account_id)
        self._token: str | None
        self._provider: TokenProvider | None
        self._token, self._provider = check_token_source(token)
        check_seconds("heartbeat_interval", heartbeat_interval)
        check_seconds("heartbeat_timeout", heartbeat_timeout)
        if not heartbeat_timeout > heartbeat_interval:
            raise InvalidInputError(
                f"heartbeat_timeout ({heartbeat_timeout!r}) must be longer than "
                f"heartbeat_interval ({heartbeat_interval!r})"
            )
        check_bulk_settings(
            deadline=deadline, concurrency=concurrency, rate_limit=rate_limit, hedge=hedge
        )
        check_count("max_concurrency", max_concurrency, minimum=1)
        check_seconds("timeout", timeout)
        check_seconds("start_timeout", start_timeout)
        self.heartbeat_interval: Final = heartbeat_interval
        self.heartbeat_timeout: Final = heartbeat_timeout
        self.deadline: Final = deadline
        self.concurrency: Final = concurrency
        self.rate_limit: Final = rate_limit
        self.hedge: Final = hedge
        self.fire_on_error: Final = fire_on_error
        self.max_concurrency: Final = max_concurrency
        self.timeout: Final = timeout
        self.preflight: Final = preflight
        self.warm_up: Final = warm_up
        self.start_timeout: Final = start_timeout
        #: Where a watchdog that fired on its own appends its report (JSON lines).
        self.report_path: Final = Path(f"{path}.watchdog.jsonl")
        self._registry_path = path
        self._process: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._fires: dict[int, tuple[asyncio.Future[CancelReport], list[CancelResult]]] = {}
        self._next_fire = 0
        self._alive = False
        self._closing = False

    # -- what the bot sees ---------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """The watchdog's process id (None before the first start)."""
        return None if self._process is None else self._process.pid

    @property
    def alive(self) -> bool:
        """True while the watchdog process is running and armed."""
        return self._alive

    @property
    def returncode(self) -> int | None:
        """The exit status of the watchdog process once it has exited, else None."""
        return None if self._process is None else self._process.returncode

    def __repr__(self) -> str:
        return (
            f"<Watchdog pid={self.pid} alive={self._alive} registry={str(self._registry_path)!r}>"
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
        fire = exc is not None and self.fire_on_error
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
        names the cause, such as ``"AuthenticationError"``), and
        :class:`TokenProviderError` when the token provider raises, takes
        longer than ``timeout`` or gives an unusable token (then no process is
        started).
        """
        if self._alive:
            raise RuntimeError(f"the watchdog (pid {self.pid}) is running already")
        await self._cleanup_tasks()
        self._closing = False
        token = await self._first_token()
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop._watchdog",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
            env=_child_env(token),
            limit=LINE_LIMIT,
        )
        self._process = process
        try:
            ready = await self._handshake(process, token)
        except WatchdogError as err:
            if err.kind is not None:
                await _end(process)  # it said why and is exiting: let it finish
                raise
            # Not ready in time: it must not arm later and fire on the closed pipe.
            process.kill()
            await process.wait()
            raise
        except BaseException:
            process.kill()
            await process.wait()
            raise
        self._alive = True
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._beat(process), name="asyncstop-watchdog-heartbeat"),
            loop.create_task(self._read(process), name="asyncstop-watchdog-reader"),
            loop.create_task(self._wait(process), name="asyncstop-watchdog-wait"),
        ]
        if self._provider is not None:
            self._tasks.append(
                loop.create_task(self._refresh(process), name="asyncstop-watchdog-token")
            )
        logger.info("watchdog %d armed for %s", ready.pid, self._registry_path)

    async def restart(self) -> None:
        """Start a new watchdog after the last one died (no-op while one is alive)."""
        if not self._alive:
            await self.start()

    async def fire(self) -> CancelReport:
        """Cancel every stop in the registry from the watchdog's process; return its report.

        The cancels run in the watchdog, so this loop only waits for the
        report. Cancelling this call does not stop the watchdog's run.
        Raises :class:`WatchdogError` when the watchdog is gone or fails, or
        sends no report within ``deadline`` plus a grace.
        """
        process = self._require_alive()
        assert process.stdin is not None
        request = self._next_fire = self._next_fire + 1
        future: asyncio.Future[CancelReport] = asyncio.get_running_loop().create_future()
        self._fires[request] = (future, [])
        try:
            try:
                process.stdin.write(encode(Fire(id=request)))
                await process.stdin.drain()
            except (ConnectionError, RuntimeError) as err:
                self._lost(f"its pipe broke ({err})")
            limit = None if self.deadline is None else self.deadline + _EXIT_GRACE
            try:
                async with asyncio.timeout(limit):
                    return await future
            except TimeoutError:
                raise WatchdogError(f"the watchdog sent no report within {limit:g} s") from None
        finally:
            self._fires.pop(request, None)

    async def close(self) -> None:
        """Disarm the watchdog and let it exit without cancelling anything; idempotent."""
        self._closing = True
        self._alive = False
        process = self._process
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            try:
                process.stdin.write(encode(Disarm()))
                await process.stdin.drain()
            except (ConnectionError, RuntimeError):
                pass
            await _end(process)
        await self._cleanup_tasks()

    # -- the machinery -------------------------------------------------------------------------

    def _require_alive(self) -> asyncio.subprocess.Process:
        process = self._process
        if not self._alive or process is None:
            raise WatchdogError(
                "the watchdog is not running: use `async with Watchdog(...)`, "
                "or `await watchdog.restart()` after it died"
            )
        return process

    async def _first_token(self) -> str:
        if self._provider is None:
            assert self._token is not None
            token = self._token
        else:
            token = await fetch_token(self._provider, self.timeout)
            self._token = token
        expiry = jwt_expiry(token)
        if expiry is not None and expiry - time.time() < self._token_need:
            logger.warning(
                "the watchdog's token expires in %.0f s, sooner than heartbeat_timeout + deadline "
                "(%.0f s): a watchdog firing after that cannot cancel",
                expiry - time.time(),
                self._token_need,
            )
        return token

    @property
    def _token_need(self) -> float:
        """How long a token must stay valid: until a fire's deadline after the last heartbeat."""
        return self.heartbeat_timeout + (self.deadline if self.deadline is not None else 0.0)

    async def _handshake(self, process: asyncio.subprocess.Process, token: str) -> Ready:
        assert process.stdin is not None
        assert process.stdout is not None
        config = Config(
            registry=str(self._registry_path),
            report_path=str(self.report_path),
            base_url=self.base_url,
            token=token,
            account_id=self.account_id,
            heartbeat_timeout=self.heartbeat_timeout,
            deadline=self.deadline,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            hedge=self.hedge,
            max_concurrency=self.max_concurrency,
            timeout=self.timeout,
            preflight=self.preflight,
            warm_up=self.warm_up,
        )
        try:
            process.stdin.write(encode(config))
            await process.stdin.drain()
            async with asyncio.timeout(self.start_timeout):
                line = await process.stdout.readline()
        except TimeoutError:
            raise WatchdogError(
                f"the watchdog was not ready within {self.start_timeout:g} s"
            ) from None
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

    async def _beat(self, process: asyncio.subprocess.Process) -> None:
        stdin = process.stdin
        assert stdin is not None
        while True:
            try:
                stdin.write(encode(Heartbeat(sent=time.monotonic())))
                await stdin.drain()
            except (ConnectionError, RuntimeError) as err:
                self._lost(f"its heartbeat pipe broke ({type(err).__name__})")
                return
            await asyncio.sleep(self.heartbeat_interval)

    async def _read(self, process: asyncio.subprocess.Process) -> None:
        stdout = process.stdout
        assert stdout is not None
        while True:
            try:
                line = await stdout.readline()
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

    async def _wait(self, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        self._lost(
            f"it exited with status {status} (if it fired on its own, its report is "
            f"appended to {self.report_path})"
        )

    async def _refresh(self, process: asyncio.subprocess.Process) -> None:
        provider = self._provider
        stdin = process.stdin
        assert provider is not None
        assert stdin is not None
        token = self._token
        assert token is not None
        received = time.time()
        warned = False
        while True:
            expiry = jwt_expiry(token)
            if expiry is None:
                return  # no exp claim: nothing to schedule by; a 401 still refreshes
            need = self._token_need
            ahead = min(_REFRESH_AHEAD_MAX, max(0.0, (expiry - received - need) / 2))
            wait = expiry - need - ahead - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                fresh = await fetch_token(provider, self.timeout)
            except TokenProviderError as err:
                reason = str(err)
            else:
                fresh_expiry = jwt_expiry(fresh)
                reason = "the token provider returned a token that expires no later"
                if fresh_expiry is None or fresh_expiry > expiry:
                    token, received = fresh, time.time()
                    self._token = fresh
                    try:
                        stdin.write(encode(Token(token=fresh)))
                        await stdin.drain()
                    except (ConnectionError, RuntimeError):
                        return  # the heartbeat task reports the broken pipe
                    warned = False
                    continue
            left = expiry - time.time()
            if not warned:
                logger.warning(
                    "%s; the watchdog's token expires in %.0f s (it needs %.0f s ahead)",
                    reason,
                    left,
                    need,
                )
                warned = True
            await asyncio.sleep(min(30.0, max(1.0, left / 4)))

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


async def _end(process: asyncio.subprocess.Process) -> None:
    """Close the watchdog's stdin and wait for it to exit; kill it after a grace."""
    if process.stdin is not None:
        process.stdin.close()
    try:
        async with asyncio.timeout(_EXIT_GRACE):
            await process.wait()
    except TimeoutError:
        logger.error("the watchdog %d did not exit: killing it", process.pid)
        process.kill()
        await process.wait()


def _child_env(token: str) -> dict[str, str]:
    """This environment minus anything holding the token, and this asyncstop first on the path."""
    env = {name: value for name, value in os.environ.items() if token not in value}
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
