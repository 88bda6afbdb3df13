"""What a bulk cancel reports: one CancelResult per input item, in a CancelReport.

And the one JSON record of each, for every place that writes results out (the
command line's ``--json``, the watchdog's report file and pipe, a service's
database)::

    result_record(result)   {"order_id", "account_id", "outcome", "ok", "attempts",
                             "elapsed", "activated", "protective", "error", "order"}
    report_record(report)   {"orders", "ok", "warning", "counts", "pending_count",
                             "pending", "activated", "elapsed", "source_error",
                             "hedges_sent", "hedges_won"}

``result_from_record`` rebuilds a :class:`CancelResult` from its record
(error and order included), so a record can also cross a pipe.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

import msgspec

from ._errors import AsyncStopError, error_from_wire, error_to_wire
from ._models import StopOrder

__all__ = [
    "CancelOutcome",
    "CancelReport",
    "CancelResult",
    "OrderItem",
    "report_record",
    "result_from_record",
    "result_record",
]

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
    #: success, unless most orders of the call end so: then the report's
    #: ``warning`` says so, and these orders are pending and ``ok`` is False.
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
    #: certainly untouched; ``error`` says what stopped it.
    NOT_SENT = "not_sent"

    def __str__(self) -> str:
        return self.value


_SUCCESS: Final = frozenset(
    {CancelOutcome.CANCELLED, CancelOutcome.ALREADY_GONE, CancelOutcome.NOT_FOUND}
)
_SETTLED_UNDER_WARNING: Final = _SUCCESS - {CancelOutcome.NOT_FOUND}
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
    #: for ``not_sent``, what stopped it, the deadline included).
    error: AsyncStopError | None = None
    #: Requests for this order that reached the wire (headers sent).
    attempts: int = 0
    #: Seconds from the first attempt to the result (0 for ``not_sent``).
    elapsed: float = 0.0
    #: True when the order was registered as protective (a stop-loss guarding an
    #: open position): set by a kill switch or watchdog cancelling from a registry.
    protective: bool = False

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
        """True when no order may still be live, the source did not fail, and there is no warning.

        Under the :attr:`warning`, the ``not_found`` orders may be live on
        another account: the report is not ok, and they are :attr:`pending`.
        """
        settled = sum(self._counts[outcome] for outcome in _SUCCESS)
        return self.source_error is None and settled == len(self.results) and self.warning is None

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
        """Results whose order may still be live, once per order, in input order.

        Those ``failed``, ``unknown`` or ``not_sent``, and under the
        :attr:`warning` those ``not_found`` too (a wrong account id or base URL
        leaves the real orders live): what to send again, or to check by hand.
        """
        if self.warning is None:
            return _unique(r for r in self.results if r.outcome not in _SUCCESS)
        return _unique(r for r in self.results if r.outcome not in _SETTLED_UNDER_WARNING)

    @property
    def settled(self) -> list[CancelResult]:
        """Results whose order is certainly not live on its account: all but :attr:`pending`."""
        live = {id(r) for r in self.pending}
        return _unique(r for r in self.results if id(r) not in live)

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


# -- the one JSON record ---------------------------------------------------------------------


def result_record(result: CancelResult) -> dict[str, Any]:
    """One result as a JSON-ready dict: the one shape every writer of results uses.

    ``error`` is None or ``{"type": class name, "message": str, "fields":
    {...}}`` (:func:`~asyncstop._errors.error_to_wire`: status code, the
    exchange's message, and so on); ``order`` is None or the order as the
    exchange returned it (camelCase, as on the wire). ``elapsed`` is rounded
    to the microsecond. :func:`result_from_record` rebuilds the result.
    """
    error, order = result.error, result.order
    return {
        "order_id": result.order_id,
        "account_id": result.account_id,
        "outcome": result.outcome.value,
        "ok": result.ok,
        "attempts": result.attempts,
        "elapsed": round(result.elapsed, 6),
        "activated": result.activated,
        "protective": result.protective,
        "error": None if error is None else error_to_wire(error),
        "order": None if order is None else msgspec.to_builtins(order),
    }


def result_from_record(record: Mapping[str, Any]) -> CancelResult:
    """The :class:`CancelResult` that :func:`result_record` gave ``record`` for.

    Raises ``ValueError`` (``msgspec.ValidationError`` is one) for a dict that
    is not such a record.
    """
    error, order = record.get("error"), record.get("order")
    try:
        return CancelResult(
            order_id=record["order_id"],
            account_id=record["account_id"],
            outcome=CancelOutcome(record["outcome"]),
            order=None if order is None else msgspec.convert(order, StopOrder),
            error=None if error is None else error_from_wire(error),
            attempts=int(record.get("attempts", 0)),
            elapsed=float(record.get("elapsed", 0.0)),
            protective=bool(record.get("protective", False)),
        )
    except (KeyError, TypeError) as err:
        raise ValueError(f"not a result record: {err}") from None


def report_record(report: CancelReport, *, max_ids: int | None = None) -> dict[str, Any]:
    """A report's summary as a JSON-ready dict: counts per outcome and what may still be live.

    ``pending`` and ``activated`` list ``[account_id, order_id]`` pairs (the
    orders that may still be live, warning included, and the cancelled stops
    that had already triggered), each cut to the first ``max_ids`` when given;
    ``pending_count`` is always the full count. ``counts`` has every outcome.
    ``source_error`` is ``"ClassName: message"`` or None.
    """
    pending = report.pending
    activated = report.activated
    source_error = report.source_error
    return {
        "orders": len(report),
        "ok": report.ok,
        "warning": report.warning,
        "counts": {outcome.value: count for outcome, count in report.counts.items()},
        "pending_count": len(pending),
        "pending": [[r.account_id, r.order_id] for r in pending[:max_ids]],
        "activated": [[r.account_id, r.order_id] for r in activated[:max_ids]],
        "elapsed": round(report.elapsed, 6),
        "source_error": (
            None if source_error is None else f"{type(source_error).__name__}: {source_error}"
        ),
        "hedges_sent": report.hedges_sent,
        "hedges_won": report.hedges_won,
    }
