"""The faults a test has asked a fake exchange for: scripted, scheduled, random, an outage.

:class:`FaultBook` is the half of :class:`~asyncstop.testing.FakeExchange` that
tests use to set faults up, as :class:`~asyncstop.testing._orders.OrderBook` is
the half that holds its orders: the random mix (``faults``), the outage, the
scripts and the schedule (kept by a :class:`~asyncstop.testing._faults.FaultDraw`)
and the faults of ``GET /accounts``. The server reads them as requests arrive.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ._faults import Fault, FaultDraw, Faults, checked_faults, checked_outage

__all__ = ["FaultBook"]

#: Faults that answer about one order, meaningless for GET /accounts.
_ORDER_FAULTS: Final = frozenset({"other_order", "stale_reply"})


class FaultBook:
    """The faults of a fake exchange and how tests set them up.

    Attributes:
        faults: the random fault mix (reassignable).
    """

    def __init__(
        self, seed: int, schedule: Mapping[int, Fault] | None, faults: Faults | None
    ) -> None:
        self._draw = FaultDraw(seed, schedule)
        self.faults: Faults = faults if faults is not None else Faults()
        self._outage: Fault | None = None
        self._accounts_script: list[Fault] = []

    @property
    def outage(self) -> Fault | None:
        """A fault every cancel and ``GET /accounts`` meets before anything else; None: none.

        ``Fault.error(503)``, ``Fault.drop()`` or ``Fault.hang()``, cancelling
        nothing, whatever the token: the exchange is down. It takes no request
        number and leaves the scripted faults for later.
        """
        return self._outage

    @outage.setter
    def outage(self, fault: Fault | None) -> None:
        self._outage = checked_outage(fault)

    @property
    def pending_faults(self) -> int:
        """Faults not consumed yet: scheduled, per order, in the FIFO and for GET /accounts."""
        return self._draw.pending + len(self._accounts_script)

    @property
    def requests_numbered(self) -> int:
        """DELETE requests past the gate so far: the number the next one's is above."""
        return self._draw.drawn

    def inject(self, *faults: Fault) -> None:
        """Queue scripted faults; each is consumed by one later DELETE request, in order."""
        self._draw.inject(faults)

    def inject_for(self, order_id: str, *faults: Fault) -> None:
        """Queue scripted faults for requests about ``order_id`` only; they go before the FIFO's."""
        self._draw.inject_for(order_id, faults)

    def inject_at(self, number: int, fault: Fault) -> None:
        """Schedule ``fault`` for the ``number``-th DELETE request past the gate (from 1).

        It wins over every other fault of that request, and is certain to fire
        once that many requests have passed the gate (see :attr:`requests_numbered`).
        """
        self._draw.inject_at(number, fault)

    def inject_accounts(self, *faults: Fault) -> None:
        """Queue faults for later ``GET /accounts`` requests with an accepted token, in order.

        E.g. ``Fault.reply(200, b"<html>", {"Content-Type": "text/html"})`` for a
        gateway's page, or ``Fault.error(404)`` for a base URL off the API.
        """
        for fault in checked_faults(faults):
            if fault.kind in _ORDER_FAULTS:
                raise ValueError(f"a {fault.kind} fault needs an order; GET /accounts has none")
            self._accounts_script.append(fault)
