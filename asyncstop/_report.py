"""What a bulk cancel reports: one CancelResult per input item, in a CancelReport."""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Final

import msgspec

from ._errors import AsyncStopError
from ._models import StopOrder

__all__ = ["CancelOutcome", "CancelReport", "CancelResult", "OrderItem"]

#: An order id for the client's account, or an ``(account_id, order_id)`` pair.
OrderItem = str | tuple[str, str]


class CancelOutcome(enum.StrEnum):
    """What became of one order in a bulk cancel."""

    #: The exchange answered 2xx with this order's Cancel Stop order reply.
    CANCELLED = "cancelled"
    #: The exchange answered 404 after an attempt of ours whose outcome was
    #: unknown (timeout, dropped connection, 5xx): most likely our own cancel.
    #: Not live on this account; counts as success.
    ALREADY_GONE = "already_gone"
    #: The exchange answered 404 to the first attempt: it has no live stop
    #: order with this id for this account (filled, cancelled elsewhere, or a
    #: wrong account id or base URL). Not live on this account; counts as
    #: success, and a call where most orders end so carries a warning.
    NOT_FOUND = "not_found"
    #: A definitive refusal that retrying cannot change (400, 403, a 401 that a
    #: fresh token did not cure, a redirect, an invalid item): the order may be live.
    FAILED = "failed"
    #: A request was sent, but its outcome is unknown (timeout, dropped
    #: connection, 5xx, a 2xx that was not this order's reply) or the exchange
    #: kept asking to slow down (429), and retries or the deadline ran out:
    #: the order may be live.
    UNKNOWN = "unknown"
    #: No request for this order reached the exchange (the deadline, a refused
    #: connection, a refused token, a failing token provider): the order is
    #: certainly untouched; ``error`` says what stopped it, if anything did.
    NOT_SENT = "not_sent"

    def __str__(self) -> str:
        return self.value


_SUCCESS: Final = frozenset(
    {CancelOutcome.CANCELLED, CancelOutcome.ALREADY_GONE, CancelOutcome.NOT_FOUND}
)
#: A call gets a warning when at least this many of its orders, and most of
#: them, are ``not_found`` while none was cancelled.
NOT_FOUND_WARNING_MIN: Final = 3


class CancelResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The result of cancelling one order in a bulk call.

    Not tracked by the garbage collector (its error is kept without its
    traceback, so it can be in no reference cycle): a report of 100,000
    results adds no work to the collections that pause the event loop.
    """

    order_id: str
    account_id: str
    outcome: CancelOutcome
    #: The order as the exchange returned it (``cancelled`` only).
    order: StopOrder | None = None
    #: The last error, if any (for ``already_gone`` and ``not_found``, the 404;
    #: for ``not_sent``, what stopped it, or None when the deadline did).
    error: AsyncStopError | None = None
    #: Requests for this order that reached the wire (headers sent).
    attempts: int = 0
    #: Seconds from the first attempt to the result (0 for ``not_sent``).
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the order is not live on its account (cancelled, already gone, not found)."""
        return self.outcome in _SUCCESS

    @property
    def activated(self) -> bool:
        """True when the exchange reported the stop as already triggered when it was cancelled."""
        return self.order is not None and self.order.activated


class CancelReport:
    """The results of one bulk cancel, one per input item, in input order."""

    __slots__ = ("_counts", "elapsed", "hedges_sent", "hedges_won", "results", "source_error")

    def __init__(
        self,
        results: list[CancelResult],
        elapsed: float,
        source_error: Exception | None = None,
        *,
        counts: dict[CancelOutcome, int] | None = None,
        hedges_sent: int = 0,
        hedges_won: int = 0,
    ) -> None:
        #: One result per input item, in input order (duplicates share a result).
        self.results: Final = results
        #: Seconds the whole call took.
        self.elapsed: Final = elapsed
        #: The exception that ended an iterator or async source early, if one did:
        #: the results then cover only the orders it gave before failing.
        self.source_error: Final = source_error
        if counts is None:
            counts = dict.fromkeys(CancelOutcome, 0)
            for result in results:
                counts[result.outcome] += 1
        self._counts = counts
        #: Backup requests sent for orders whose first request was slow (``hedge=``).
        self.hedges_sent: Final = hedges_sent
        #: Backup requests whose answer settled their order first.
        self.hedges_won: Final = hedges_won

    @property
    def counts(self) -> dict[CancelOutcome, int]:
        """How many input items ended in each outcome (every outcome is a key)."""
        return dict(self._counts)

    @property
    def ok(self) -> bool:
        """True when no order may still be live (and the source did not fail)."""
        settled = sum(self._counts[outcome] for outcome in _SUCCESS)
        return self.source_error is None and settled == len(self.results)

    @property
    def warning(self) -> str | None:
        """A warning when most orders were not found and none was cancelled, else None.

        That pattern rarely means the orders were all gone: far more often the
        account id or the base URL is wrong, and the real orders are still live.
        """
        not_found = self._counts[CancelOutcome.NOT_FOUND]
        if (
            not_found < NOT_FOUND_WARNING_MIN
            or not_found * 2 <= len(self.results)
            or self._counts[CancelOutcome.CANCELLED]
        ):
            return None
        return (
            f"{not_found} of {len(self.results)} orders were not found and none was cancelled: "
            "check the account id and the base URL (the orders may be live elsewhere), "
            "unless they were already filled or cancelled"
        )

    @property
    def pending(self) -> list[CancelResult]:
        """Results whose order may still be live (failed, unknown, not_sent), once per order."""
        return _unique(r for r in self.results if r.outcome not in _SUCCESS)

    @property
    def activated(self) -> list[CancelResult]:
        """Cancelled orders whose stop had already triggered: they may have left a live order."""
        return _unique(r for r in self.results if r.activated)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        counts = ", ".join(f"{k.value}={v}" for k, v in self._counts.items() if v)
        if self.hedges_sent:
            counts += f"; hedges {self.hedges_won}/{self.hedges_sent} won"
        return (
            f"<CancelReport {len(self.results)} orders in {self.elapsed:.3f}s: {counts or 'none'}>"
        )


def _unique(results: Iterable[CancelResult]) -> list[CancelResult]:
    return list({id(r): r for r in results}.values())
