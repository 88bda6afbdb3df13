"""``asyncstop demo``: a kill switch, then a killed bot's watchdog, judged by a fake exchange.

Part 1 seeds stop orders over a few accounts on a
:class:`asyncstop.testing.FakeExchange` with the latency and faults of a busy
but healthy venue, fires a :class:`asyncstop.KillSwitch` (up to three times,
as an operator would), and compares the client's report with the exchange's
own list of live orders. Part 2 (:mod:`.demo_watchdog`) kills a bot process
holding live stops with SIGKILL as the exchange starts failing every cancel,
and shows its :class:`asyncstop.Watchdog` keeping at it until the exchange
recovers and every stop is cancelled.
"""

from __future__ import annotations

import argparse
import math
import time
from typing import IO, TYPE_CHECKING, Final

from asyncstop import (
    AsyncStopClient,
    CancelOutcome,
    CancelReport,
    CancelResult,
    KillSwitch,
    OrderNotFoundError,
    OrderStatus,
    StopOrderRegistry,
)

from .._argtypes import count
from .bulk import ResultTracker
from .common import EXIT_OK, EXIT_PENDING, PROG, Subcommands, UsageError
from .context import Context
from .demo_offhost import run_offhost_part
from .demo_watchdog import BOT_ORDERS, run_watchdog_part
from .display import add_output_arguments, describe_pending, make_progress, print_summary
from .output import Output
from .running import loop_factory, run_coroutine

if TYPE_CHECKING:
    from asyncstop.testing import FakeExchange

__all__ = ["add_parser", "run"]

_TOKEN: Final = "demo-token"  # noqa: S105 - the in-process fake's token
#: Stop orders per account, as ``fake-exchange --orders`` counts them.
_ORDERS_PER_ACCOUNT: Final = 1000
_ACCOUNTS: Final = 2
_CONCURRENCY: Final = 64
_MEDIAN_LATENCY: Final = 0.020
_P99_LATENCY: Final = 0.150
_MAX_LATENCY: Final = 0.500
_ACTIVATED_FRACTION: Final = 0.02
#: Requests per second per account the demo exchange allows: above what 64 requests
#: in flight at 20 ms can send, so a well-behaved client never meets a 429.
_EXCHANGE_RATE_LIMIT: Final = 4000.0
#: Each trigger's deadline and the number of triggers: the demo ends within 15 s whatever happens.
_DEADLINE: Final = 4.0
_MAX_TRIGGERS: Final = 3
#: ``still live:`` lines shown before the rest are only counted.
_STILL_LIVE_SHOWN: Final = 20
_MS: Final = 1000


def add_parser(commands: Subcommands) -> None:
    """Add ``demo`` to the subcommands ``commands``."""
    parser = commands.add_parser(
        "demo",
        help="watch the kill switch cancel 2,000 stop orders, a watchdog cancel the stops "
        "of a bot killed with SIGKILL during an outage, and the off-host service those of a "
        "dead machine's bot (with PostgreSQL), on a fake exchange in this process",
        description=(
            "Start a fake exchange with realistic latency and faults. Part 1: seed stop orders, "
            "fire the kill switch, and compare the report with the exchange's own view. "
            "Part 2: start a bot process that arms a watchdog (a separate process) and records "
            "its stops in a durable registry; make the exchange fail every cancel (503) for 3 s "
            "and kill the bot with SIGKILL meanwhile; show the watchdog retrying through the "
            "outage and cancelling every stop after it: the time from the recovery to the last "
            "cancel, and the exchange's count of live stops before and after. The bot's and the "
            "watchdog's log is shown on stderr after part 2 with -v, or when part 2 fails. "
            "Part 3, when PostgreSQL's server binaries and asyncpg are here: start a temporary "
            "PostgreSQL, a bot holding a lease and an off-host service, each a process of its "
            "own; SIGKILL the bot's process group (a machine's death) and show the service "
            "cancelling its stops once the lease expires; otherwise one line says why it skips."
        ),
        epilog="exit status: 0 every part leaves no stop order live on the exchange; 1 some are",
    )
    parser.add_argument(
        "--orders",
        type=count(1),
        default=_ORDERS_PER_ACCOUNT,
        help="part 1: stop orders per account, as in fake-exchange (default: %(default)s)",
    )
    parser.add_argument(
        "--bot-orders",
        type=count(1),
        default=BOT_ORDERS,
        help="part 2: stop orders the bot holds when it is killed (default: %(default)s)",
    )
    parser.add_argument(
        "--accounts",
        type=count(1),
        default=_ACCOUNTS,
        help="part 1: accounts that hold stop orders (default: %(default)s)",
    )
    parser.add_argument(
        "--concurrency",
        type=count(1),
        default=_CONCURRENCY,
        help="requests in flight, for the kill switch and the watchdog (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seeds the exchange's order ids, faults and latency (default: %(default)s)",
    )
    add_output_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """``asyncstop demo``."""
    return run_coroutine(_demo(args, context.out), loop_factory(args.uvloop))


def _say(out: Output, text: str = "") -> None:
    out.run(lambda stream: print(text, file=stream))


async def _demo(args: argparse.Namespace, out: Output) -> int:
    try:
        from asyncstop.testing import (  # noqa: PLC0415 - only the demo needs the fake exchange
            FakeExchange,
            Faults,
            LongTailLatency,
        )
    except ImportError as err:
        raise UsageError(f"the demo needs asyncstop.testing: {err}") from None

    faults = Faults(
        error_before=0.02,
        error_after=0.02,
        drop_after=0.01,
        error_status=503,
        latency=LongTailLatency(median=_MEDIAN_LATENCY, p99=_P99_LATENCY, max=_MAX_LATENCY),
    )
    async with FakeExchange(
        tokens={_TOKEN}, seed=args.seed, faults=faults, rate_limit=_EXCHANGE_RATE_LIMIT
    ) as exchange:
        _say(
            out,
            f"{PROG} demo: two ways to cancel stop orders, judged by a fake exchange "
            "in this process",
        )
        _say(
            out,
            f"  exchange  {exchange.base_url}: latency median {_MEDIAN_LATENCY * _MS:.0f} ms, "
            f"p99 {_P99_LATENCY * _MS:.0f} ms, max {_MAX_LATENCY * _MS:.0f} ms; "
            f"{faults.error_before:.0%} HTTP 503 before cancelling, "
            f"{faults.error_after:.0%} after, {faults.drop_after:.0%} connections dropped "
            f"after cancelling; at most {_EXCHANGE_RATE_LIMIT:,.0f} requests/s per account",
        )
        kill_switch_ok = await _kill_switch_part(exchange, args, out)
        watchdog_ok = await run_watchdog_part(
            exchange,
            out,
            token=_TOKEN,
            orders=args.bot_orders,
            concurrency=args.concurrency,
            verbose=args.verbose,
        )
        # None: skipped (no PostgreSQL here), which leaves nothing live either.
        offhost_ok = await run_offhost_part(exchange, out, token=_TOKEN, verbose=args.verbose)
    _say(out)
    if kill_switch_ok and watchdog_ok and offhost_ok is not False:
        ran = "All three parts" if offhost_ok else "Both parts"
        _say(out, f"{ran} leave 0 live stop orders on the exchange.")
        return EXIT_OK
    failed = [
        name
        for name, ok in (("1", kill_switch_ok), ("2", watchdog_ok), ("3", offhost_ok))
        if ok is False
    ]
    _say(
        out,
        f"Part {' and '.join(failed)} left stop orders live on the exchange; "
        "the lines above say why.",
    )
    return EXIT_PENDING


async def _kill_switch_part(exchange: FakeExchange, args: argparse.Namespace, out: Output) -> bool:
    """Part 1: a kill switch over the accounts; True when none of their stops is left live."""
    accounts = [f"demo-{n}" for n in range(1, args.accounts + 1)]
    concurrency: int = args.concurrency
    reports: list[CancelReport] = []
    registry = StopOrderRegistry()
    for account_id in accounts:
        for order_id in exchange.add_stop_orders(
            args.orders, account_id=account_id, activated_fraction=_ACTIVATED_FRACTION
        ):
            registry.add(order_id, account_id=account_id)
    total = len(registry)
    triggered = {
        oid for oid, order in exchange.orders.items() if order.status == OrderStatus.ACTIVATED
    }
    _say(
        out,
        f"Part 1: a kill switch in this process cancels the stops of {len(accounts)} account(s)",
    )
    _say(
        out,
        f"  orders    {total:,} live stop orders over {len(accounts)} account(s), "
        f"{len(triggered)} of them already triggered (status Activated: cancelling such a "
        "stop does not cancel the order it placed)",
    )
    async with AsyncStopClient(
        base_url=exchange.base_url, token=_TOKEN, max_concurrency=concurrency
    ) as client:
        warm = await client.warm_up()
        _say(
            out,
            f"  client    concurrency {concurrency}, {warm} connections warmed up; "
            "firing the kill switch",
        )
        started = time.monotonic()
        for round_number in range(1, _MAX_TRIGGERS + 1):
            items = [item for item in registry.snapshot() if isinstance(item, tuple)]
            title = "kill switch" if round_number == 1 else f"kill switch, round {round_number}"
            tracker = ResultTracker(
                items,
                progress=make_progress(
                    title,
                    len(items),
                    wanted=args.progress,
                    json_on_tty=False,
                    verbose=args.verbose > 0,
                ),
            )
            # The registry keeps only what may still be live, so a second
            # trigger retries exactly those, as an operator would.
            switch = KillSwitch(client, registry, deadline=_DEADLINE, on_result=tracker.on_result)
            try:
                report = await switch.trigger()
            finally:
                tracker.stop_progress()
            reports.append(report)
            _say(out)
            _say_summary(out, report, title)
            if not registry:
                break
            if round_number < _MAX_TRIGGERS:
                _say(
                    out,
                    f"{len(registry)} order(s) may still be live: triggering again, "
                    "as an operator would.",
                )
        took = time.monotonic() - started
    live = set().union(*(exchange.open_stop_orders(account_id) for account_id in accounts))

    last: dict[str, CancelResult] = {}
    for report in reports:
        for result in report.results:
            last[result.order_id] = result
    _say(out)
    _explain_lost_answers(out, reports)
    _explain_triggered(out, triggered, last)
    _say(
        out,
        f"The client's report: {total - len(registry):,} of {total:,} orders cancelled or "
        f"already gone; {len(registry)} may still be live.",
    )
    _say(out, f"The exchange's own view: {len(live)} live stop orders.")
    still_live = sorted(live)
    for order_id in still_live[:_STILL_LIVE_SHOWN]:
        known = last.get(order_id)
        why = "never reported" if known is None else describe_pending(known)
        _say(out, f"  still live: {order_id}: reported {why}")
    if len(still_live) > _STILL_LIVE_SHOWN:
        _say(out, f"  ... and {len(still_live) - _STILL_LIVE_SHOWN:,} more still live")
    _say(out, _time_line(reports, took, total, concurrency, live=bool(live)))
    if live:
        _say(
            out,
            f"{len(live)} stop order(s) are still live on the exchange; the lines above say why.",
        )
        return False
    _say(out, "Every stop order is gone from the exchange, and the report says so.")
    return True


def _say_summary(out: Output, report: CancelReport, title: str) -> None:
    def write(stream: IO[str]) -> None:
        print_summary(
            report,
            stream,
            title=title,
            pending_hint="report.pending has all",
            activated_hint="report.activated has all",
        )

    out.run(write)


def _explain_lost_answers(out: Output, reports: list[CancelReport]) -> None:
    lost_answers = sum(
        1
        for report in reports
        for r in report.results
        if isinstance(r.error, OrderNotFoundError) and r.error.after_unknown_attempt
    )
    if lost_answers:
        _say(
            out,
            f"{lost_answers} already_gone: their answer was lost (503 or dropped connection "
            "after cancelling); the retry met 404: the first attempt had cancelled them.",
        )
    # Only this demo's client cancels, so a 404 in a later round means an earlier
    # round's request did cancel the order: its answer was lost or came too late.
    found_gone_later = sum(
        1 for report in reports[1:] for r in report.results if r.outcome is CancelOutcome.NOT_FOUND
    )
    if found_gone_later:
        _say(
            out,
            f"{found_gone_later} not_found in a later round: an earlier round had cancelled "
            "them, but the answer was lost (503 or dropped connection after cancelling) or "
            "came after the deadline, so that round reported them unknown.",
        )


def _explain_triggered(out: Output, triggered: set[str], last: dict[str, CancelResult]) -> None:
    """Why the report names fewer triggered stops than the exchange held: only a reply shows it."""
    results = [last[oid] for oid in triggered if oid in last]
    seen = sum(1 for r in results if r.activated)
    if seen == len(triggered):
        return
    gone = sum(1 for r in results if not r.activated and r.ok)
    rest = len(triggered) - seen - gone
    text = (
        f"Of the {len(triggered)} stops that had already triggered, the report names {seen}: "
        "only the exchange's reply to a cancel shows the status"
    )
    if gone:
        text += f"; {gone} ended already_gone, whose reply was lost"
    if rest:
        text += f"; {rest} may still be live"
    _say(out, text + ".")


def _time_line(
    reports: list[CancelReport], took: float, total: int, concurrency: int, *, live: bool
) -> str:
    # With several triggers the first stopped at its deadline: only the total
    # time covers every order, so only it compares with the bound.
    elapsed = reports[0].elapsed if len(reports) == 1 else took
    text = f"Time: {elapsed:.2f} s for {total:,} orders" + (
        f" over {len(reports)} triggers" if len(reports) > 1 else ""
    )
    if live:
        # A time that did not cancel everything says nothing about the bound.
        return text + "; not compared with the bound, since orders are still live."
    bound = math.ceil(total / concurrency) * _MEDIAN_LATENCY
    return (
        text + f"; the bound that latency and concurrency allow is ceil({total}/{concurrency}) x "
        f"{_MEDIAN_LATENCY * _MS:.0f} ms = {bound:.2f} s ({elapsed / bound:.1f}x)."
    )
