"""The bulk engine: many concurrent cancels, a deadline, and one true result per order.

How it runs: orders are grouped by account into lanes, each a queue of jobs
served by up to ``concurrency`` worker tasks. One semaphore per call bounds the
requests in flight across all lanes; it wakes waiters in FIFO order, so busy
accounts share it fairly, and a lane paused by a 429 holds no slot while it
waits. Every job ends in exactly one :class:`CancelResult`: workers catch
their own errors, and whatever the deadline or a caller's cancellation
interrupts is settled afterwards from the job's state (never sent: ``not_sent``;
sent: ``unknown``). The orders still waiting for their first attempt when too
little time is left are settled ``not_sent`` in one pass just before the
deadline, so that the report of a long list is ready at the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections import deque
from collections.abc import AsyncIterable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Final

from ._attempt import Canceller, Deadline, DeadlinePassed, OrderCancel, Slots
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AsyncStopError,
    AuthenticationError,
    InvalidInputError,
    OrderNotFoundError,
    TokenProviderError,
    forget_traceback,
)
from ._hedge import DEFAULT_HEDGE_BUDGET, Hedger, HedgeSetting
from ._logging import logger
from ._report import CancelOutcome, CancelReport, CancelResult, OrderItem
from ._retry import is_retryable
from ._validation import check_bulk_settings, check_order_item

if TYPE_CHECKING:
    from aiolimiter import AsyncLimiter

    from ._account import Account
    from ._models import StopOrder

__all__ = ["run_bulk_cancel"]

#: Taking in or reporting on a long list yields to the event loop after this
#: many items, so that 100,000 orders do not stall the caller's other tasks.
YIELD_EVERY: Final = 1000
#: Seconds reserved per order still waiting for its first attempt, to settle it
#: ``not_sent`` before the deadline: settling 100,000 orders takes a while, and
#: the report is due at the deadline, not after it (measured 0.7-1.2 µs per
#: order on a loaded 2-core machine; twice that is reserved).
SETTLE_RESERVE_PER_ORDER: Final = 2e-6


class _Job(OrderCancel):
    """One distinct (account, order) of a bulk call, and how many input items name it."""

    __slots__ = ("occurrences", "result", "started_at")

    def __init__(
        self,
        account: Account,
        order_id: str,
        deadline: Deadline,
        semaphore: Slots,
        limiter: AsyncLimiter | None,
    ) -> None:
        super().__init__(account, order_id, deadline=deadline, semaphore=semaphore, limiter=limiter)
        self.occurrences = 1
        self.result: CancelResult | None = None
        self.started_at = 0.0


class _Lane:
    """The jobs of one account and the workers serving them.

    Fresh jobs wait in ``queue``; a job whose attempt failed and may be retried
    waits in ``retries`` until its not-before time, holding no worker: with as
    many hung orders as workers, the other orders are still sent.
    """

    __slots__ = ("account", "limiter", "queue", "refused", "retries", "wakeup", "workers")

    def __init__(self, account: Account, limiter: AsyncLimiter | None) -> None:
        self.account = account
        self.queue: deque[_Job] = deque()
        self.retries: list[tuple[float, int, _Job]] = []
        self.workers = 0
        self.limiter = limiter
        #: The error that stopped this account for the call (a refused token).
        self.refused: AsyncStopError | None = None
        #: Set when work arrives for a worker that is waiting for a retry to fall due.
        self.wakeup: asyncio.Event | None = None

    def retry_later(self, job: _Job, not_before: float) -> None:
        job.not_before = not_before
        heapq.heappush(self.retries, (not_before, id(job), job))
        self.wake()

    def wake(self) -> None:
        if self.wakeup is not None:
            self.wakeup.set()

    async def next_job(self, loop: asyncio.AbstractEventLoop) -> _Job | None:
        """The next job to run: a fresh one, else the earliest retry once due; None when done."""
        while True:
            if self.queue:
                return self.queue.popleft()
            if not self.retries:
                return None
            wait = self.retries[0][0] - loop.time()
            if wait <= 0:
                return heapq.heappop(self.retries)[2]
            if self.wakeup is None:
                self.wakeup = asyncio.Event()
            self.wakeup.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wakeup.wait()


class _BulkCancel:
    def __init__(
        self,
        canceller: Canceller,
        *,
        default_account_id: str | None,
        deadline: Deadline,
        concurrency: int,
        rate_limit: float | None,
        on_result: Callable[[CancelResult], object] | None,
        hedger: Hedger | None,
    ) -> None:
        self.canceller = canceller
        self.hedger = hedger
        self.default_account_id = default_account_id
        self.loop = asyncio.get_running_loop()
        self.deadline = deadline
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.on_result = on_result
        self.semaphore = Slots(concurrency)
        self.jobs: dict[tuple[str, str], _Job] = {}
        # The job behind each input item, in input order; None for an item
        # refused as invalid (its result is in `invalid`).
        self.items: list[_Job | None] = []
        self.invalid: dict[int, CancelResult] = {}
        self.lanes: dict[str, _Lane] = {}
        self.task_group: asyncio.TaskGroup | None = None
        self.source_error: Exception | None = None
        self.unsent_errors: dict[str, APIConnectionError] = {}
        self.cutoff: asyncio.TimerHandle | None = None

    # -- intake ------------------------------------------------------------------------------

    def add(self, item: object) -> None:
        """Queue one input item (validated already, or raising InvalidInputError)."""
        key = account_id, order_id = check_order_item(item, self.default_account_id)
        job = self.jobs.get(key)
        if job is not None:
            job.occurrences += 1
            self.items.append(job)
            if job.result is not None:
                self.report(job.result)
            return
        lane = self.lanes.get(account_id)
        if lane is None:
            limiter = self.canceller.accounts.limiter(account_id, self.rate_limit)
            lane = self.lanes[account_id] = _Lane(self.canceller.accounts.get(account_id), limiter)
        job = _Job(lane.account, order_id, self.deadline, self.semaphore, lane.limiter)
        self.jobs[key] = job
        self.items.append(job)
        lane.queue.append(job)
        lane.wake()
        if self.task_group is not None and lane.workers < self.concurrency:
            lane.workers += 1
            self.task_group.create_task(self.work(lane))

    def add_invalid(self, item: object, err: InvalidInputError) -> None:
        """Record an invalid item from a streaming source as failed, with nothing sent."""
        forget_traceback(err)  # the result is not GC-tracked: it must be in no cycle
        order_id = item if isinstance(item, str) else repr(item)
        account_id = ""
        if isinstance(item, tuple) and len(item) == 2:
            account_id, order_id = str(item[0]), str(item[1])
        result = CancelResult(
            order_id=order_id, account_id=account_id, outcome=CancelOutcome.FAILED, error=err
        )
        self.invalid[len(self.items)] = result
        self.items.append(None)
        self.report(result)

    async def feed(self, source: AsyncIterable[object]) -> None:
        try:
            async for item in source:
                try:
                    self.add(item)
                except InvalidInputError as err:
                    logger.warning("order source gave an invalid item: %s", err)
                    self.add_invalid(item, err)
        except Exception as err:
            # The orders already taken are still cancelled and reported; the
            # report carries the failure so that the caller knows it is partial.
            logger.exception("the order source failed; cancelling the orders it gave")
            self.source_error = err

    # -- work --------------------------------------------------------------------------------

    async def work(self, lane: _Lane) -> None:
        """Serve a lane: fresh orders first, then retries as they fall due."""
        try:
            while (job := await lane.next_job(self.loop)) is not None:
                await self.run_job(lane, job)
        finally:
            lane.workers -= 1

    async def run_job(self, lane: _Lane, job: _Job) -> None:
        """One attempt for ``job``; a retry goes back to the lane instead of holding this worker."""
        if lane.refused is not None:
            self.settle_stopped(job, lane.refused)
            return
        if not job.started_at:
            job.started_at = self.loop.time()
        try:
            if self.hedger is None:
                order = await self.canceller.attempt(job)
            else:
                order = await self.hedger.attempt(job)
        except DeadlinePassed:
            self.settle_stopped(job, job.last_error or self.unsent("the deadline passed"))
        except (AuthenticationError, TokenProviderError) as err:
            # The token is refused (after one refresh, with a provider): every
            # other order of this account would be refused too. Stop the
            # account for this call; its unsent orders are certainly live.
            if lane.refused is None:
                lane.refused = err
                if isinstance(err, AuthenticationError):  # the provider logged its own failure
                    logger.error(
                        "%s: stopping account %s for this call", err, lane.account.account_id
                    )
            self.settle_stopped(job, err)
        except OrderNotFoundError as err:
            outcome = (
                CancelOutcome.ALREADY_GONE if err.after_unknown_attempt else CancelOutcome.NOT_FOUND
            )
            self.settle(job, outcome, None, err)
        except APIError as err:
            wait = self.canceller.next_wait(job, err)
            if wait is None:
                self.settle_stopped(job, err, final=not is_retryable(err))
            else:
                lane.retry_later(job, self.loop.time() + wait)
        except Exception as err:
            # A bug must not lose the order or cancel its siblings; report what is known.
            logger.exception("unexpected error cancelling order %s", job.order_id)
            error = APIError(
                f"unexpected error: {type(err).__name__}: {err}", order_id=job.order_id
            )
            error.__cause__ = err
            self.settle_stopped(job, error, final=True)
        else:
            self.settle(job, CancelOutcome.CANCELLED, order, None)

    def settle_stopped(
        self, job: _Job, error: AsyncStopError | None, *, final: bool = False
    ) -> None:
        """Settle a job that will not be tried again, by what was sent for it.

        Nothing sent: ``not_sent``, whatever stopped it. Sent, with a final
        refusal: ``failed``. Sent otherwise: ``unknown``.
        """
        if job.attempts == 0:
            outcome = CancelOutcome.NOT_SENT
        elif final or (isinstance(error, APIError) and not is_retryable(error)):
            outcome = CancelOutcome.UNKNOWN if job.unknown_seen else CancelOutcome.FAILED
        else:
            outcome = CancelOutcome.UNKNOWN
        self.settle(job, outcome, None, error)

    def settle(
        self,
        job: _Job,
        outcome: CancelOutcome,
        order: StopOrder | None,
        error: AsyncStopError | None,
    ) -> None:
        if job.result is not None:
            return
        if error is not None:
            forget_traceback(error)
        if job.last_error is not None:
            forget_traceback(job.last_error)
            job.last_error = None
        result = job.result = CancelResult(
            order_id=job.order_id,
            account_id=job.account.account_id,
            outcome=outcome,
            order=order,
            error=error,
            attempts=job.attempts,
            elapsed=self.loop.time() - job.started_at if job.attempts else 0.0,
        )
        if self.on_result is not None:
            for _ in range(job.occurrences):
                self.report(result)

    def report(self, result: CancelResult) -> None:
        if self.on_result is None:
            return
        try:
            self.on_result(result)
        except Exception:
            logger.exception("on_result callback failed for order %s", result.order_id)

    def unsent(self, reason: str) -> APIConnectionError:
        """The error of orders that ``reason`` stopped before any request: one per call and reason.

        Shared by those orders' results (no ``order_id``), so that 100,000 of
        them cost one object, not 100,000, when the deadline passes.
        """
        error = self.unsent_errors.get(reason)
        if error is None:
            error = self.unsent_errors[reason] = APIConnectionError(
                f"{reason} before a request for this order was sent: it is untouched",
                request_sent=False,
            )
        return error

    def settle_interrupted(self, reason: str) -> None:
        """Give every job without a result one: never sent, or sent with unknown outcome."""
        unsent = self.unsent(reason)
        for job in self.jobs.values():
            if job.result is not None:
                continue
            if job.attempts == 0:
                self.settle(job, CancelOutcome.NOT_SENT, None, job.last_error or unsent)
            else:
                error = job.last_error
                if error is None or not job.unknown_seen:
                    error = APITimeoutError(
                        f"{reason} before the outcome for order {job.order_id} was known",
                        order_id=job.order_id,
                    )
                self.settle(job, CancelOutcome.UNKNOWN, None, error)

    async def build_report(self, elapsed: float) -> CancelReport:
        """The report, built in slices so that a long one does not stall the loop."""
        results: list[CancelResult] = []
        counts = dict.fromkeys(CancelOutcome, 0)
        for index, job in enumerate(self.items):
            result = self.invalid[index] if job is None else job.result
            assert result is not None
            results.append(result)
            counts[result.outcome] += 1
            if index % YIELD_EVERY == YIELD_EVERY - 1:
                await asyncio.sleep(0)
        hedger = self.hedger
        return CancelReport(
            results,
            elapsed,
            self.source_error,
            counts=counts,
            hedges_sent=0 if hedger is None else hedger.hedges_sent,
            hedges_won=0 if hedger is None else hedger.hedges_won,
        )

    async def run(self, source: AsyncIterable[object] | None) -> None:
        self.schedule_cutoff()
        try:
            async with asyncio.timeout_at(self.deadline.at), asyncio.TaskGroup() as tg:
                self.task_group = tg
                for lane in self.lanes.values():
                    for _ in range(min(self.concurrency, len(lane.queue))):
                        lane.workers += 1
                        tg.create_task(self.work(lane))
                if source is not None:
                    tg.create_task(self.feed(source))
        finally:
            if self.cutoff is not None:
                self.cutoff.cancel()

    def schedule_cutoff(self) -> None:
        """Settle the orders no attempt can start for any more, just in time for the deadline.

        The last moment an attempt may start, less the time it takes to settle
        the orders still waiting for their first one: then they are settled
        ``not_sent`` in one pass, while the requests in flight run on to the
        deadline. (Otherwise the workers would reach each of them just after
        that moment and settle them one by one, past the deadline: 100,000 ids
        with a 2 s deadline returned after 2.5 s.) Re-armed as the queues shrink.
        """
        self.cutoff = None
        latest = self.deadline.latest_start
        if latest is None:
            return
        waiting = sum(len(lane.queue) for lane in self.lanes.values())
        when = latest - waiting * SETTLE_RESERVE_PER_ORDER
        if when > self.loop.time():
            self.cutoff = self.loop.call_at(when, self.schedule_cutoff)
            return
        unsent = self.unsent("the deadline passed")
        for lane in self.lanes.values():
            queue = lane.queue
            while queue:
                job = queue.popleft()
                self.settle(job, CancelOutcome.NOT_SENT, None, job.last_error or unsent)


async def run_bulk_cancel(
    canceller: Canceller,
    orders: Iterable[OrderItem] | AsyncIterable[OrderItem],
    *,
    default_account_id: str | None,
    pool_size: int,
    cap_at_pool: bool,
    deadline: float | None,
    concurrency: int | None,
    rate_limit: float | None,
    on_result: Callable[[CancelResult], object] | None,
    hedge: HedgeSetting = None,
    hedge_budget: float = DEFAULT_HEDGE_BUDGET,
) -> CancelReport:
    """Cancel every order of ``orders`` through ``canceller`` and report each one.

    ``pool_size`` is the default ``concurrency``, and its cap when ``cap_at_pool``.
    """
    check_bulk_settings(
        deadline=deadline, concurrency=concurrency, rate_limit=rate_limit, hedge=hedge
    )
    if concurrency is None or (cap_at_pool and concurrency > pool_size):
        # More workers than pooled connections would wait for a connection
        # inside aiohttp with their attempt timeout running, and could time
        # out without sending anything.
        concurrency = pool_size
    loop = asyncio.get_running_loop()
    started = loop.time()
    bulk = _BulkCancel(
        canceller,
        default_account_id=default_account_id,
        deadline=Deadline(None if deadline is None else started + deadline),
        concurrency=concurrency,
        rate_limit=rate_limit,
        on_result=on_result,
        hedger=None if hedge is None else Hedger(canceller, hedge, hedge_budget),
    )
    source: AsyncIterable[object] | None = None
    if isinstance(orders, AsyncIterable):
        source = orders
    elif isinstance(orders, str | bytes):
        raise InvalidInputError("orders must be a collection of order ids, not a single str")
    else:
        await _take_list(bulk, orders)
    try:
        await bulk.run(source)
    except TimeoutError:
        # The deadline: the per-attempt timeouts are cut to it, so this only
        # catches what was still waiting (a pause, the limiter, the source).
        bulk.settle_interrupted("the deadline passed")
    except BaseException:
        bulk.settle_interrupted("the call was cancelled")
        raise
    finally:
        canceller.accounts.prune()
    report = await bulk.build_report(loop.time() - started)
    if logger.isEnabledFor(logging.INFO):
        logger.info("bulk cancel done: %r", report)
    return report


async def _take_list(bulk: _BulkCancel, orders: Iterable[object]) -> None:
    """Validate and queue every item before anything is sent, yielding now and then.

    If the caller cancels meanwhile, the rest is still taken (without
    yielding) so that every item is reported ``not_sent`` before the
    cancellation propagates.
    """
    cancelled = False
    for index, item in enumerate(_iterate(orders)):
        try:
            bulk.add(item)
        except InvalidInputError as err:
            if cancelled:
                bulk.add_invalid(item, err)
                continue
            raise InvalidInputError(f"orders[{index}]: {err}") from None
        if not cancelled and index % YIELD_EVERY == YIELD_EVERY - 1:
            try:
                await asyncio.sleep(0)  # a long list must not block the caller's loop
            except asyncio.CancelledError:
                cancelled = True
    if cancelled:
        bulk.settle_interrupted("the call was cancelled")
        raise asyncio.CancelledError


def _iterate(orders: Iterable[object]) -> Iterator[object]:
    try:
        return iter(orders)
    except TypeError:
        raise InvalidInputError(
            f"orders must be an iterable or async iterable, not {type(orders).__name__}"
        ) from None
