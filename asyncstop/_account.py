"""Per-account state shared by every call of one client: headers, 429 pause, slow start."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Final

from aiolimiter import AsyncLimiter

from ._auth import Auth
from ._constants import API_ACCEPT, API_CONTENT_TYPE, RATE_LIMIT_TOLERANCE

__all__ = ["Account", "AccountBook", "new_limiter"]

#: A slow start ends when its window reaches this many requests in flight.
SLOW_START_END: Final = 1024


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
        #: The token generation ``headers`` were built with (-1: not built yet).
        self.token_generation = -1
        #: Loop time until which no request for this account may start (a 429 pause).
        self.paused_until = 0.0
        #: Requests of this account in flight now.
        self.active = 0
        #: How many may be in flight during a slow start; 0 when not limited.
        self.window = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def headers_for(self, auth: Auth) -> dict[str, str]:
        """The documented request headers for this account, rebuilt when the token changed."""
        if self.token_generation != auth.generation:
            self.headers = {
                "Authorization": auth.authorization,
                "accountId": self.account_id,
                "Content-Type": API_CONTENT_TYPE,
                "Accept": API_ACCEPT,
            }
            self.token_generation = auth.generation
        return self.headers

    @property
    def idle(self) -> bool:
        """True when nothing of this account is in flight, waiting, paused or slowed."""
        return not (self.active or self.waiters or self.window) and (
            self.paused_until <= asyncio.get_running_loop().time()
        )

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


class AccountBook:
    """The accounts one client has in use, and their pacing limiters.

    An account's state lives as long as a call uses it or its 429 pause or slow
    start is still in force; :meth:`prune` frees the rest, so a client that
    has cancelled for many accounts over its life does not keep them all.
    """

    __slots__ = ("_accounts", "_limiters", "rate_limit")

    def __init__(self, rate_limit: float | None) -> None:
        #: The client's default pacing, in requests per second per account.
        self.rate_limit = rate_limit
        self._accounts: dict[str, Account] = {}
        self._limiters: dict[str, AsyncLimiter] = {}

    def get(self, account_id: str) -> Account:
        """The state of ``account_id`` (validated by the caller), created on first use."""
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = Account(account_id)
        return account

    def limiter(self, account_id: str, rate: float | None = None) -> AsyncLimiter | None:
        """The shared pacing limiter for an account at ``rate`` (default: the client's), or None."""
        rate = self.rate_limit if rate is None else rate
        if rate is None:
            return None
        limiter = self._limiters.get(account_id)
        if limiter is None or limiter.max_rate / limiter.time_period != rate:
            limiter = self._limiters[account_id] = new_limiter(rate)
        return limiter

    def prune(self) -> None:
        """Forget the accounts that are idle (their state would be created afresh anyway)."""
        for account_id in [a for a, account in self._accounts.items() if account.idle]:
            del self._accounts[account_id]
            self._limiters.pop(account_id, None)

    def __len__(self) -> int:
        return len(self._accounts)


def new_limiter(rate: float) -> AsyncLimiter:
    """A leaky bucket that lets ``rate`` requests per second through, evenly.

    Its capacity is one request plus ``RATE_LIMIT_TOLERANCE`` seconds' worth:
    enough to absorb an event loop that wakes a waiter a little late (with a
    capacity of exactly 1 every late wake-up is time lost for good, and the
    call falls behind the rate), yet no real burst. The default aiolimiter
    bucket, a whole second's worth, would open with a burst of ``rate``
    requests that a server counting in a sliding window would refuse.
    """
    capacity = 1 + rate * RATE_LIMIT_TOLERANCE
    return AsyncLimiter(capacity, capacity / rate)
