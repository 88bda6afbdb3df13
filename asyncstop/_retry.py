"""When to retry and how long to wait, decided by tenacity's strategies on a RetryCallState.

The policy: connection errors, timeouts, 408, 409, 429, 5xx and a 2xx that is
no evidence of the cancel are retried (``retry_if_exception``); other statuses
are final. A server's ``Retry-After`` (seconds, fractional seconds, or an HTTP
date) wins over the computed backoff (:class:`wait_retry_after`); a
``Retry-After`` longer than ``max_retry_after`` ends the retries instead of
sleeping through the caller's emergency. Otherwise the wait is exponential
backoff with equal jitter (``wait_exponential`` plus its jittered copy,
combined with ``wait_combine``). Retries stop after ``max_retries`` counted
failures or when the wait would pass the last moment an attempt may start
(``stop_after_attempt | stop_before_delay``).

The strategies are tenacity's own objects, evaluated the way its ``Retrying``
loop evaluates them (retry, then wait into ``upcoming_sleep``, then stop), on a
``RetryCallState`` kept per order. Tenacity's loop itself is not run: it would
sleep on the worker, and the bulk engine instead puts a failed order back in
its lane with a not-before time. The state's clock is the event loop's.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
from datetime import UTC, datetime

from tenacity import (
    AsyncRetrying,
    Future,
    RetryCallState,
    retry_if_exception,
    stop_after_attempt,
    stop_before_delay,
    wait_combine,
    wait_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

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
    "RetryDecision",
    "RetryPolicy",
    "backoff_delay",
    "backoff_wait",
    "is_retryable",
    "jitter",
    "outcome_unknown",
    "parse_retry_after",
    "wait_retry_after",
]


def jitter() -> float:
    """Return a random factor in [0, 1); the one place randomness enters the backoff."""
    return random.random()


def backoff_wait(
    initial: float = INITIAL_RETRY_DELAY, maximum: float = MAX_RETRY_DELAY
) -> wait_base:
    """Exponential backoff with "equal jitter", as a tenacity wait strategy.

    The step doubles per attempt from ``initial`` up to ``maximum``; half of it
    is fixed and half random, so clients that failed together do not retry
    together, yet never retry at once.
    """
    half = wait_exponential(multiplier=initial / 2, max=maximum / 2)

    def jittered_half(retry_state: RetryCallState) -> float:
        return half(retry_state) * jitter()

    return wait_combine(half, jittered_half)


_BACKOFF = backoff_wait()


def backoff_delay(retry_number: int) -> float:
    """Seconds the default backoff waits before retry number ``retry_number`` (1 for the first)."""
    state = RetryCallState(_CONTROLLER, None, (), {})
    state.attempt_number = retry_number
    return float(_BACKOFF(state))


class wait_retry_after(wait_base):
    """Wait as long as a 429's ``Retry-After`` asks, else as the ``fallback`` strategy says."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        err = outcome.exception() if outcome is not None else None
        if isinstance(err, RateLimitError) and err.retry_after is not None:
            return err.retry_after
        return float(self.fallback(retry_state))


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


#: Owner of the RetryCallStates made outside a policy (``backoff_delay``).
_CONTROLLER = AsyncRetrying()


class RetryDecision:
    """One order's retry state: tenacity's call state and the stop rule for its deadline."""

    __slots__ = ("rate_limited", "state", "stop", "stop_in_time")

    def __init__(
        self, state: RetryCallState, stop: stop_base, stop_in_time: stop_base | None
    ) -> None:
        self.state = state
        #: ``stop_after_attempt``, or-ed with ``stop_in_time`` when there is a deadline.
        self.stop = stop
        #: ``stop_before_delay`` up to the last moment an attempt may start, if any.
        self.stop_in_time = stop_in_time
        #: 429s met so far (they do not use up ``max_retries``).
        self.rate_limited = 0


class RetryPolicy:
    """When to retry and how long to wait, built from tenacity's retry, wait and stop strategies.

    The policy decides; the caller waits. The bulk engine puts a failed order
    back in its queue with a not-before time instead of sleeping on a worker,
    so the same decision serves a worker that must not block and the single
    call that simply sleeps.

    ``retrying`` holds the strategies (``retry``, ``wait``, ``stop``) and owns
    each order's ``RetryCallState``. The state's ``attempt_number`` is the
    attempt under way: it moves on after a counted failure, not after a 429,
    which does not use up ``max_retries`` (the exchange did not act on the
    request, and the account-wide pause already honours its request to slow
    down). 429s are bounded by the deadline instead, and by
    ``MAX_RATE_LIMITED_RETRIES`` per order.
    """

    __slots__ = ("_stop_after_attempts", "max_retries", "max_retry_after", "retrying")

    def __init__(self, *, max_retries: int, max_retry_after: float) -> None:
        self.max_retries = max_retries
        self.max_retry_after = max_retry_after
        self._stop_after_attempts = stop_after_attempt(max_retries + 1)
        self.retrying = AsyncRetrying(
            retry=retry_if_exception(_is_retryable_logged),
            wait=wait_retry_after(_BACKOFF),
            stop=self._stop_after_attempts,
            reraise=True,
        )

    def next_wait(
        self,
        decision: RetryDecision | None,
        err: BaseException,
        *,
        latest_start: float | None,
    ) -> tuple[float | None, RetryDecision | None]:
        """Decide on a failed attempt: seconds to wait before the next one, or None to stop.

        Every failed attempt but a 429 counts toward ``max_retries``, whether
        or not it reached the wire (a refused connection is retried, but not
        forever). ``latest_start`` is the loop time after which no attempt may
        start (None: no deadline). Returns the decision state to pass back on
        the next failure.
        """
        if self.max_retries == 0:
            return None, decision
        now = asyncio.get_running_loop().time()
        if decision is None:
            decision = self._first_decision(now, latest_start)
        state = decision.state
        state.outcome = Future.construct(state.attempt_number, err, has_exception=True)
        state.outcome_timestamp = now
        retrying = self.retrying
        if not retrying.retry(state):
            return None, decision
        wait = state.upcoming_sleep = retrying.wait(state)
        # The state holds the error (and its traceback's frames) until the next
        # failure; drop the traceback so no cycle outlives the wait.
        forget_traceback(err)
        if isinstance(err, RateLimitError):
            decision.rate_limited += 1
            if decision.rate_limited > MAX_RATE_LIMITED_RETRIES:
                logger.debug("not retrying: %d 429s for this order", decision.rate_limited)
                return None, decision
            if err.retry_after is not None and err.retry_after > self.max_retry_after:
                logger.debug("not retrying: the exchange asked for a %.3gs pause", wait)
                return None, decision
            stop = decision.stop_in_time
        else:
            stop = decision.stop
        if stop is not None and stop(state):
            if logger.isEnabledFor(logging.DEBUG):
                in_time = decision.stop_in_time
                why = (
                    f"a {wait:.3g}s wait would pass the deadline"
                    if in_time is not None and in_time(state)
                    else f"{state.attempt_number} attempts failed"
                )
                logger.debug("not retrying: %s", why)
            return None, decision
        if logger.isEnabledFor(logging.INFO):
            logger.info(
                "retrying in %.3fs after attempt %d failed: %s", wait, state.attempt_number, err
            )
        if not isinstance(err, RateLimitError):
            state.attempt_number += 1
        return wait, decision

    def _first_decision(self, now: float, latest_start: float | None) -> RetryDecision:
        state = RetryCallState(self.retrying, None, (), {})
        state.start_time = now  # the loop's clock, like the deadline
        stop = self._stop_after_attempts
        if latest_start is None:
            return RetryDecision(state, stop, None)
        in_time = stop_before_delay(latest_start - now)
        return RetryDecision(state, stop | in_time, in_time)


def _is_retryable_logged(err: BaseException) -> bool:
    retry = is_retryable(err)
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("%s after %s: %s", "retryable" if retry else "final", type(err).__name__, err)
    return retry
