"""Hedged cancels: one backup request for an order whose first request is slow to answer.

"The Tail at Scale" (Dean and Barroso): when a request has had no answer for
about the 95th-percentile latency, send a second one and take the first
answer, for a few percent more load. gRPC's hedging policy stops when the
server pushes back; so does this one. The rules:

- The delay is fixed (seconds) or ``"auto"``: the p95 reply time (from the wire
  to the answer), and at least twice the median, so that a server without a
  tail gets no hedges. "auto" estimates both from the client's latest
  ``AUTO_WINDOW`` requests, across calls (a warm client knows its exchange
  before the emergency), and from this call's requests still in flight.
- A request still in flight is a censored observation: its reply time is at
  least its age. The estimate is the product-limit (Kaplan-Meier) one, which
  counts it in that way. In a call that sends every order at once, the
  replies seen so far are the fast ones; ignoring the rest put the p95 early
  and spent the budget on orders that were about to answer. With the
  censored ones counted, a client with no history hedges once 95 % of the
  round has answered, and hedges exactly the stragglers. While too many
  requests wait for the p95 to be known (more than 5 % of a round hang), a
  request older than twice the longest reply seen is a straggler by any
  estimate, and is hedged. A request abandoned
  for its hedge, timed out or cut by the deadline stays in the window as a
  lower bound too, so that hedging does not teach "auto" a shorter tail.
- A hedge takes the next free slot ahead of fresh orders: behind them it would
  come too late to cut anything short.
- A hedge is one more request through the same per-order path, so it counts
  toward the call's concurrency, the rate limit and ``attempts``, and waits
  out a 429 pause like any request. No hedge is sent for an account in a 429
  pause, and none for an account once any 429 was met in this call.
- Hedges are at most ``budget`` (default 10 %) of the call's first requests.
- The first definitive answer settles the order; the other request is
  abandoned (its task cancelled, so aiohttp closes its connection). A 404
  while the other request may have reached the exchange is ``already_gone``.
- Each hedge is logged at DEBUG with the delay and the estimate behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Iterable
from typing import Final, Literal, NamedTuple

from ._attempt import Canceller, DeadlinePassed, OrderCancel
from ._errors import OrderNotFoundError, RateLimitError
from ._logging import logger
from ._models import StopOrder
from ._retry import is_retryable

__all__ = [
    "AUTO_MIN_SAMPLES",
    "AUTO_QUANTILE",
    "AUTO_WINDOW",
    "DEFAULT_HEDGE_BUDGET",
    "Estimate",
    "HedgeSetting",
    "Hedger",
    "estimate_delay",
    "reply_window",
]

#: ``hedge=``: None (off), a delay in seconds, or "auto".
HedgeSetting = float | Literal["auto"] | None
#: Hedges are at most this share of a call's first requests.
DEFAULT_HEDGE_BUDGET: Final = 0.10
#: "auto" hedges a request once its age passes this quantile of the reply times.
AUTO_QUANTILE: Final = 0.95
#: "auto" hedges once this many reply times give a quantile to go by.
AUTO_MIN_SAMPLES: Final = 20
#: "auto" waits at least this many median reply times before a hedge.
AUTO_MIN_MEDIAN_MULTIPLE: Final = 2.0
#: While the quantile cannot be known yet, "auto" hedges a request once it is
#: this many times older than the longest reply seen.
AUTO_BEYOND_LONGEST: Final = 2.0
#: "auto" goes by the client's latest this many requests: the estimate stays
#: cheap in a call of 100,000 orders, and follows the exchange if it slows down.
AUTO_WINDOW: Final = 512
#: The auto delay is recomputed after this many answers (the estimate is not free).
_RECOMPUTE_EVERY: Final = 16
#: Waiting requests are woken for a new delay only when it shrinks by more than this.
_WAKE_ON_SHRINK: Final = 0.9


def reply_window() -> deque[float]:
    """A client's window of recent reply times: seconds, negated for a lower bound."""
    return deque(maxlen=AUTO_WINDOW)


class Estimate(NamedTuple):
    """An "auto" delay and what it was made from."""

    #: Seconds without an answer before a hedge: ``max(quantile, 2 * median)``,
    #: or twice the longest reply while the quantile is not known.
    delay: float
    #: The estimated ``AUTO_QUANTILE`` reply time (when not ``known``: the
    #: longest reply, a lower bound), and the median, in seconds.
    quantile: float
    median: float
    #: Reply times behind it, and lower bounds (requests in flight or abandoned).
    replies: int
    censored: int
    #: False while too many requests wait for the quantile to be known.
    known: bool = True


def estimate_delay(
    window: Iterable[float],
    in_flight: Iterable[float] = (),
    *,
    quantile: float = AUTO_QUANTILE,
    min_replies: int = AUTO_MIN_SAMPLES,
) -> Estimate | None:
    """The "auto" delay from reply times and the ages of requests without an answer.

    ``window`` holds reply times in seconds, and lower bounds negated (a request
    that got no answer within that age); ``in_flight`` the ages of requests
    still waiting. The product-limit estimate of the survival function counts
    each lower bound as "at least this long". None while fewer than
    ``min_replies`` replies are in. While too many requests wait for the
    estimate to reach the quantile, the delay is twice the longest reply.
    """
    replies: list[float] = []
    bounds: list[float] = list(in_flight)
    for value in window:
        if value >= 0:
            replies.append(value)
        else:
            bounds.append(-value)
    if len(replies) < min_replies:
        return None
    replies.sort()
    bounds.sort()
    at_risk = len(replies) + len(bounds)
    tail = 1.0 - quantile + 1e-9  # the survival at the quantile, with rounding room
    survival = 1.0
    median: float | None = None
    next_bound = 0
    bound_count = len(bounds)
    for reply in replies:
        # A request that got no answer within `reply` seconds says nothing
        # about later times: it leaves the risk set before this reply.
        while next_bound < bound_count and bounds[next_bound] < reply:
            next_bound += 1
            at_risk -= 1
        survival *= 1.0 - 1.0 / at_risk
        at_risk -= 1
        if median is None and survival <= 0.5 + 1e-9:
            median = reply
        if survival <= tail:
            assert median is not None
            return Estimate(
                max(reply, AUTO_MIN_MEDIAN_MULTIPLE * median),
                reply,
                median,
                len(replies),
                bound_count,
            )
    longest = replies[-1]
    return Estimate(
        AUTO_BEYOND_LONGEST * longest,
        longest,
        longest if median is None else median,
        len(replies),
        bound_count,
        known=False,
    )


class Hedger:
    """The hedging of one bulk call: its delay, its budget and its counts."""

    __slots__ = (
        "_changed",
        "_estimate",
        "_in_flight",
        "_longest",
        "_since_estimate",
        "_window",
        "budget",
        "canceller",
        "fixed_delay",
        "hedges_sent",
        "hedges_won",
        "primaries",
        "stopped_accounts",
    )

    def __init__(
        self, canceller: Canceller, setting: float | Literal["auto"], budget: float
    ) -> None:
        self.canceller = canceller
        self.fixed_delay = None if setting == "auto" else float(setting)
        self.budget = budget
        window = canceller.reply_times
        #: The client's reply times (or, without them, this call's own).
        self._window = reply_window() if window is None else window
        #: The ``time.monotonic()`` each first request in flight reached the wire.
        self._in_flight: dict[OrderCancel, float] = {}
        self._estimate: Estimate | None = None
        #: The longest reply time of this call's first requests so far.
        self._longest = 0.0
        #: Answers since the estimate was made; None: not made yet.
        self._since_estimate: int | None = None
        self._changed: asyncio.Future[None] | None = None
        #: First requests started, hedges started, and hedges whose answer won.
        self.primaries = 0
        self.hedges_sent = 0
        self.hedges_won = 0
        #: Accounts that met a 429 in this call: never hedged again.
        self.stopped_accounts: set[str] = set()

    def delay(self) -> float | None:
        """Seconds without an answer before a hedge, or None while "auto" cannot tell yet."""
        if self.fixed_delay is not None:
            return self.fixed_delay
        if self._since_estimate is None:
            self._update_estimate()
        return self._auto_delay()

    def _auto_delay(self) -> float | None:
        estimate = self._estimate
        if estimate is None:
            return None
        if estimate.known:
            return estimate.delay
        return AUTO_BEYOND_LONGEST * max(estimate.quantile, self._longest)

    def _update_estimate(self) -> None:
        now = time.monotonic()
        old = self._auto_delay()
        self._estimate = estimate_delay(
            self._window, [now - sent_at for sent_at in self._in_flight.values()]
        )
        self._since_estimate = 0
        new = self._auto_delay()
        if new is not None and (old is None or new < _WAKE_ON_SHRINK * old):
            self._pulse()  # wake the requests waiting without a delay, or on a longer one

    def _answered(self) -> None:
        """A first request ended: re-estimate now and then, and as soon as it may become known."""
        if self.fixed_delay is not None or self._since_estimate is None:
            return
        self._since_estimate += 1
        estimate = self._estimate
        if (
            self._since_estimate >= _RECOMPUTE_EVERY
            # Enough replies may be in (the window is short: this is cheap).
            or (estimate is None and len(self._window) >= AUTO_MIN_SAMPLES)
            or (
                estimate is not None
                and not estimate.known
                # The quantile can be known only once few enough requests are waiting.
                and len(self._in_flight)
                <= (1.0 - AUTO_QUANTILE) * (len(self._window) + len(self._in_flight))
            )
        ):
            self._update_estimate()

    def _pulse(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _next_change(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future resolved when the delay becomes known or shrinks."""
        if self._changed is None:
            self._changed = loop.create_future()
        return self._changed

    def _may_hedge(self, job: OrderCancel) -> bool:
        account = job.account
        return (
            account.account_id not in self.stopped_accounts
            and account.paused_until <= asyncio.get_running_loop().time()
            and self.hedges_sent + 1 <= self.budget * self.primaries
            and job.deadline.allows()
        )

    async def attempt(self, job: OrderCancel) -> StopOrder:
        """One attempt for ``job``, with a hedge if its request is slow to answer."""
        loop = asyncio.get_running_loop()
        self.primaries += 1
        sent = job.sent_waiter = loop.create_future()
        primary = loop.create_task(self._timed(job, sent))
        tasks = {primary}
        try:
            await asyncio.wait((primary, sent), return_when=asyncio.FIRST_COMPLETED)
            if primary.done():
                return await primary
            sent_at = self._in_flight[job] = sent.result()
            while True:
                delay = self.delay()
                wait = None if delay is None else sent_at + delay - time.monotonic()
                if wait is not None and wait <= 0:
                    break
                # Woken by the delay's end or by a new delay: either way, look
                # again (while the p95 is unknown, the delay grows with the replies).
                await asyncio.wait(
                    (primary, self._next_change(loop)),
                    timeout=wait,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if primary.done():
                    return await primary
            if not self._may_hedge(job):
                return await primary
            self.hedges_sent += 1
            if logger.isEnabledFor(logging.DEBUG):
                self._log_hedge(job, time.monotonic() - sent_at)
            hedge = loop.create_task(self._timed(job, None, urgent=True))
            tasks.add(hedge)
            return await self._first_answer(job, primary, hedge)
        finally:
            job.sent_waiter = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _log_hedge(self, job: OrderCancel, age: float) -> None:
        estimate = self._estimate
        if self.fixed_delay is not None or estimate is None:
            why = f"hedge={self.fixed_delay}"
        elif not estimate.known:
            why = (
                f"auto: p{AUTO_QUANTILE * 100:.0f} not known yet, {estimate.censored} requests "
                f"without an answer; {AUTO_BEYOND_LONGEST:g} x the longest of "
                f"{estimate.replies} replies"
            )
        else:
            why = (
                f"auto: max(p{AUTO_QUANTILE * 100:.0f} {estimate.quantile * 1e3:.1f} ms, "
                f"{AUTO_MIN_MEDIAN_MULTIPLE:g} x median {estimate.median * 1e3:.1f} ms), "
                f"estimated from {estimate.replies} replies and {estimate.censored} "
                "requests without an answer yet"
            )
        logger.debug(
            "hedging order %s: no answer after %.1f ms; delay %.1f ms (%s); hedge %d of %d allowed",
            job.order_id,
            age * 1e3,
            (self.delay() or 0.0) * 1e3,
            why,
            self.hedges_sent,
            int(self.budget * self.primaries),
        )

    async def _first_answer(
        self, job: OrderCancel, primary: asyncio.Task[StopOrder], hedge: asyncio.Task[StopOrder]
    ) -> StopOrder:
        """Wait for the first definitive answer of two requests for the same order."""
        pending = {primary, hedge}
        error: BaseException | None = None
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                err = task.exception()
                if err is None:
                    if task is hedge:
                        self.hedges_won += 1
                    return task.result()
                if isinstance(err, OrderNotFoundError):
                    if pending and job.attempts >= 2:
                        # The other request reached the exchange and may be what
                        # cancelled the order: most likely our own cancel.
                        err.after_unknown_attempt = True
                    if task is hedge:
                        self.hedges_won += 1
                    raise err
                if not isinstance(err, DeadlinePassed) and not is_retryable(err):
                    raise err  # a definitive refusal settles it too
                # An unknown outcome: the other request may still answer.
                error = err
        assert error is not None
        raise error

    async def _timed(
        self, job: OrderCancel, sent: asyncio.Future[float] | None, *, urgent: bool = False
    ) -> StopOrder:
        """Run one attempt; note its end (a first request) and whether it met a 429.

        The canceller times a request only when no other request of the order
        went out meanwhile; a first request overtaken by its hedge is timed here.
        """
        sent_before = job.attempts
        answered = False
        try:
            order = await self.canceller.attempt(job, urgent=urgent)
            answered = True
        except RateLimitError:
            self.stopped_accounts.add(job.account.account_id)
            raise
        except OrderNotFoundError:
            answered = True
            raise
        finally:
            if sent is not None:
                self._primary_ended(job, sent, sent_before, answered=answered)
        return order

    def _primary_ended(
        self, job: OrderCancel, sent: asyncio.Future[float], sent_before: int, *, answered: bool
    ) -> None:
        sent_at = self._in_flight.pop(job, None)
        if sent_at is None:
            if not sent.done() or sent.cancelled():
                return  # it never reached the wire
            sent_at = sent.result()
        age = time.monotonic() - sent_at
        if answered and age > self._longest:
            self._longest = age
        if job.attempts > sent_before + 1:  # a hedge went out meanwhile
            self._window.append(age if answered else -age)
        self._answered()
