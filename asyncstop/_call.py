"""One order's cancel across its attempts, and the per-account state every call shares."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ._errors import APIError

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

__all__ = ["Account", "CancelCall", "DeadlinePassed"]


class DeadlinePassed(Exception):
    """Internal: the deadline left no time for another attempt; nothing was sent."""


class Account:
    """Per-account state shared by every call of one client: headers and the 429 pause."""

    __slots__ = ("account_id", "headers", "paused_until", "token_generation")

    def __init__(self, account_id: str) -> None:
        self.account_id = account_id
        self.headers: dict[str, str] = {}
        self.token_generation = -1
        # Loop time until which no request for this account may start (a 429 pause).
        self.paused_until = 0.0


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
