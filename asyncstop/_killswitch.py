"""The kill switch: cancel every stop order a bot has, from a registry or its own book.

Signals (``install_signal_handlers``), the pattern a bot follows::

    async def main() -> int:
        registry = asyncstop.StopOrderRegistry()
        async with asyncstop.AsyncStopClient(...) as client:
            switch = asyncstop.KillSwitch(client, registry, deadline=5.0)
            await switch.arm()                   # preflight and warm connections, ahead of time
            switch.install_signal_handlers()     # SIGINT/SIGTERM now fire the switch
            bot = asyncio.create_task(run_bot(client, registry))
            await switch.wait_tripped()          # a signal (or any trigger()) fired it
            bot.cancel()
            report = await switch.trigger()      # joins the run the signal started
        return 0 if report.ok else 1

A program that does not wait on the switch still exits on the first signal,
once the run has ended; a second signal ends the process at once. A copy of
the first within half a second (``timeout`` signals the bot and then its
group) is not a second signal, and a signal the parent ignored stays ignored
(``asyncstop._signals`` has the one policy).

Every task the switch starts has an owner that waits for it. A run started by
``trigger()`` is awaited by its callers (and cancelled with the last of them).
A run started by a signal, and the cancels of orders added to the registry
after the switch fired, are owned by the switch until :meth:`KillSwitch.aclose`
(or the end of ``async with KillSwitch(...)``), which waits for them.
"""

from __future__ import annotations

import asyncio
import inspect
import signal
import sqlite3
import weakref
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, Self, TypeAlias

from ._constants import DEFAULT_KILL_SWITCH_HEDGE
from ._logging import logger
from ._registry import StopOrderRegistry, mark_protective
from ._report import CancelOutcome
from ._signals import StopSignals
from ._validation import check_bulk_settings

if TYPE_CHECKING:
    from ._client import AsyncStopClient
    from ._report import CancelReport, CancelResult, OrderItem

__all__ = ["KillSwitch", "OrderSource"]

#: Feeding a large source to the bulk engine yields to the loop this often.
_YIELD_EVERY: Final = 1000

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
    It never raises for an order: an invalid item (a bare order id while the
    client has no ``account_id``, say) is reported ``failed`` and the others
    are cancelled. It is idempotent: a call while a run is going joins that run
    and gets the same report. With a :class:`StopOrderRegistry` as the source,
    orders that ended no longer live leave the registry as their results come
    in, so triggering again retries only what may still be live.

    Once fired, the switch is *tripped* until :meth:`reset`: an order added to
    its registry from then on is cancelled as it comes (a bot that goes on
    placing stops after the emergency does not leave them live).

    The switch owns the tasks it starts without a caller to await them (a run a
    signal started, the cancels of orders added after it fired):
    :meth:`aclose`, or leaving ``async with KillSwitch(...)``, waits for them
    and detaches the switch from its registry and the signals.
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
        hedge: float | Literal["auto"] | None = DEFAULT_KILL_SWITCH_HEDGE,
    ) -> None:
        # Refused now, not when the switch fires in an emergency.
        check_bulk_settings(
            deadline=deadline, concurrency=concurrency, rate_limit=rate_limit, hedge=hedge
        )
        self.client = client
        self.source = source
        self.deadline = deadline
        self.concurrency = concurrency
        self.rate_limit = rate_limit
        self.hedge = hedge
        self._on_result = on_result
        self._run: asyncio.Task[CancelReport] | None = None
        #: The protective stops of the run going (their results are marked).
        self._protective: frozenset[tuple[str, str]] = frozenset()
        self._joiners = 0
        self._signals: StopSignals | None = None
        # asyncio.Event binds to a loop only when first waited on: no loop is
        # needed to build the switch.
        self._tripped = asyncio.Event()
        self._watched = False
        self._late: list[OrderItem] = []
        self._settled: list[tuple[str, str]] = []
        self._late_run: asyncio.Task[None] | None = None
        # Every task the switch started and that has not ended: aclose() waits for them.
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        #: The report of the latest finished run that had orders, or None.
        self.last_report: CancelReport | None = None
        self._listener: Callable[[OrderItem], None] | None = None
        if isinstance(source, StopOrderRegistry):
            self._listener = _weak_listener(self)
            source.add_listener(self._listener)

    @property
    def running(self) -> bool:
        """True while a run is going."""
        return self._run is not None and not self._run.done()

    @property
    def tripped(self) -> bool:
        """True once the switch has fired, until :meth:`reset`."""
        return self._tripped.is_set()

    async def wait_tripped(self) -> None:
        """Return once the switch has fired (at once if it is tripped already).

        A program that waits here handles the emergency itself: a signal then
        no longer makes the switch exit the program after its run.
        """
        await self._tripped.wait()
        self._watched = True

    def reset(self) -> None:
        """Untrip the switch: orders added to the registry from now on stay live.

        A run that is going goes on; ``last_report`` is kept.
        """
        self._tripped.clear()
        self._watched = False
        if self._signals is not None:
            self._signals.reset()
        self._late.clear()

    async def arm(self, connections: int | None = None) -> int:
        """Prepare for an emergency: run the client's preflight, then warm its connections.

        The preflight (when the client offers one) checks the token, the base
        URL and the account now, instead of in the emergency; then
        ``client.warm_up(connections)`` opens keep-alive connections. Returns
        the number of warm-up requests answered. Raises what they raise.
        """
        preflight = getattr(self.client, "preflight", None)
        if preflight is not None:
            await preflight()
        return await self.client.warm_up(connections)

    async def trigger(self, *, include_protective: bool = True) -> CancelReport:
        """Cancel every order of the source (or join the run already going) and return the report.

        A deliberate kill means "stop everything": a registry's protective
        stops (stop-losses) are cancelled too, unless ``include_protective``
        is False (they then stay live and registered). If every caller waiting
        on a run is cancelled, the run is cancelled too (its orders are settled
        as ``unknown`` or ``not_sent``); nothing is left running once the last
        caller has returned.
        """
        if self._closed:
            raise RuntimeError("the kill switch is closed: build a new KillSwitch to fire again")
        run = self._start(include_protective)
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

    async def aclose(self) -> None:
        """Wait for the switch's own tasks to end, then detach it from its registry and signals.

        A run that is going, and the cancels of orders added after the switch
        fired, end within the switch's deadline. If ``aclose()`` is cancelled,
        it cancels them (their orders end ``unknown`` or ``not_sent``), waits
        for them, and lets the cancellation through. Afterwards ``trigger()``
        raises ``RuntimeError`` and orders added to the registry stay live.
        Idempotent.
        """
        self._closed = True
        if self._listener is not None and isinstance(self.source, StopOrderRegistry):
            self.source.remove_listener(self._listener)
            self._listener = None
        try:
            while going := {task for task in self._tasks if not task.done()}:
                await asyncio.wait(going)
        except asyncio.CancelledError:
            going = {task for task in self._tasks if not task.done()}
            for task in going:
                task.cancel()
            if going:
                await asyncio.wait(going)
            raise
        finally:
            self.remove_signal_handlers()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def _own(self, task: asyncio.Task[Any]) -> None:
        """Keep ``task`` until it ends, for aclose() to wait for."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start(self, include_protective: bool = True) -> asyncio.Task[CancelReport]:
        if self._run is None or self._run.done():
            self._run = asyncio.get_running_loop().create_task(
                self._cancel_all(include_protective), name="asyncstop-kill-switch"
            )
            self._own(self._run)
            self._run.add_done_callback(_log_failed_run)
        self._tripped.set()
        return self._run

    async def _cancel(self, orders: Iterable[OrderItem] | AsyncIterable[OrderItem]) -> CancelReport:
        """Cancel ``orders`` with the switch's deadline, concurrency, pacing and hedging."""
        return await self.client.cancel_stop_orders(
            _stream(orders),
            deadline=self.deadline,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            on_result=self._result_in,
            hedge=self.hedge,
        )

    async def _cancel_all(self, include_protective: bool) -> CancelReport:
        orders = await self._orders(include_protective)
        # Read once with the orders: the protective stops' results are marked.
        protective = self._protective

        logger.warning("kill switch fired: cancelling every stop order")
        report = await self._cancel(orders)
        if protective:
            report.results[:] = mark_protective(report.results, protective)
        self._forget(report)
        await self._forget_in_async_store(report)
        if len(report) or self.last_report is None:
            self.last_report = report
        logger.warning("kill switch done: %r", report)
        return report

    async def _orders(
        self, include_protective: bool
    ) -> Iterable[OrderItem] | AsyncIterable[OrderItem]:
        source = self.source
        self._protective = frozenset()
        if isinstance(source, StopOrderRegistry):
            stops = source.stops()
            default = self.client.account_id or ""
            if include_protective:
                self._protective = frozenset(
                    (account_id or default, order_id)
                    for account_id, order_id, protective in stops
                    if protective
                )
            return [
                order_id if account_id is None else (account_id, order_id)
                for account_id, order_id, protective in stops
                if include_protective or not protective
            ]
        entries = getattr(source, "entries", None)
        if inspect.iscoroutinefunction(entries):  # an async registry (PostgresRegistry)
            registered: list[tuple[OrderItem, bool]] = await entries()
            default = self.client.account_id or ""
            if include_protective:
                self._protective = frozenset(
                    (default, item) if isinstance(item, str) else item
                    for item, protective in registered
                    if protective
                )
            return [item for item, protective in registered if include_protective or not protective]
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
        # not_found waits for the report: under its warning, those orders may be live.
        if (
            result.ok
            and result.outcome is not CancelOutcome.NOT_FOUND
            and isinstance(self.source, StopOrderRegistry)
        ):
            if not self._settled:
                # The results of one loop pass leave the registry together: one
                # transaction for a durable registry, not one per order.
                asyncio.get_running_loop().call_soon(self._forget_settled)
            self._settled.append((result.order_id, result.account_id))
        if self._on_result is not None:
            self._on_result(result)

    def _forget_settled(self) -> None:
        settled, self._settled = self._settled, []
        if not settled or not isinstance(self.source, StopOrderRegistry):
            return
        try:
            self.source.discard_settled_many(settled, default_account_id=self.client.account_id)
        except (sqlite3.Error, RuntimeError) as err:
            # They stay registered: a later run sends them again and meets 404s.
            logger.error(
                "could not remove %d settled orders from the registry: %s", len(settled), err
            )

    async def _forget_in_async_store(self, report: CancelReport) -> None:
        """Forget what the run settled from an async registry (``PostgresRegistry``)."""
        discard = getattr(self.source, "discard_settled_many", None)
        if isinstance(self.source, StopOrderRegistry) or not inspect.iscoroutinefunction(discard):
            return
        settled = [(result.order_id, result.account_id) for result in report.settled]
        if not settled:
            return
        try:
            await discard(settled, default_account_id=self.client.account_id)
        except Exception as err:  # the report stands: a database error must not hide it
            # They stay registered: a later run sends them again and meets 404s.
            logger.error(
                "could not remove %d settled orders from the registry: %s", len(settled), err
            )

    def _forget(self, report: CancelReport) -> None:
        """Forget what the run settled; not_found orders only if its report does not warn."""
        self._forget_settled()
        registry = self.source
        if not isinstance(registry, StopOrderRegistry):
            return
        not_found = report.counts[CancelOutcome.NOT_FOUND]
        if report.warning is not None:
            logger.warning(
                "%d order(s) not found stay in the registry: %s", not_found, report.warning
            )
        if not not_found:
            return  # the rest left the registry as their results came in
        try:
            registry.forget_settled(report, default_account_id=self.client.account_id)
        except (sqlite3.Error, RuntimeError) as err:
            logger.error("could not remove settled orders from the registry: %s", err)

    # -- orders added after the switch fired ------------------------------------------------

    def _order_added(self, item: OrderItem) -> None:
        if not self._tripped.is_set() or self._closed:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            logger.warning(
                "stop order %r added after the kill switch fired, outside the event loop: "
                "the next trigger() cancels it",
                item,
            )
            return
        self._late.append(item)
        if self._late_run is None or self._late_run.done():
            self._late_run = loop.create_task(
                self._cancel_late(), name="asyncstop-kill-switch-late"
            )
            self._own(self._late_run)

    async def _cancel_late(self) -> None:
        while self._late and self._tripped.is_set():
            batch, self._late = self._late, []
            logger.warning(
                "kill switch tripped: cancelling %d stop order(s) added after it fired", len(batch)
            )
            try:
                report = await self._cancel(batch)
            except Exception as err:
                logger.error(
                    "cancelling stop orders added after the kill switch fired failed: %s: %s",
                    type(err).__name__,
                    err,
                    exc_info=err,
                )
                return
            self._forget(report)
            logger.warning("late cancels done: %r", report)

    # -- signals ----------------------------------------------------------------------------

    def install_signal_handlers(
        self, signals: Iterable[signal.Signals] = (signal.SIGINT, signal.SIGTERM)
    ) -> None:
        """Make SIGINT and SIGTERM (or ``signals``) fire the kill switch on the running loop.

        The first signal starts a run (``await trigger()`` joins it and returns
        its report) and trips the switch. When that run has ended, the program
        exits as the signal asked, unless it awaits :meth:`wait_tripped` or
        :meth:`trigger` (then it decides): ``SystemExit(128 + signal number)``
        is raised in the loop, so ``asyncio.run()`` cancels the remaining tasks
        (their ``async with`` blocks close) and the process exits with the
        shell's usual status. A signal within half a second of the first is
        the same request (``timeout`` and systemd deliver SIGTERM twice); a
        second signal later ends the process at once, by the signal's default
        action. A signal the process ignores (``nohup``, a background job)
        stays ignored. Unix only; :meth:`remove_signal_handlers` restores the
        default handling.
        """
        self.remove_signal_handlers()
        self._signals = StopSignals(self._on_signal, signals)
        self._signals.install()

    def remove_signal_handlers(self) -> None:
        """Restore the signals' default handling."""
        if self._signals is not None:
            self._signals.remove()

    def _on_signal(self, sig: signal.Signals) -> None:
        logger.warning("%s received: firing the kill switch", sig.name)
        self._start().add_done_callback(self._exit_after_run)

    def _exit_after_run(self, run: asyncio.Task[CancelReport]) -> None:
        sig = None if self._signals is None else self._signals.received
        if sig is None or self._watched or self._joiners:
            return  # the program awaits the switch: it decides when to exit
        logger.warning("kill switch run ended after %s: exiting", sig.name)
        # Raised from a loop callback, SystemExit stops the loop and
        # asyncio.run() then cancels and awaits every task, as for Ctrl-C.
        raise SystemExit(128 + sig)

    def __repr__(self) -> str:
        return (
            f"<KillSwitch deadline={self.deadline!r} running={self.running} tripped={self.tripped}>"
        )


def _weak_listener(switch: KillSwitch) -> Callable[[OrderItem], None]:
    """A registry listener that does not keep the switch alive."""
    ref = weakref.ref(switch)

    def added(item: OrderItem) -> None:
        alive = ref()
        if alive is not None:
            alive._order_added(item)

    return added


def _stream(
    orders: Iterable[OrderItem] | AsyncIterable[OrderItem],
) -> AsyncIterable[OrderItem]:
    """The orders as an async iterable: the bulk engine then reports an invalid item ``failed``.

    (Given a list, it refuses the whole call for one bad item; a kill switch
    must cancel the rest.)
    """
    if isinstance(orders, AsyncIterable):
        return orders
    return _feed(orders)


async def _feed(orders: Iterable[OrderItem]) -> AsyncIterator[OrderItem]:
    """Yield the orders, and to the loop now and then on a long list."""
    for index, item in enumerate(orders):
        yield item
        if index % _YIELD_EVERY == _YIELD_EVERY - 1:
            await asyncio.sleep(0)


def _log_failed_run(run: asyncio.Task[CancelReport]) -> None:
    """Log a run that failed, so a signal-started run nobody joined does not fail unseen."""
    if not run.cancelled() and (err := run.exception()) is not None:
        logger.error("kill switch run failed: %s: %s", type(err).__name__, err, exc_info=err)
