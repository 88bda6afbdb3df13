"""One order's cancel across its attempts: turns, the 429 pause, token refresh, one deadline rule.

:class:`Canceller` is the per-order engine. The single call and the bulk
engine both go through it, so both honour the same account-wide 429 pause,
rate limit, slow start, token refresh and retry policy. It is handed to the
bulk engine as an object; it knows nothing of the client above it.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from typing import TYPE_CHECKING, Final

from ._account import Account, AccountBook
from ._auth import Auth
from ._constants import DEFAULT_RATE_LIMIT_PAUSE, MIN_ATTEMPT_BUDGET
from ._errors import (
    APIError,
    AsyncStopError,
    AuthenticationError,
    OrderNotFoundError,
    RateLimitError,
)
from ._logging import logger
from ._models import StopOrder
from ._retry import RetryDecision, RetryPolicy, outcome_unknown
from ._transport import Transport

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["Canceller", "Deadline", "DeadlinePassed", "OrderCancel", "Slots"]


class DeadlinePassed(Exception):
    """Internal: the deadline left no time for another attempt; nothing more was sent."""


class Deadline:
    """One absolute point in loop time (or none), and the one rule for what may still start.

    An attempt may start only if at least ``MIN_ATTEMPT_BUDGET`` seconds are
    left when it would start: with less, no answer could come back in time, and
    not sending keeps the report exact (``not_sent`` rather than ``unknown``).
    The same rule decides whether a wait (a backoff, a 429 pause) is worth it.
    """

    __slots__ = ("at", "latest_start")

    def __init__(self, at: float | None) -> None:
        #: Loop time of the deadline; None: no deadline.
        self.at: Final = at
        #: Loop time after which no attempt may start; None: no deadline.
        self.latest_start: Final = None if at is None else at - MIN_ATTEMPT_BUDGET

    def time_left(self) -> float | None:
        """Seconds left (may be negative), or None without a deadline."""
        if self.at is None:
            return None
        return self.at - asyncio.get_running_loop().time()

    def allows(self, wait: float = 0.0) -> bool:
        """True if an attempt started ``wait`` seconds from now would still be in time."""
        latest = self.latest_start
        return latest is None or asyncio.get_running_loop().time() + wait <= latest

    def __repr__(self) -> str:
        return f"<Deadline at={self.at!r}>"


#: No deadline at all (the single-order call, bounded by the caller's own timeout).
NO_DEADLINE: Final = Deadline(None)


class Slots:
    """The requests in flight a call allows: a FIFO counting semaphore where hedges go first.

    A hedge exists to cut a slow reply short; behind every fresh order of a
    busy call it would come too late to help. Urgent waiters are served before
    the others, in their own FIFO order.
    """

    __slots__ = ("_free", "_urgent", "_waiters")

    def __init__(self, count: int) -> None:
        self._free = count
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._urgent: deque[asyncio.Future[None]] = deque()

    async def acquire(self, *, urgent: bool = False) -> None:
        """Take a slot, waiting for one if none is free."""
        if self._free > 0 and not self._waiters and not self._urgent:
            self._free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._waiters).append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as the waiter was cancelled
            raise

    def release(self) -> None:
        """Give a slot back: to the first urgent waiter, else the first waiter, else the pool."""
        for queue in (self._urgent, self._waiters):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        self._free += 1


class OrderCancel:
    """One order's cancel across all its attempts: what was sent and what came back."""

    __slots__ = (
        "account",
        "attempts",
        "auth_refreshed",
        "confirming",
        "deadline",
        "last_error",
        "limiter",
        "not_before",
        "order_id",
        "retry",
        "semaphore",
        "sent_at",
        "sent_waiter",
        "unknown_seen",
    )

    def __init__(
        self,
        account: Account,
        order_id: str,
        *,
        deadline: Deadline = NO_DEADLINE,
        semaphore: Slots | None = None,
        limiter: AsyncLimiter | None = None,
    ) -> None:
        self.account = account
        self.order_id = order_id
        self.deadline = deadline
        self.semaphore = semaphore
        self.limiter = limiter
        #: Requests for this order that reached the wire so far.
        self.attempts = 0
        #: True once a sent attempt ended with an unknown outcome (it may have cancelled).
        self.unknown_seen = False
        self.auth_refreshed = False
        #: The error of the latest failed attempt.
        self.last_error: AsyncStopError | None = None
        #: The retry policy's state, from the first failure on.
        self.retry: RetryDecision | None = None
        #: Loop time before which the next attempt may not start (a retry's backoff).
        self.not_before = 0.0
        #: ``time.monotonic()`` when the latest request reached the wire.
        self.sent_at = 0.0
        #: Resolved with ``sent_at`` when the next request reaches the wire (hedging).
        self.sent_waiter: asyncio.Future[float] | None = None
        #: A 404 is being confirmed by a second request.
        self.confirming = False

    def request_sent(self) -> None:
        """The transport's signal: a request of this order reached the wire."""
        self.attempts += 1
        self.sent_at = sent_at = time.monotonic()
        waiter = self.sent_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(sent_at)


class Canceller:
    """Cancels one order at a time through the transport, with the client's shared state.

    ``reply_times`` is the client's window of recent reply times (seconds from
    the wire to the answer, for 200s and 404s), fed by every request, so that
    ``hedge="auto"`` knows the exchange before an emergency. A request that
    got no answer (lost, timed out, abandoned) adds its age negated: a lower
    bound. A request is timed here only when no other request of the same
    order went out meanwhile (a hedge); the hedger times those itself.
    """

    __slots__ = ("accounts", "auth", "reply_times", "retry_policy", "transport")

    def __init__(
        self,
        *,
        transport: Transport,
        auth: Auth,
        accounts: AccountBook,
        retry_policy: RetryPolicy,
        reply_times: deque[float] | None = None,
    ) -> None:
        self.transport = transport
        self.auth = auth
        self.accounts = accounts
        self.retry_policy = retry_policy
        self.reply_times = reply_times

    async def cancel(self, call: OrderCancel) -> StopOrder:
        """Cancel with retries, sleeping between attempts (the single-order call)."""
        while True:
            try:
                return await self.attempt(call)
            except APIError as err:
                wait = self.next_wait(call, err)
                if wait is None:
                    raise
            await asyncio.sleep(wait)

    def next_wait(self, call: OrderCancel, err: APIError) -> float | None:
        """Seconds to wait before retrying ``call`` after ``err``, or None when it is final."""
        wait, call.retry = self.retry_policy.next_wait(
            call.retry, err, latest_start=call.deadline.latest_start
        )
        return wait

    async def attempt(self, call: OrderCancel, *, urgent: bool = False) -> StopOrder:
        """Send one request for ``call`` (two if a 401 is cured by a fresh token).

        ``urgent`` (a hedge) takes the next free slot ahead of fresh orders.
        """
        account = call.account
        loop = asyncio.get_running_loop()
        semaphore = call.semaphore
        while True:
            if account.paused_until or account.window or call.limiter is not None:
                await self._wait_for_turn(call, loop)
            if semaphore is None:
                break
            await semaphore.acquire(urgent=urgent)
            # A 429 may have paused the account while this task waited for a slot.
            if account.paused_until <= loop.time() and not (
                account.window and account.active >= account.window
            ):
                break
            semaphore.release()
        try:
            return await self._attempt_now(call, loop)
        finally:
            if semaphore is not None:
                semaphore.release()

    async def _attempt_now(
        self, call: OrderCancel, loop: asyncio.AbstractEventLoop, *, fresh: bool = False
    ) -> StopOrder:
        """Send one request for ``call`` now that it may go (``fresh``: on a new connection)."""
        account = call.account
        deadline = call.deadline
        if not deadline.allows():
            raise DeadlinePassed
        limits = (
            self.transport.default_limits
            if deadline.at is None
            else self.transport.timeout.limits(deadline.time_left())
        )
        headers = account.headers_for(self.auth)
        generation = account.token_generation
        sent_before = call.attempts
        # This request's own answer came on a reused keep-alive connection (a hedge
        # of the same order has its own): only such an answer can be a stray one.
        reused = False

        def answered(on_reused: bool) -> None:
            nonlocal reused
            reused = on_reused

        account.active += 1
        try:
            order = await self.transport.delete_stop_order(
                call.order_id, headers, limits, call.request_sent, answered, fresh=fresh
            )
        except APIError as err:
            account.released()
            call.last_error = err
            if outcome_unknown(err):
                call.unknown_seen = True
                self._time(call, sent_before, answered=False)
            elif isinstance(err, OrderNotFoundError):
                err.after_unknown_attempt = call.unknown_seen
                account.succeeded()
                self._time(call, sent_before, answered=True)
                if reused and not call.confirming:
                    return await self._confirm_not_found(call, err, loop)
            elif isinstance(err, RateLimitError):
                self._pause(account, err, loop)
            elif (
                isinstance(err, AuthenticationError)
                and self.auth.can_refresh
                and not call.auth_refreshed
            ):
                call.auth_refreshed = True
                await self.auth.refresh(generation, limit=limits.total)
                return await self._attempt_now(call, loop, fresh=fresh)
            raise
        except BaseException:
            account.released()
            self._time(call, sent_before, answered=False)
            raise
        account.released()
        account.succeeded()
        reply_times = self.reply_times
        if reply_times is not None and call.attempts == sent_before + 1:
            reply_times.append(time.monotonic() - call.sent_at)
        return order

    async def _confirm_not_found(
        self, call: OrderCancel, first: OrderNotFoundError, loop: asyncio.AbstractEventLoop
    ) -> StopOrder:
        """A 404 read on a reused keep-alive connection: ask once more before believing it.

        A 404 names no order, so a stray answer left on a connection (a broken
        proxy's, written after the next request went out) passes for any
        order's. A second 404 confirms the first; a cancel proves the first
        answer was not this order's; any other answer leaves the outcome to the
        retry policy. With no time left for a second request, the first 404
        stands. The second request takes a pooled connection, unless strays
        have shown on this client's connections (:meth:`Transport.saw_stray`):
        then a new one, which carries no earlier answer.
        """
        account = call.account
        call.confirming = True
        try:
            if account.paused_until or account.window or call.limiter is not None:
                try:
                    await self._wait_for_turn(call, loop)
                except DeadlinePassed:
                    raise first from None
            if not call.deadline.allows():
                raise first
            # Where strays have shown, on a new connection: it carries no earlier answer.
            order = await self._attempt_now(call, loop, fresh=self.transport.stray_seen)
        finally:
            call.confirming = False
        self.transport.saw_stray()
        logger.warning(
            "order %s: a 404 read on a reused keep-alive connection was not this order's "
            "answer (a second request cancelled it): a stray answer on that connection?",
            call.order_id,
        )
        return order

    def _time(self, call: OrderCancel, sent_before: int, *, answered: bool) -> None:
        """Add the request's reply time (or its age, negated, if it got no answer) to the window."""
        reply_times = self.reply_times
        if reply_times is not None and call.attempts == sent_before + 1:
            age = time.monotonic() - call.sent_at
            reply_times.append(age if answered else -age)

    def _pause(
        self, account: Account, err: RateLimitError, loop: asyncio.AbstractEventLoop
    ) -> None:
        """Pause the account as the 429 asks, but never longer than ``max_retry_after``.

        One 429 with ``Retry-After: 86400`` must not silence the account for a
        day on a long-lived client: later calls would return at once with
        every order ``not_sent``.
        """
        pause = DEFAULT_RATE_LIMIT_PAUSE if err.retry_after is None else err.retry_after
        cap = self.retry_policy.max_retry_after
        if pause > cap:
            logger.warning(
                "HTTP 429 for %s asked for a %.0fs pause; pausing %.3gs (max_retry_after)",
                account.account_id,
                pause,
                cap,
            )
            pause = cap
        account.rate_limited(loop.time() + pause)
        logger.info("HTTP 429 for %s: pausing the account %.3fs", account.account_id, pause)

    async def _wait_for_turn(self, call: OrderCancel, loop: asyncio.AbstractEventLoop) -> None:
        """Wait out the account's 429 pause, the rate limiter and the slow start, in time."""
        account = call.account
        while True:
            wait = account.paused_until - loop.time()
            if wait > 0:
                if not call.deadline.allows(wait):
                    raise DeadlinePassed
                await asyncio.sleep(wait)
                continue
            if call.limiter is not None:
                await call.limiter.acquire()
            if account.window and account.active >= account.window:
                await account.wait_for_window()
            if account.paused_until <= loop.time():
                return
