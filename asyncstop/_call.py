"""One order's cancel across its attempts, and the per-account state every call shares."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

from ._errors import APIError

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["Account", "CancelCall", "DeadlinePassed"]

#: A slow start ends when its window reaches this many requests in flight.
SLOW_START_END: Final = 1024


class DeadlinePassed(Exception):
    """Internal: the deadline left no time for another attempt; nothing was sent."""


class Account:
    """Per-account state shared by every call of one client: headers, 429 pause, slow start.

    After a 429 the account does not resume at full concurrency, which would
    send the exchange the same burst that it just refused: it restarts with one
    request in flight and doubles the window with each success (TCP's slow
    start), until the window no longer limits anything.
    """

    __slots__ = (
        "account_id",
        "active",
        "headers",
        "paused_until",
        "token_generation",
        "waiters",
        "window",
    )

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.headers: dict[str, str] = {}
        self.token_generation = -1
        #: Loop time until which no request for this account may start (a 429 pause).
        self.paused_until = 0.0
        #: Requests of this account in flight now.
        self.active = 0
        #: How many may be in flight during a slow start; 0 when not limited.
        self.window = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def rate_limited(self, until: float) -> None:
        """A 429: pause until ``until`` (loop time), then restart with one request in flight."""
        self.paused_until = max(self.paused_until, until)
        self.window = 1

    def succeeded(self) -> None:
        """An answer that was not a 429: widen the slow-start window."""
        if self.window:
            self.window *= 2
            if self.window >= SLOW_START_END:
                self.window = 0
            self._wake()

    def released(self) -> None:
        """A request of this account is no longer in flight."""
        self.active -= 1
        if self.waiters:
            self._wake()

    async def wait_for_window(self) -> None:
        """Wait until the slow-start window lets one more request of this account go."""
        while self.window and self.active >= self.window:
            future = asyncio.get_running_loop().create_future()
            self.waiters.append(future)
            try:
                await future
            finally:
                if not future.done():
                    future.cancel()

    def _wake(self) -> None:
        room = (self.window - self.active) if self.window else len(self.waiters)
        while room > 0 and self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)
                room -= 1


class CancelCall:
    """One order's cancel across all its attempts."""

    __slots__ = (
        "account",
        "attempts",
        "auth_refreshed",
        "deadline_at",
        "last_error",
        "limiter",
        "order_id",
        "semaphore",
        "unknown_seen",
    )

    def __init__(
        self,
        account: Account,
        order_id: str,
        *,
        deadline_at: float | None = None,
        semaphore: asyncio.Semaphore | None = None,
        limiter: AsyncLimiter | None = None,
    ) -> None:
        self.account = account
        self.order_id = order_id
        self.deadline_at = deadline_at
        self.semaphore = semaphore
        self.limiter = limiter
        #: Requests sent for this order so far.
        self.attempts = 0
        #: True once an attempt ended with an unknown outcome (it may have cancelled).
        self.unknown_seen = False
        self.auth_refreshed = False
        #: The error of the latest failed attempt.
        self.last_error: APIError | None = None
