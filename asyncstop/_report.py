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

    #: The exchange answered 2xx: the order is cancelled.
    CANCELLED = "cancelled"
    #: The exchange answered 404: the order does not exist or is no longer live
    #: (on the first attempt, or after an attempt with an unknown outcome that
    #: most likely cancelled it). Counts as success.
    ALREADY_GONE = "already_gone"
    #: A definitive refusal that retrying cannot change (400, 403, a 401 that a
    #: fresh token did not cure, a redirect, an invalid id): the order may be live.
    FAILED = "failed"
    #: The last attempt's outcome is unknown (timeout, dropped connection, 5xx)
    #: or the exchange kept asking to slow down (429), and retries or the
    #: deadline ran out: the order may be live.
    UNKNOWN = "unknown"
    #: The deadline passed before any request for this order was sent: the
    #: order is certainly still live.
    NOT_SENT = "not_sent"

    def __str__(self) -> str:
        return self.value


_SUCCESS: Final = frozenset({CancelOutcome.CANCELLED, CancelOutcome.ALREADY_GONE})


class CancelResult(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """The result of cancelling one order in a bulk call.

    Not tracked by the garbage collector (its error is kept without its
    traceback, so it can be in no reference cycle): a report of 100,000
    results adds no work to the collections that pause the event loop.
    """

    order_id: str
    account_id: str
    outcome: CancelOutcome
    #: The order as the exchange returned it (``cancelled`` only; None when its
    #: body could not be decoded, in which case ``error`` says why).
    order: StopOrder | None = None
    #: The last error, if any (for ``already_gone``, the 404 with its
    #: ``after_unknown_attempt``).
    error: AsyncStopError | None = None
    #: Requests sent for this order.
    attempts: int = 0
    #: Seconds from the first attempt to the result (0 for ``not_sent``).
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the order is certainly no longer live (cancelled or already gone)."""
        return self.outcome in _SUCCESS

    @property
    def activated(self) -> bool:
        """True when the exchange reported the stop as already triggered when it was cancelled."""
        return self.order is not None and self.order.activated


class CancelReport:
    """The results of one bulk cancel, one per input item, in input order."""

    __slots__ = ("_counts", "elapsed", "results", "source_error")

    def __init__(
        self,
        results: list[CancelResult],
        elapsed: float,
        source_error: Exception | None = None,
        *,
        counts: dict[CancelOutcome, int] | None = None,
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

    @property
    def counts(self) -> dict[CancelOutcome, int]:
        """How many input items ended in each outcome (every outcome is a key)."""
        return dict(self._counts)

    @property
    def ok(self) -> bool:
        """True when every order ended cancelled or already gone (and the source did not fail)."""
        return self.source_error is None and self._counts[CancelOutcome.CANCELLED] + self._counts[
            CancelOutcome.ALREADY_GONE
        ] == len(self.results)

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
        return (
            f"<CancelReport {len(self.results)} orders in {self.elapsed:.3f}s: {counts or 'none'}>"
        )


def _unique(results: Iterable[CancelResult]) -> list[CancelResult]:
    return list({id(r): r for r in results}.values())
