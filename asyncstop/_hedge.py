"""Hedged cancels: one backup request for an order whose first request is slow to answer.

"The Tail at Scale" (Dean and Barroso): when a request has had no answer for
about the 95th-percentile latency, send a second one and take the first
answer, for a few percent more load. gRPC's hedging policy stops when the
server pushes back; so does this one. The rules:

- The delay is fixed (seconds) or ``"auto"``: the p95 of this call's latest 512 reply
  times, measured from the moment each request reached the wire, once
  ``AUTO_MIN_SAMPLES`` replies are in (requests already waiting then get it
  too), and at least twice their median (a server without a tail gets no
  hedges).
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
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from typing import Final, Literal

from ._attempt import Canceller, DeadlinePassed, OrderCancel
from ._errors import OrderNotFoundError, RateLimitError
from ._models import StopOrder
from ._retry import is_retryable

__all__ = ["AUTO_MIN_SAMPLES", "DEFAULT_HEDGE_BUDGET", "HedgeSetting", "Hedger"]

#: ``hedge=``: None (off), a delay in seconds, or "auto".
HedgeSetting = float | Literal["auto"] | None
#: Hedges are at most this share of a call's first requests.
DEFAULT_HEDGE_BUDGET: Final = 0.10
#: "auto" hedges once this many replies give a p95 to go by.
AUTO_MIN_SAMPLES: Final = 20
#: "auto" waits at least this many median reply times before a hedge.
AUTO_MIN_MEDIAN_MULTIPLE: Final = 2.0
#: The auto delay is recomputed after this many new replies (sorting is not free).
_RECOMPUTE_EVERY: Final = 16
#: "auto" goes by this many latest replies: sorting them stays cheap in a call
#: of 100,000 orders, and the delay follows the exchange if it slows down.
AUTO_WINDOW: Final = 512


class Hedger:
    """The hedging of one bulk call: its delay, its budget and its counts."""

    __slots__ = (
        "_auto_delay",
        "_changed",
        "_quantiles",
        "_replies",
        "_samples",
        "_samples_at_delay",
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
        self._samples: deque[float] = deque(maxlen=AUTO_WINDOW)
        #: Replies timed so far (the window keeps only the latest).
        self._replies = 0
        self._samples_at_delay = 0
        self._auto_delay: float | None = None
        self._quantiles: tuple[float, float] | None = None
        self._changed: asyncio.Future[None] | None = None
        #: First requests started, hedges started, and hedges whose answer won.
        self.primaries = 0
        self.hedges_sent = 0
        self.hedges_won = 0
        #: Accounts that met a 429 in this call: never hedged again.
        self.stopped_accounts: set[str] = set()

    def delay(self) -> float | None:
        """Seconds without an answer before a hedge, or None while "auto" has too few replies.

        "auto" hedges at the p95, and at least 2 medians, so that a server
        without a tail gets no hedges.
        """
        if self.fixed_delay is not None:
            return self.fixed_delay
        count = len(self._samples)
        if count < AUTO_MIN_SAMPLES:
            return None
        if self._quantiles is None or self._replies - self._samples_at_delay >= _RECOMPUTE_EVERY:
            ordered = sorted(self._samples)

            def quantile(q: float) -> float:
                return ordered[min(count - 1, math.ceil(q * count) - 1)]

            self._quantiles = (quantile(0.5), quantile(0.95))
            self._samples_at_delay = self._replies
        p50, p95 = self._quantiles
        return max(p95, AUTO_MIN_MEDIAN_MULTIPLE * p50)

    def _pulse(self) -> None:
        changed, self._changed = self._changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)

    def _next_change(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """A future resolved when the delay becomes known (enough replies are in)."""
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
            sent_at = sent.result()
            while True:
                delay = self.delay()
                wait = None if delay is None else sent_at + delay - loop.time()
                if wait is not None and wait <= 0:
                    break
                done, _ = await asyncio.wait(
                    (primary, self._next_change(loop)),
                    timeout=wait,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if primary.done():
                    return await primary
                if not done:
                    break  # no answer within the delay
            if not self._may_hedge(job):
                return await primary
            self.hedges_sent += 1
            hedge = loop.create_task(self._timed(job, None, urgent=True))
            tasks.add(hedge)
            return await self._first_answer(job, primary, hedge)
        finally:
            job.sent_waiter = None
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

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
        """Run one attempt; learn its reply time and whether it met a 429."""
        loop = asyncio.get_running_loop()
        try:
            order = await self.canceller.attempt(job, urgent=urgent)
        except RateLimitError:
            self.stopped_accounts.add(job.account.account_id)
            raise
        except OrderNotFoundError:
            self._sample(sent, loop)
            raise
        self._sample(sent, loop)
        return order

    def _sample(self, sent: asyncio.Future[float] | None, loop: asyncio.AbstractEventLoop) -> None:
        if sent is not None and sent.done() and not sent.cancelled():
            self._samples.append(loop.time() - sent.result())
            self._replies += 1
            if len(self._samples) == AUTO_MIN_SAMPLES and self.fixed_delay is None:
                self._pulse()  # the first-wave requests waiting for a delay get one
