"""A fake exchange for testing and benchmarking asyncstop without mocks.

:class:`FakeExchange` serves the documented endpoints, Cancel Stop order
(``DELETE /frontoffice/api/v3/stop-orders/{orderId}``) and Get accounts
(``GET /frontoffice/api/v3/accounts``), on loopback. It holds realistic stop
orders and accounts, records every request in a journal (never the token), and
can misbehave on purpose: scripted :class:`Fault` actions (queued, or scheduled
by request number so that they are certain to fire), a seeded random
:class:`Faults` mix, latency, and a per-account rate limit that counts requests
ignoring a 429 pause::

    from asyncstop.testing import FakeExchange, Fault, Faults, wait_until

    async def test_cancel_survives_a_dropped_answer():
        async with FakeExchange(tokens={"t1"}, seed=0) as exchange:
            ids = exchange.add_stop_orders(100, account_id="acc-1")
            exchange.inject(Fault.drop(after=True), Fault.error(503))
            ...  # point the client at exchange.base_url with token "t1"
            assert exchange.open_stop_orders("acc-1") == set()
            assert not exchange.pause_violations

:func:`wait_until` waits in a test for a condition the loop will make true.
:func:`watchdog_service` runs the off-host ``asyncstop watchdog --store`` as a
child process while a block runs, to try a bot's lease against it.
From a shell, ``python -m asyncstop.testing --port 8080 --orders 1000`` serves
one until Ctrl-C (see ``--help``), with its control surface under ``/_fake``
(``docs/fake-exchange.md``); :func:`main` is that command line, and
:func:`add_fake_exchange_arguments` and :func:`run_fake_exchange` let another
command line offer the same one.

The modules, one concern each: ``_exchange`` (the server, a request's four
steps), ``_gate`` (what is refused at once), ``_faults`` (what can go wrong, and
which request it happens to), ``_faultbook`` (the faults a test asked for, the
outage), ``_ratelimit`` (token buckets, 429 pauses and their judge, shared with
the benchmarks' servers), ``_replies`` (every answer), ``_journal``, ``_orders``
and ``_accounts`` (the exchange's records), ``_control`` (the loopback-only
control surface under ``/_fake/``: counts, new orders, faults, from a shell),
``_runner`` (the command line), ``_service`` (the off-host service as a child
process) and ``_wait``.
"""

from ._accounts import FakeAccount
from ._exchange import FakeExchange
from ._faults import Fault, Faults, LongTailLatency, spread_faults
from ._journal import JournalEntry, Outcome
from ._orders import FakeStopOrder
from ._runner import add_fake_exchange_arguments, main, parse_duration, run_fake_exchange
from ._service import WatchdogService, watchdog_service
from ._wait import wait_until

__all__ = [
    "FakeAccount",
    "FakeExchange",
    "FakeStopOrder",
    "Fault",
    "Faults",
    "JournalEntry",
    "LongTailLatency",
    "Outcome",
    "WatchdogService",
    "add_fake_exchange_arguments",
    "main",
    "parse_duration",
    "run_fake_exchange",
    "spread_faults",
    "wait_until",
    "watchdog_service",
]

for _public in (
    FakeAccount,
    FakeExchange,
    FakeStopOrder,
    Fault,
    Faults,
    JournalEntry,
    LongTailLatency,
    Outcome,
    WatchdogService,
    add_fake_exchange_arguments,
    main,
    parse_duration,
    run_fake_exchange,
    spread_faults,
    wait_until,
    watchdog_service,
):
    _public.__module__ = __name__
del _public
