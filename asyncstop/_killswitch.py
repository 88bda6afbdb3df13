"""The kill switch: cancel every stop order a bot has, from a registry or its own book."""

from __future__ import annotations

import asyncio
import inspect
import signal
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable, Iterator
from typing import TYPE_CHECKING, TypeAlias

from ._logging import logger
from ._validation import check_account_id, check_bulk_settings, check_order_id

if TYPE_CHECKING:
    from ._client import AsyncStopClient
    from ._report import CancelReport, CancelResult, OrderItem

__all__ = ["KillSwitch", "OrderSource", "StopOrderRegistry"]


class StopOrderRegistry:
    """The stop orders a bot has placed and that may still be live: what a kill switch cancels.

    Record each stop order as it is placed (``add``) and forget it when it
    fills, expires or is cancelled elsewhere (``discard``). A kill switch run
    removes the orders it cancelled; the ones that may still be live stay.
    Synchronous and cheap: safe to call from any callback on the bot's loop.
    """

    __slots__ = ("_orders",)

    def __init__(self, orders: Iterable[OrderItem] = ()) -> None:
        # order id -> account id (None: the client's account)
        self._orders: dict[str, str | None] = {}
        for item in orders:
            if isinstance(item, str):
                self.add(item)
            else:
                self.add(item[1], account_id=item[0])

    def add(self, order_id: str, *, account_id: str | None = None) -> None:
        """Record a live stop order; ``account_id`` None means the client's own account."""
        check_order_id(order_id)
        if account_id is not None:
            check_account_id(account_id)
        self._orders[order_id] = account_id

    def discard(self, order_id: str, *, account_id: str | None = None) -> None:
        """Forget a stop order (no error if unknown); with ``account_id``, only for that account."""
        if account_id is None or self._orders.get(order_id) == account_id:
            self._orders.pop(order_id, None)

    def _settled(self, order_id: str, account_id: str, default_account_id: str | None) -> None:
        """Forget an order a kill switch saw end, if it is still registered for that account."""
        registered = self._orders.get(order_id, "")
        if (registered if registered is not None else default_account_id) == account_id:
            del self._orders[order_id]

    def __contains__(self, order_id: object) -> bool:
        return order_id in self._orders

    def __len__(self) -> int:
        return len(self._orders)

    def __iter__(self) -> Iterator[OrderItem]:
        return iter(self.snapshot())

    def snapshot(self) -> list[OrderItem]:
        """The registered orders as bulk-cancel items, in the order they were added."""
        return [
            order_id if account_id is None else (account_id, order_id)
            for order_id, account_id in self._orders.items()
        ]

    def __repr__(self) -> str:
        return f"<StopOrderRegistry {len(self._orders)} orders>"


#: Where a kill switch finds the orders to cancel: a registry, any iterable or
#: async iterable of order items, or an async callable returning one.
OrderSource: TypeAlias = (
    StopOrderRegistry
    | Iterable["OrderItem"]
    | AsyncIterable["OrderItem"]
    | Callable[[], Awaitable[Iterable["OrderItem"] | AsyncIterable["OrderItem"]]]
    | Callable[[], AsyncIterable["OrderItem"]]
)


class KillSwitch:
    """Cancels every stop order of a source at once, within a deadline.

    ``trigger()`` runs one bulk cancel over the source and returns its report.
    It is idempotent: a call while a run is going joins that run and gets the
    same report. With a :class:`StopOrderRegistry` as the source, orders that
    ended cancelled or already gone leave the registry as their results come in,
    so triggering again retries only what may still be live.
    """

    def __init__(
        self,
        client: AsyncStopClient,
        source: OrderSource,
        *,
        deadline: float | None = 10.0,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        on_result: Callable[[CancelResult], object] | None = None,
    ) -> None:
        # Refused now, not when the switch fires in an emergency.
        check_bulk_settings(deadline=deadline, concurrency=concurrency, rate_limit=rate_limit)
        self.client = client
        self.source = source
        self.deadline = deadline
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self._on_result = on_result
        self._run: asyncio.Task[CancelReport] | None = None
        self._joiners = 0
        self._signals: list[tuple[asyncio.AbstractEventLoop, signal.Signals]] = []
        #: The report of the latest finished run, or None.
        self.last_report: CancelReport | None = None

    @property
    def running(self) -> bool:
        """True while a run is going."""
        return self._run is not None and not self._run.done()

    async def trigger(self) -> CancelReport:
        """Cancel every order of the source (or join the run already going) and return the report.

        If every caller waiting on a run is cancelled, the run is cancelled too
        (its orders are settled as ``unknown`` or ``not_sent``); nothing is left
        running once the last caller has returned.
        """
        run = self._start()
        self._joiners += 1
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            if self._joiners == 1 and not run.done():
                run.cancel()
                await asyncio.gather(run, return_exceptions=True)
            raise
        finally:
            self._joiners -= 1

    def _start(self) -> asyncio.Task[CancelReport]:
        if self._run is None or self._run.done():
            self._run = asyncio.get_running_loop().create_task(
                self._cancel_all(), name="asyncstop-kill-switch"
            )
            self._run.add_done_callback(_log_failed_run)
        return self._run

    async def _cancel_all(self) -> CancelReport:
        orders = await self._orders()
        logger.warning("kill switch fired: cancelling every stop order")
        report = await self.client.cancel_stop_orders(
            orders,
            deadline=self.deadline,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            on_result=self._result_in,
        )
        self.last_report = report
        logger.warning("kill switch done: %r", report)
        return report

    async def _orders(self) -> Iterable[OrderItem] | AsyncIterable[OrderItem]:
        source = self.source
        if isinstance(source, StopOrderRegistry):
            return source.snapshot()
        if isinstance(source, AsyncIterable | Iterable):
            return source
        produced: object = source()
        if inspect.isawaitable(produced):
            produced = await produced
        if not isinstance(produced, AsyncIterable | Iterable):
            raise TypeError(
                f"the order source callable returned {type(produced).__name__}, "
                "not an iterable or async iterable of orders"
            )
        return produced

    def _result_in(self, result: CancelResult) -> None:
        if result.ok and isinstance(self.source, StopOrderRegistry):
            self.source._settled(result.order_id, result.account_id, self.client.account_id)
        if self._on_result is not None:
            self._on_result(result)

    def install_signal_handlers(
        self, signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    ) -> None:
        """Make SIGINT and SIGTERM (or ``signals``) fire the kill switch on the running loop.

        The signal starts a run; ``await trigger()`` joins it and returns its
        report. The handlers replace the default ones (Ctrl-C no longer raises
        ``KeyboardInterrupt``) until :meth:`remove_signal_handlers`. Unix only.
        """
        loop = asyncio.get_running_loop()
        for sig in signals:
            loop.add_signal_handler(sig, self._on_signal, sig)
            self._signals.append((loop, sig))

    def remove_signal_handlers(self) -> None:
        """Restore the signals' default handling."""
        for loop, sig in self._signals:
            if not loop.is_closed():
                loop.remove_signal_handler(sig)
        self._signals.clear()

    def _on_signal(self, sig: signal.Signals) -> None:
        if not self.running:
            logger.warning("%s received: firing the kill switch", sig.name)
        self._start()

    def __repr__(self) -> str:
        return f"<KillSwitch deadline={self.deadline!r} running={self.running}>"


def _log_failed_run(run: asyncio.Task[CancelReport]) -> None:
    """Log a run that failed, so a signal-started run nobody joined does not fail unseen."""
    if not run.cancelled() and (err := run.exception()) is not None:
        logger.error("kill switch run failed: %s: %s", type(err).__name__, err, exc_info=err)
