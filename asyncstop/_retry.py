"""When to retry and how long to wait, decided with tenacity's strategies.

The policy: connection errors, timeouts, 408, 409, 429, 5xx and a 2xx that is
no evidence of the cancel are retried; other statuses are final. A server's
``Retry-After`` (seconds, fractional seconds, or an HTTP date) wins over the
computed backoff; a ``Retry-After`` longer than ``max_retry_after`` ends the
retries instead of sleeping through the caller's emergency. Otherwise the wait
is exponential backoff with jitter. No retry is started that could not start
before the call's deadline.
"""

from __future__ import annotations

import email.utils
import logging
import math
import random
from collections.abc import Callable
from datetime import UTC, datetime

from tenacity import AsyncRetrying, Future, RetryCallState, retry_if_exception

from ._constants import (
    INITIAL_RETRY_DELAY,
    MAX_RATE_LIMITED_RETRIES,
    MAX_RETRY_DELAY,
)
from ._errors import (
    APIConnectionError,
    APIStatusError,
    RateLimitError,
    ResponseValidationError,
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
    """True for errors a retry may cure: connection errors, timeouts, 408, 409, 429, 5xx.

    A 2xx that is no evidence of the cancel (``ResponseValidationError``) is
    retried like a 5xx: something between us and the exchange answered.
    """
    if isinstance(err, APIConnectionError | ResponseValidationError):
        return True
    if isinstance(err, APIStatusError):
        return err.status_code in (408, 409, 429) or err.status_code >= 500
    return False


def outcome_unknown(err: BaseException) -> bool:
    """True when the failed attempt may nevertheless have cancelled the order.

    A dropped connection or a timeout may hit after the exchange applied the
    cancel, a 5xx may be sent after it, and a 2xx from something that is not
    the exchange hides what the exchange did. A 408, 409 or 429 says the
    request was not acted on, and a request that never left did nothing.
    """
    if isinstance(err, APIConnectionError):
        return err.request_sent
    return isinstance(err, ServerError | ResponseValidationError)


class RetryDecision:
    """One order's retry bookkeeping: tenacity's call state, kept between attempts."""

    __slots__ = ("rate_limited", "state")

    def __init__(self, state: RetryCallState) -> None:
        self.state = state
        state.attempt_number = 0
        #: 429s met so far (they do not use up ``max_retries``).
        self.rate_limited = 0


class RetryPolicy:
    """When to retry and how long to wait, built from tenacity's retry, wait and stop strategies.

    The policy decides; the caller waits. The bulk engine puts a failed order
    back in its queue with a not-before time instead of sleeping on a worker,
    so the same decision serves a worker that must not block and the single
    call that simply sleeps.

    A 429 does not use up ``max_retries``: the exchange did not act on the
    request, and the account-wide pause already honours its request to slow
    down. 429s are bounded by the deadline instead, and by
    ``MAX_RATE_LIMITED_RETRIES`` per order.
    """

    __slots__ = ("_controller", "_retry", "max_retries", "max_retry_after")

    def __init__(self, *, max_retries: int, max_retry_after: float) -> None:
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._retry = retry_if_exception(_is_retryable_logged)
        # Only the owner of each RetryCallState; its own loop is never run.
        self._controller = AsyncRetrying()

    def wait_for(self, err: BaseException, retry_number: int) -> float:
        """Seconds to wait after ``err`` before retry number ``retry_number``."""
        if isinstance(err, RateLimitError) and err.retry_after is not None:
            return err.retry_after
        return backoff_delay(retry_number)

    def next_wait(
        self,
        decision: RetryDecision | None,
        err: BaseException,
        *,
        may_wait: Callable[[float], bool],
    ) -> tuple[float | None, RetryDecision | None]:
        """Decide on a failed attempt: seconds to wait before the next one, or None to stop.

        Every failed attempt counts toward ``max_retries``, whether or not it
        reached the wire (a refused connection is retried, but not forever).
        ``may_wait(seconds)`` tells whether a retry after that wait could still
        start before the caller's deadline. Returns the decision state to pass
        back on the next failure.
        """
        if self.max_retries == 0 or not is_retryable(err):
            return None, decision
        if decision is None:
            decision = RetryDecision(RetryCallState(self._controller, None, (), {}))
        state = decision.state
        state.attempt_number += 1
        state.outcome = Future.construct(state.attempt_number, err, has_exception=True)
        if not self._retry(state):
            return None, decision
        if isinstance(err, RateLimitError):
            decision.rate_limited += 1
            if decision.rate_limited > MAX_RATE_LIMITED_RETRIES:
                return None, decision
        elif state.attempt_number - decision.rate_limited > self.max_retries:
            return None, decision
        wait = self.wait_for(err, state.attempt_number - decision.rate_limited)
        # tenacity's state would hold the error (and its traceback's frames) until
        # the next failure; drop the traceback so no cycle outlives the wait.
        forget_traceback(err)
        if wait > self.max_retry_after:
            logger.debug("not retrying: the exchange asked for a %.3gs pause", wait)
            return None, decision
        if not may_wait(wait):
            logger.debug("not retrying: a %.3gs wait would pass the deadline", wait)
            return None, decision
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "retrying in %.3fs after attempt %d failed: %s", wait, state.attempt_number, err
            )
        return wait, decision


def _is_retryable_logged(err: BaseException) -> bool:
    retry = is_retryable(err)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s after %s: %s", "retryable" if retry else "final", type(err).__name__, err)
    return retry
