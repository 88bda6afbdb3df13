"""A fake exchange for testing and benchmarking asyncstop without mocks.

:class:`FakeExchange` serves the documented Cancel Stop order endpoint,
``DELETE /frontoffice/api/v3/stop-orders/{orderId}``, on loopback. It holds
realistic stop orders, records every request in a journal (never the token),
and can misbehave on purpose: scripted :class:`Fault` actions, a seeded random
:class:`Faults` mix, latency, and a per-account rate limit that counts
requests ignoring a 429 pause::

    from asyncstop.testing import FakeExchange, Fault, Faults

    async def test_cancel_survives_a_dropped_answer():
        async with FakeExchange(tokens={"t1"}, seed=0) as exchange:
            ids = exchange.add_stop_orders(100, account_id="acc-1")
            exchange.inject(Fault.drop(after=True), Fault.error(503))
            ...  # point the client at exchange.base_url with token "t1"
            assert exchange.open_stop_orders("acc-1") == set()
            assert not exchange.pause_violations

From a shell, ``python -m asyncstop.testing --port 8080 --orders 1000`` serves one
until Ctrl-C (see ``--help``); :func:`main` is that command line.
"""

from ._exchange import FakeExchange
from ._faults import Fault, Faults, LongTailLatency
from ._journal import JournalEntry, Outcome
from ._orders import FakeStopOrder
from ._runner import main, parse_duration

__all__ = [
    "FakeExchange",
    "FakeStopOrder",
    "Fault",
    "Faults",
    "JournalEntry",
    "LongTailLatency",
    "Outcome",
    "main",
    "parse_duration",
]

for _public in (FakeExchange, FakeStopOrder, Fault, Faults, JournalEntry, LongTailLatency, Outcome):
    _public.__module__ = __name__
del _public
