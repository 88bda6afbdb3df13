"""One bulk cancel from the command line, shared by ``cancel`` and ``kill``.

It runs the preflight, then ``cancel_stop_orders`` until it ends or a signal
stops it, then writes ``--pending-out`` first (the file the operator re-runs),
the results and the summary, and picks the exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import IO, Final

from asyncstop import (
    DEFAULT_MAX_CONCURRENCY,
    AsyncStopClient,
    AsyncStopError,
    CancelOutcome,
    CancelReport,
    CancelResult,
    InvalidInputError,
    RateLimitError,
    StopOrderRegistry,
)

from .._argtypes import count, positive_float
from .common import (
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_PENDING,
    EXIT_USAGE,
    PROG,
    UsageError,
    exit_status_for_signal,
    os_reason,
)
from .context import Context
from .display import (
    ProgressDisplay,
    add_output_arguments,
    json_line,
    make_progress,
    print_result_lines,
    print_summary,
    printable,
)
from .ids import check_writable, write_pending
from .output import Output
from .running import loop_factory, run_coroutine, run_until_signal
from .settings import Settings, add_exchange_arguments, resolve_settings

__all__ = [
    "DEFAULT_DEADLINE",
    "ResultTracker",
    "add_bulk_arguments",
    "add_cancel_arguments",
    "read_settings",
    "run_bulk",
    "save_pending",
]

#: Seconds a ``cancel`` or ``kill`` run may take in all, preflight and retries included.
DEFAULT_DEADLINE: Final = 10.0
#: The least deadline the cancel gets after a slow preflight: its orders then end
#: not_sent in a report, rather than the run ending in an error.
_LEAST_DEADLINE: Final = 0.001


def add_bulk_arguments(parser: argparse.ArgumentParser) -> None:
    """The "cancelling" group: deadline, concurrency, pacing, and the machine-readable outputs."""
    group = parser.add_argument_group("cancelling")
    group.add_argument(
        "--deadline",
        type=positive_float,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help="time for the whole run, preflight and retries included (default: %(default)s)",
    )
    group.add_argument(
        "--concurrency",
        type=count(1),
        default=None,
        metavar="N",
        help=f"requests in flight at most (default: {DEFAULT_MAX_CONCURRENCY})",
    )
    group.add_argument(
        "--rate-limit",
        type=positive_float,
        default=None,
        metavar="PER_SECOND",
        help="requests per second per account at most (default: no pacing)",
    )
    group.add_argument(
        "--hedge",
        type=_hedge,
        default=None,
        metavar="auto|SECONDS|off",
        help=(
            "send one backup request for an order whose request has had no answer for "
            "SECONDS, or for this run's p95 reply time with auto (default: off)"
        ),
    )
    group.add_argument(
        "--json",
        action="store_true",
        help="write one JSON object per order to stdout (JSON Lines); the summary goes to stderr",
    )
    group.add_argument(
        "--pending-out",
        metavar="FILE",
        help="write the orders that may still be live to FILE, in the form --ids reads",
    )


def _hedge(text: str) -> float | str | None:
    """``--hedge``: auto, off, or a number of seconds > 0."""
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    return positive_float(text)


def add_cancel_arguments(
    parser: argparse.ArgumentParser, handler: Callable[[argparse.Namespace, Context], int]
) -> None:
    """The groups ``cancel`` and ``kill`` share (exchange, cancelling, output), and the handler."""
    add_exchange_arguments(parser)
    add_bulk_arguments(parser)
    add_output_arguments(parser)
    parser.set_defaults(handler=handler)


def read_settings(args: argparse.Namespace) -> Settings:
    """The exchange settings, with ``--pending-out`` checked too: all before anything is sent."""
    settings = resolve_settings(args, os.environ)
    if args.pending_out is not None:
        check_writable(args.pending_out)
    return settings


class ResultTracker:
    """Collects results as ``on_result`` reports them: for the progress bar, JSON Lines and signals.

    ``cancel_stop_orders`` reports every item, also when it is cancelled, so
    after a signal the tracker still knows the outcome of each order.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        *,
        json_out: Output | None = None,
        progress: ProgressDisplay | None = None,
    ) -> None:
        self.items = items
        self.json_out = json_out
        self.progress = progress
        self.results: dict[tuple[str, str], CancelResult] = {}
        self.counts = dict.fromkeys(CancelOutcome, 0)
        self.done = 0
        self.started = time.monotonic()

    def on_result(self, result: CancelResult) -> None:
        self.done += 1
        self.counts[result.outcome] += 1
        key = (result.account_id, result.order_id)
        first = key not in self.results
        self.results[key] = result
        if self.json_out is not None and first:
            line = json_line(result) + "\n"
            self.json_out.run(lambda stream: stream.write(line))
        if self.progress is not None:
            elapsed = time.monotonic() - self.started
            sent = self.done - self.counts[CancelOutcome.NOT_SENT]
            self.progress.advance(self.counts, self.done, sent / elapsed if elapsed else 0.0)

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def partial_report(self) -> CancelReport:
        """A report of the results known so far, in input order."""
        known = [self.results[item] for item in self.items if item in self.results]
        return CancelReport(known, time.monotonic() - self.started)

    def without_result(self) -> list[tuple[str, str]]:
        """Distinct input orders that got no result at all (stopped before the bulk call began)."""
        return [item for item in dict.fromkeys(self.items) if item not in self.results]

    def unconfirmed(self) -> list[tuple[str, str]]:
        """Distinct input orders not known to be gone (the report's rule: warning included)."""
        live = {(r.account_id, r.order_id) for r in self.partial_report().pending}
        known = self.results
        return [item for item in dict.fromkeys(self.items) if item not in known or item in live]


def _client_for(settings: Settings, args: argparse.Namespace) -> AsyncStopClient:
    try:
        return AsyncStopClient(
            base_url=settings.base_url,
            token=settings.token,
            account_id=settings.account_id,
            max_concurrency=args.concurrency or DEFAULT_MAX_CONCURRENCY,
            timeout=args.timeout,
            max_retries=args.max_retries,
            rate_limit=args.rate_limit,
        )
    except InvalidInputError as err:
        raise UsageError(str(err)) from None


class PreflightFailed(Exception):
    """The exchange, the token or an account failed the preflight: nothing was cancelled."""


async def _preflight(
    client: AsyncStopClient, items: list[tuple[str, str]], deadline: float
) -> None:
    """Check the base URL, the token and every account of ``items`` before any DELETE."""
    try:
        async with asyncio.timeout(deadline):
            accounts = await client.preflight()
    except AsyncStopError as err:
        raise PreflightFailed(printable(str(err))) from None
    except TimeoutError:
        raise PreflightFailed(f"no answer within --deadline {deadline:g} s") from None
    known = {account.account_id for account in accounts}
    missing = sorted({account_id for account_id, _ in items} - known)
    if missing:
        raise PreflightFailed(
            f"account {missing[0]!r} is not among the {len(known)} accounts this token may "
            f"use ({', '.join(sorted(known)) or 'none'}): check the account id"
        )


async def _cancel_all(
    client: AsyncStopClient,
    items: list[tuple[str, str]],
    args: argparse.Namespace,
    tracker: ResultTracker,
) -> CancelReport:
    loop = asyncio.get_running_loop()
    started = loop.time()
    async with client:
        if args.preflight:
            await _preflight(client, items, args.deadline)
        time_left = args.deadline - (loop.time() - started)
        return await client.cancel_stop_orders(
            items,
            deadline=max(time_left, _LEAST_DEADLINE),
            concurrency=args.concurrency,
            on_result=tracker.on_result,
            hedge=args.hedge,
        )


def save_pending(path: str, pending: list[tuple[str, str]]) -> bool:
    """Write ``--pending-out``; on failure print one line and return False."""
    try:
        write_pending(path, pending)
    except OSError as err:
        print(f"{PROG}: error: cannot write {path}: {os_reason(err)}", file=sys.stderr)
        return False
    return True


def _rate_limited(report: CancelReport, context: Context) -> int:
    """The 429s met: each retry after one, and each order whose last answer was one."""
    final = sum(1 for r in report.results if isinstance(r.error, RateLimitError))
    return context.logging.retries_after_429 + final


def run_bulk(
    args: argparse.Namespace,
    context: Context,
    settings: Settings,
    items: list[tuple[str, str]],
    *,
    title: str,
    per_order_lines: bool,
    registry: StopOrderRegistry | None = None,
) -> int:
    """Cancel ``items``, report, and return the exit status.

    ``per_order_lines``: print one line per order on stdout (``cancel``'s few
    ids) instead of a progress bar and a summary (``kill``'s long lists).
    ``registry``: the durable registry ``items`` came from; what is no longer
    live leaves it.
    """
    client = _client_for(settings, args)
    factory = loop_factory(args.uvloop)
    out = context.out
    progress = None
    if not per_order_lines:
        progress = make_progress(
            title,
            len(items),
            wanted=args.progress,
            json_on_tty=args.json and out.stream.isatty(),
            verbose=args.verbose > 0,
        )
    tracker = ResultTracker(items, json_out=out if args.json else None, progress=progress)
    signum: int | None = None
    try:
        work = _cancel_all(client, items, args, tracker)
        stopped = run_coroutine(run_until_signal(work), factory)
        signum = stopped.signum
        report = stopped.value if stopped.value is not None else tracker.partial_report()
    except PreflightFailed as err:
        tracker.stop_progress()
        print(
            f"{PROG}: error: preflight failed: {err}; nothing was cancelled "
            "(--no-preflight skips the check, for a gateway that blocks GET /accounts)",
            file=sys.stderr,
        )
        if args.pending_out is not None:
            save_pending(args.pending_out, list(dict.fromkeys(items)))
        return EXIT_USAGE
    except KeyboardInterrupt:
        # Where the loop cannot take signals (Windows), Ctrl-C arrives this way;
        # cancel_stop_orders reported every order it had taken before it let the
        # cancellation through.
        signum = signal.SIGINT
        report = tracker.partial_report()
    except Exception:
        # A bug, not an order's failure (those are results): still leave the
        # operator the list of everything not confirmed before the traceback.
        if args.pending_out is not None:
            save_pending(args.pending_out, tracker.unconfirmed())
        raise
    finally:
        tracker.stop_progress()
    interrupted = signum is not None
    unsettled = tracker.without_result()
    if registry is not None:
        registry.forget_settled(report, default_account_id=settings.account_id)
    pending = [(r.account_id, r.order_id) for r in report.pending] + unsettled

    # The file first: it is what the operator re-runs, so it must exist even if
    # printing a long summary is interrupted.
    saved = args.pending_out is None or save_pending(args.pending_out, pending)
    if per_order_lines and not args.json:
        out.run(lambda stream: print_result_lines(report.results, stream))
    if not per_order_lines or interrupted or args.json:

        def summary(stream: IO[str]) -> None:
            print_summary(
                report,
                stream,
                title=title,
                interrupted=interrupted,
                unsettled=unsettled,
                pending_hint=(
                    f"all are in {args.pending_out}"
                    if args.pending_out
                    else "--pending-out FILE lists all"
                ),
                activated_hint="--json marks them all with activated: true",
                rate_limited=_rate_limited(report, context),
            )

        if args.json:
            summary(sys.stderr)
        else:
            out.run(summary)
    if args.pending_out is not None and saved and pending:
        print(
            f"{PROG}: the {len(pending)} order(s) that may still be live are in "
            f"{args.pending_out}; to retry exactly them: {PROG} kill --ids {args.pending_out}",
            file=sys.stderr,
        )
    if report.warning is not None:
        print(f"{PROG}: warning: {report.warning}", file=sys.stderr)
    if signum is not None:
        print(f"{PROG}: interrupted: {len(pending)} order(s) may still be live", file=sys.stderr)
        return exit_status_for_signal(signum)
    if pending or not report.ok:
        return EXIT_NOT_FOUND if _only_not_found(report, unsettled) else EXIT_PENDING
    return EXIT_OK if saved else EXIT_OUTPUT


def _only_not_found(report: CancelReport, unsettled: Sequence[tuple[str, str]]) -> bool:
    """True when what may be live is only the not_found orders the report warns about."""
    return (
        report.warning is not None
        and report.source_error is None
        and not unsettled
        and all(r.outcome is CancelOutcome.NOT_FOUND for r in report.pending)
    )
