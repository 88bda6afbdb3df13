"""When to retry, how long to wait, and the tenacity controller that applies it.

The policy: connection errors, timeouts, 408, 409, 429 and 5xx are retried;
other statuses are final. A server's ``Retry-After`` (seconds, fractional
seconds, or an HTTP date) wins over the computed backoff; a ``Retry-After``
longer than ``max_retry_after`` ends the retries instead of sleeping through the
caller's emergency. Otherwise the wait is exponential backoff with jitter. No
retry is started that could not finish before the call's deadline.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception
from tenacity.stop import stop_base

from ._constants import (
    INITIAL_RETRY_DELAY,
    MAX_RATE_LIMITED_RETRIES,
    MAX_RETRY_DELAY,
)
from ._errors import (
    APIConnectionError,
    APIStatusError,
    RateLimitError,
    ServerError,
    forget_traceback,
)
from ._logging import logger

__all__ = [
    "RetryPolicy",
    "backoff_delay",
    "is_retryable",
    "jitter",
    "outcome_unknown",
    "parse_retry_after",
]

T = TypeVar("T")


def jitter() -> float:
    """Return a random factor in [0, 1); the one place randomness enters the backoff."""
    return random.random()


def backoff_delay(
    retry_number: int,
    *,
    initial: float = INITIAL_RETRY_DELAY,
    maximum: float = MAX_RETRY_DELAY,
) -> float:
    """Seconds to wait before retry number ``retry_number`` (1 for the first retry).

    Exponential with "equal jitter": half the step is fixed, half random, so
    clients that failed together do not retry together, yet never retry at once.
    """
    step = min(maximum, initial * 2.0 ** max(0, retry_number - 1))
    return step / 2 + step / 2 * jitter()


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Return the pause a ``Retry-After`` header asks for, in seconds, or None if unusable.

    Accepts delay-seconds ("2"), fractional seconds ("0.25", which some
    exchanges send), and an HTTP date. A date in the past means no pause (0).
    """
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return seconds if math.isfinite(seconds) and seconds >= 0 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def is_retryable(err: BaseException) -> bool:
    """True for errors a retry may cure: connection errors, timeouts, 408, 409, 429, 5xx."""
    if isinstance(err, APIConnectionError):
        return True
    if isinstance(err, APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return False


def outcome_unknown(err: BaseException) -> bool:
    """True when the failed attempt may nevertheless have cancelled the order.

    A dropped connection or a timeout may hit after the exchange applied the
    cancel, and a 5xx may be sent after it. A 408, 409 or 429 says the request
    was not acted on.
    """
    return isinstance(err, APIConnectionError | ServerError)


class RetryPolicy:
    """The retry settings of one client, and the tenacity controller built from them."""

    __slots__ = ("_template", "max_retries", "max_retry_after")

    def __init__(self, *, max_retries: int, max_retry_after: float) -> None:
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._template = AsyncRetrying(
            retry=retry_if_exception(_is_retryable_logged),
            wait=self._wait,
            before_sleep=_log_sleep,
            reraise=True,
        )

    def wait_for(self, err: BaseException, retry_number: int) -> float:
        """Seconds to wait after ``err`` before retry number ``retry_number``."""
        if isinstance(err, RateLimitError) and err.retry_after is not None:
            return err.retry_after
        return backoff_delay(retry_number)

    def _wait(self, state: RetryCallState) -> float:
        assert state.outcome is not None
        err = state.outcome.exception()
        assert err is not None
        # tenacity keeps the failed attempt's error for the whole backoff sleep;
        # its traceback would tie it in a cycle with tenacity's own frames.
        forget_traceback(err)
        return self.wait_for(err, state.attempt_number)

    async def call(
        self,
        attempt: Callable[[], Awaitable[T]],
        *,
        first_error: BaseException | None = None,
        may_wait: Callable[[float], bool] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> T:
        """Run ``attempt`` under this policy and return its result or raise its last error.

        ``first_error`` is the failure of an attempt the caller already made
        outside tenacity (the fast path of a bulk cancel): tenacity then starts
        by deciding on that error, so its attempt count still equals the
        requests sent. ``may_wait(seconds)`` tells whether a retry after that
        wait could still start before the caller's deadline.
        """
        pending_error = first_error

        async def run() -> T:
            nonlocal pending_error
            if pending_error is not None:
                err, pending_error = pending_error, None
                raise err
            return await attempt()

        # A copy per call: tenacity keeps per-call state in a threading.local,
        # which concurrent tasks on one loop would otherwise share.
        retrying = self._template.copy(
            stop=_Stop(self.max_retries + 1, self.max_retry_after, may_wait),
            sleep=sleep,
        )
        try:
            return await retrying(run)
        finally:
            # Its last actions are bound methods of the controller itself: a
            # cycle per retried order that only the garbage collector would free.
            retrying.iter_state.reset()


class _Stop(stop_base):
    """Stop after the attempt budget, a too-long Retry-After, or when the deadline is near.

    A 429 does not use up the ``max_retries`` budget: the exchange did not act
    on the request, and the account-wide pause already honours its request to
    slow down. 429s are bounded by the deadline instead, and by
    ``MAX_RATE_LIMITED_RETRIES`` per order.
    """

    def __init__(
        self, max_attempts: int, max_wait: float, may_wait: Callable[[float], bool] | None
    ) -> None:
        self.max_attempts = max_attempts
        self.max_wait = max_wait
        self.may_wait = may_wait
        self.rate_limited = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        assert retry_state.outcome is not None
        if isinstance(retry_state.outcome.exception(), RateLimitError):
            self.rate_limited += 1
            if self.rate_limited > MAX_RATE_LIMITED_RETRIES:
                return True
        elif retry_state.attempt_number - self.rate_limited >= self.max_attempts:
            return True
        wait = retry_state.upcoming_sleep
        if wait > self.max_wait:
            logger.debug("not retrying: the exchange asked for a %.3gs pause", wait)
            return True
        if self.may_wait is not None and not self.may_wait(wait):
            logger.debug("not retrying: %.3gs wait would pass the deadline", wait)
            return True
        return False


def _is_retryable_logged(err: BaseException) -> bool:
    retry = is_retryable(err)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s after %s: %s", "retryable" if retry else "final", type(err).__name__, err)
    return retry


def _log_sleep(state: RetryCallState) -> None:
    if logger.isEnabledFor(logging.INFO):
        assert state.outcome is not None
        logger.info(
            "retrying in %.3fs after attempt %d failed: %s",
            state.upcoming_sleep,
            state.attempt_number,
            state.outcome.exception(),
        )
