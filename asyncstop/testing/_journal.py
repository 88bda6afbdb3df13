"""The fake exchange's record of every request: :class:`JournalEntry` and its :class:`Outcome`."""

from __future__ import annotations

import asyncio
import enum

import msgspec

__all__ = ["JournalEntry", "Outcome", "PendingEntry"]


class Outcome(enum.StrEnum):
    """What the fake exchange did with a request; members are ``str`` and equal their value.

    ``JournalEntry.outcome == "cancelled"`` and ``== Outcome.CANCELLED`` are the
    same test. ``applied`` on the entry says whether the request cancelled the
    order, which matters for the ``*_after`` outcomes and ``replied``.
    """

    #: 200: the order was live and the account's; it is now cancelled.
    CANCELLED = "cancelled"
    #: 404: no such order, another account's order, already cancelled, or no order id in the path.
    NOT_FOUND = "not_found"
    #: 404 (the same body as ``not_found``): the token may not use the ``accountId`` sent.
    ACCOUNT_NOT_ALLOWED = "account_not_allowed"
    #: ``GET /frontoffice/api/v3/accounts`` answered 200 with the token's accounts.
    ACCOUNTS = "accounts"
    #: 401: no ``Authorization: Bearer <token>`` with an accepted token; ``Fault.unauthorized()``.
    UNAUTHORIZED = "unauthorized"
    #: 400: no ``accountId``, or (``strict_headers``) wrong Content-Type, no Accept, or a body.
    BAD_REQUEST = "bad_request"
    #: 429: the account's token bucket was empty, it was in a pause, ``Fault.rate_limited()``
    #: or ``Faults.rate_limited``.
    RATE_LIMITED = "rate_limited"
    #: An error status (``Fault.error``, ``Faults.error_before``, an outage) without cancelling.
    ERROR_BEFORE = "error_before"
    #: An error status after cancelling, if the order was live and the account's.
    ERROR_AFTER = "error_after"
    #: The connection was closed with no answer, nothing cancelled (also: still waiting at close).
    DROPPED_BEFORE = "dropped_before"
    #: The cancel was applied (if applicable), then the connection was closed with no answer.
    DROPPED_AFTER = "dropped_after"
    #: Never answered; the connection was dropped when the exchange closed.
    HUNG = "hung"
    #: A HEAD request (the client's connection warm-up), answered 200 with no body.
    WARM_UP = "warm_up"
    #: 405: a method other than DELETE or HEAD (GET only on the accounts path).
    METHOD_NOT_ALLOWED = "method_not_allowed"
    #: An answer that is not the documented one, after cancelling if the fault asked to:
    #: ``Fault.reply`` (an HTML page, an empty body...), ``Fault.other_order``,
    #: ``Fault.huge_body``, ``Fault.endless_body`` or ``Fault.gzip_bomb``.
    REPLIED = "replied"
    #: ``Fault.redirect``: 307 with a Location header, nothing cancelled.
    REDIRECTED = "redirected"
    #: Not answered yet: the request is inside the exchange (the entry is replaced when it is).
    IN_FLIGHT = "in_flight"


class JournalEntry(msgspec.Struct, frozen=True, kw_only=True):
    """One request as the fake exchange saw it.

    ``time`` and ``done_time`` are the server's ``loop.time()`` at arrival and
    when the answer was handed over (or the connection dropped): the same
    monotonic clock as a client's ``asyncio.get_running_loop().time()`` in the
    same process. ``done_time`` is ``inf`` while the request is in flight or hung.
    ``status`` is None when no answer was sent. ``headers`` are the request
    headers without ``Authorization``: the token is never stored;
    ``authorized`` says whether it was accepted.
    """

    method: str
    path: str
    order_id: str | None
    account_id: str | None
    time: float
    done_time: float
    status: int | None
    outcome: str
    headers: dict[str, str]
    authorized: bool
    #: True when this request cancelled the order (turned it from live to not live).
    applied: bool = False

    @property
    def duration(self) -> float:
        """Seconds from arrival to answer (``inf`` while unanswered)."""
        return self.done_time - self.time


class PendingEntry:
    """A request's place in the journal while it is inside the exchange."""

    __slots__ = ("entry", "index", "journal", "loop")

    def __init__(
        self,
        entry: JournalEntry,
        journal: list[JournalEntry] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.entry = entry
        self.journal = journal
        self.loop = loop
        self.index = 0
        if journal is not None:
            self.index = len(journal)
            journal.append(entry)

    def mark(self, outcome: Outcome) -> None:
        """Show a not yet answered request's outcome (a hang, a stream) in the journal."""
        self.entry = msgspec.structs.replace(self.entry, outcome=outcome)
        if self.journal is not None:
            self.journal[self.index] = self.entry

    def settle(self, status: int | None, outcome: Outcome, applied: bool = False) -> JournalEntry:
        """Record the answer (or its absence) now; return the final entry."""
        final = msgspec.structs.replace(
            self.entry,
            done_time=self.loop.time(),
            status=status,
            outcome=outcome,
            applied=applied,
        )
        if self.journal is not None:
            self.journal[self.index] = final
        return final
