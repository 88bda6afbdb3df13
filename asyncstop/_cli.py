"""The ``asyncstop`` command: stop everything from a terminal, or watch the kill switch work.

::

    asyncstop cancel ORDER_ID [ORDER_ID ...]   cancel these stop orders
    asyncstop kill --ids FILE                  cancel every stop order listed in FILE (- : stdin)
    asyncstop fake-exchange --orders 1000      serve a fake exchange to try ``kill`` against
    asyncstop demo                             the kill switch against an in-process fake exchange

Exit status: 0 when every order ended cancelled or already gone, 1 when some may
still be live, 2 for a usage or configuration error (nothing was sent), 130 after
Ctrl-C (once what is known has been printed and ``--pending-out`` written).

Settings come from flags or the environment (``ASYNCSTOP_BASE_URL``,
``ASYNCSTOP_ACCOUNT_ID``, ``ASYNCSTOP_TOKEN``); the token is read from the
environment or ``--token-file`` and never printed. rich (``pip install
'asyncstop[cli]'``) draws the progress bar and the tables; without it the
command prints plain text and works all the same.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final, Protocol, TypeVar

import msgspec

from . import __version__
from ._argtypes import count as count_arg
from ._argtypes import positive_float
from ._client import AsyncStopClient
from ._constants import DEFAULT_MAX_CONCURRENCY, DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT
from ._errors import InvalidInputError, OrderNotFoundError
from ._killswitch import KillSwitch, StopOrderRegistry
from ._logging import RedactingFilter
from ._models import OrderStatus
from ._report import CancelOutcome, CancelReport, CancelResult
from ._validation import check_account_id, check_base_url, check_order_id, check_token

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = ["main"]

PROG: Final = "asyncstop"

EXIT_OK: Final = 0
#: Some orders may still be live (failed, unknown or not sent).
EXIT_PENDING: Final = 1
#: A usage or configuration error: nothing was sent.
EXIT_USAGE: Final = 2
#: 128 + SIGINT, as shells report a command stopped by Ctrl-C.
EXIT_INTERRUPTED: Final = 130

ENV_BASE_URL: Final = "ASYNCSTOP_BASE_URL"
ENV_ACCOUNT_ID: Final = "ASYNCSTOP_ACCOUNT_ID"
ENV_TOKEN: Final = "ASYNCSTOP_TOKEN"  # noqa: S105 - a variable name, not a secret

#: Seconds a ``cancel`` or ``kill`` run may take in all, retries included.
DEFAULT_DEADLINE: Final = 10.0

RICH_HINT: Final = (
    "asyncstop: rich is not installed, so progress and tables are plain text; "
    "for the full display: pip install 'asyncstop[cli]'"
)

# The demo's exchange: latency and faults of a busy but healthy venue.
_DEMO_TOKEN: Final = "demo-token"  # noqa: S105 - the in-process fake's token
_DEMO_ORDERS: Final = 2000
_DEMO_ACCOUNTS: Final = 2
_DEMO_CONCURRENCY: Final = 64
_DEMO_MEDIAN_LATENCY: Final = 0.020
_DEMO_P99_LATENCY: Final = 0.150
_DEMO_MAX_LATENCY: Final = 0.500
_DEMO_ACTIVATED_FRACTION: Final = 0.02
#: Requests per second per account the demo exchange allows: above what 64 requests
#: in flight at 20 ms can send, so a well-behaved client never meets a 429.
_DEMO_EXCHANGE_RATE_LIMIT: Final = 4000.0
#: Each trigger's deadline and the number of triggers: the demo ends within 15 s whatever happens.
_DEMO_DEADLINE: Final = 4.0
_DEMO_MAX_TRIGGERS: Final = 3

#: How many pending and activated orders a summary lists before it points to the file or JSON.
_PENDING_LIST_LIMIT: Final = 50
_ACTIVATED_LIST_LIMIT: Final = 10

_T = TypeVar("_T")


class UsageError(Exception):
    """A usage or configuration problem, reported as one line and exit status 2."""


# -- settings ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Settings:
    """Where to send cancels, and as whom."""

    base_url: str
    token: str = field(repr=False)
    account_id: str | None = None


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Read the base URL, the account and the token from the flags, then the environment."""
    base_url, source = _flag_or_env(args.base_url, "--base-url", env, ENV_BASE_URL)
    if base_url is None:
        raise UsageError(f"no base URL: set {ENV_BASE_URL} or pass --base-url")
    try:
        base_url = check_base_url(base_url)
    except InvalidInputError as err:
        raise UsageError(f"{source}: {err}") from None

    account_id, source = _flag_or_env(args.account_id, "--account-id", env, ENV_ACCOUNT_ID)
    if account_id is not None:
        try:
            check_account_id(account_id)
        except InvalidInputError as err:
            raise UsageError(f"{source}: {err}") from None

    return Settings(base_url=base_url, token=_resolve_token(args, env), account_id=account_id)


def _flag_or_env(
    flag_value: str | None, flag: str, env: Mapping[str, str], variable: str
) -> tuple[str | None, str]:
    """The flag's value if given, else the variable's (blank counts as unset), and which it was."""
    if flag_value:
        return flag_value, flag
    return env.get(variable, "").strip() or None, variable


def _resolve_token(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    if args.token is not None:
        print(
            "asyncstop: warning: --token is visible to other users of this machine in the "
            f"process list; prefer {ENV_TOKEN} or --token-file",
            file=sys.stderr,
        )
        token, source = args.token.strip(), "--token"
    elif args.token_file is not None:
        source = f"token file {args.token_file}"
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {source}: {_os_reason(err)}") from None
        if not token:
            raise UsageError(f"{source} is empty")
    else:
        token, source = env.get(ENV_TOKEN, "").strip(), ENV_TOKEN
        if not token:
            raise UsageError(f"no token: set {ENV_TOKEN} or pass --token-file")
    if token.lower().startswith("bearer "):
        # check_token would only say "whitespace"; this slip deserves its own words.
        raise UsageError(f'{source}: give the bare JWT, without the "Bearer " prefix')
    try:
        return check_token(token)
    except InvalidInputError as err:
        # check_token never echoes the token, so its message is safe to print.
        raise UsageError(f"{source}: {err}") from None


def _os_reason(err: Exception) -> str:
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)


# -- order ids ---------------------------------------------------------------------------------


def parse_order_item(text: str, default_account: str | None) -> tuple[str, str]:
    """Parse ``ORDER_ID`` or ``ACCOUNT_ID,ORDER_ID`` into a checked (account, order) pair."""
    fields = [part.strip() for part in text.split(",")]
    if len(fields) == 1:
        order_id = check_order_id(fields[0])
        if default_account is None:
            raise InvalidInputError(
                f"order {order_id!r} has no account: write ACCOUNT_ID,ORDER_ID, "
                f"or set {ENV_ACCOUNT_ID} or pass --account-id"
            )
        return default_account, order_id
    if len(fields) == 2:
        account_id, order_id = fields
        if not account_id:
            raise InvalidInputError("the account id before the comma is empty")
        if not order_id:
            raise InvalidInputError("the order id after the comma is empty")
        return check_account_id(account_id), check_order_id(order_id)
    raise InvalidInputError(
        f"expected ORDER_ID or ACCOUNT_ID,ORDER_ID, found {len(fields)} comma-separated "
        f"fields in {text!r}"
    )


def parse_ids(
    lines: Iterable[str], source: str, default_account: str | None
) -> list[tuple[str, str]]:
    """Parse an ids file: one order per line, blank lines and ``#`` comments skipped.

    The first malformed line raises :class:`UsageError` naming ``source`` and the
    line number, so that nothing is cancelled from a file that is not what its
    author meant.
    """
    items: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(parse_order_item(line, default_account))
        except InvalidInputError as err:
            raise UsageError(f"{source}, line {number}: {err}; nothing was cancelled") from None
    return items


def read_ids(path: str, default_account: str | None) -> list[tuple[str, str]]:
    """Read and check the whole ids file (``-``: standard input) before anything is sent."""
    if path == "-":
        return parse_ids(sys.stdin.read().splitlines(), "<stdin>", default_account)
    try:
        # utf-8-sig: a byte-order mark from a Windows editor is not part of the first id.
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read ids file {path}: {_os_reason(err)}") from None
    return parse_ids(text.splitlines(), path, default_account)


def format_item(account_id: str, order_id: str) -> str:
    """One line in the form ``--ids`` reads."""
    return f"{account_id},{order_id}"


def write_pending(path: str, pending: Iterable[tuple[str, str]]) -> None:
    """Write the orders that may still be live, one ``account_id,order_id`` a line.

    Written to a temporary file and moved into place, so that ``--ids`` and
    ``--pending-out`` may name the same file and an interrupted write never
    leaves half a list.
    """
    target = Path(path)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    text = "".join(format_item(account, order) + "\n" for account, order in pending)
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def _check_writable(path: str) -> None:
    """Refuse a --pending-out whose folder does not exist, before anything is sent."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"--pending-out {path}: folder {folder} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--pending-out {path} is a folder")


# -- display -----------------------------------------------------------------------------------


class _RichState:
    """Whether rich imports, found out once, and whether the install hint was printed."""

    available: bool | None = None
    hinted = False


def rich_available(*, hint: bool) -> bool:
    """True if rich can be imported; else, when ``hint``, print the install hint (once)."""
    if _RichState.available is None:
        try:
            import rich  # noqa: F401, PLC0415 - an optional extra, imported when wanted
        except ImportError:
            _RichState.available = False
        else:
            _RichState.available = True
    if not _RichState.available and hint and not _RichState.hinted:
        _RichState.hinted = True
        print(RICH_HINT, file=sys.stderr)
    return _RichState.available


class ProgressDisplay(Protocol):
    """Shows how far a bulk cancel has got."""

    def advance(self, counts: Mapping[CancelOutcome, int], done: int, rate: float) -> None: ...

    def stop(self) -> None: ...


_OUTCOME_STYLE: Final = {
    CancelOutcome.CANCELLED: "green",
    CancelOutcome.ALREADY_GONE: "green",
    CancelOutcome.FAILED: "red",
    CancelOutcome.UNKNOWN: "yellow",
    CancelOutcome.NOT_SENT: "red",
}


_SHORT_NAME: Final = {
    CancelOutcome.CANCELLED: "cancelled",
    CancelOutcome.ALREADY_GONE: "gone",
    CancelOutcome.FAILED: "failed",
    CancelOutcome.UNKNOWN: "unknown",
    CancelOutcome.NOT_SENT: "not sent",
}


def _counts_text(counts: Mapping[CancelOutcome, int], *, markup: bool) -> str:
    """Short counts for a progress line: cancelled always, the other outcomes once they occur."""
    parts = []
    for outcome, count in counts.items():
        if count or outcome is CancelOutcome.CANCELLED:
            text = f"{_SHORT_NAME[outcome]} {count}"
            if markup:
                text = f"[{_OUTCOME_STYLE[outcome]}]{text}[/]"
            parts.append(text)
    return " ".join(parts)


class RichProgress:
    """A live rich progress bar on stderr: done/total, counts per outcome, rate, elapsed."""

    def __init__(self, description: str, total: int) -> None:
        from rich.console import Console  # noqa: PLC0415 - optional extra
        from rich.progress import (  # noqa: PLC0415 - optional extra
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        # No stdout redirection: --json lines go to stdout themselves, never into the bar's stream.
        self._progress: Progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=20),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True, highlight=False),
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task: TaskID = self._progress.add_task(description, total=total, counts="", rate="")
        self._progress.start()

    def advance(self, counts: Mapping[CancelOutcome, int], done: int, rate: float) -> None:
        self._progress.update(
            self._task,
            completed=done,
            counts=_counts_text(counts, markup=True),
            rate=f"{rate:,.0f}/s",
        )

    def stop(self) -> None:
        self._progress.stop()


class PlainProgress:
    """Progress as plain text on stderr: one line redrawn on a terminal, else a line a second."""

    def __init__(self, description: str, total: int, stream: IO[str]) -> None:
        self._description = description
        self._total = total
        self._stream = stream
        self._redraw = stream.isatty()
        self._interval = 0.1 if self._redraw else 1.0
        self._last_shown = 0.0
        self._line = ""

    def advance(self, counts: Mapping[CancelOutcome, int], done: int, rate: float) -> None:
        self._line = (
            f"{self._description}: {done}/{self._total}  "
            f"{_counts_text(counts, markup=False)}  {rate:,.0f}/s"
        )
        now = time.monotonic()
        if now - self._last_shown >= self._interval or done == self._total:
            self._last_shown = now
            self._show()

    def _show(self) -> None:
        if self._redraw:
            self._stream.write("\r\x1b[K" + self._line)
        else:
            self._stream.write(self._line + "\n")
        self._stream.flush()

    def stop(self) -> None:
        if self._redraw and self._line:
            self._stream.write("\n")
            self._stream.flush()


def _make_progress(
    description: str, total: int, *, wanted: bool | None, json_on_tty: bool, verbose: bool
) -> ProgressDisplay | None:
    """A progress display if asked for (``--progress``) or, by default, on a quiet terminal."""
    if wanted is None:
        # By default only on a terminal, and not where it would fight the JSON
        # lines or log records on the same screen.
        wanted = sys.stderr.isatty() and not json_on_tty and not verbose
    if not wanted or total == 0:
        return None
    if rich_available(hint=True):
        return RichProgress(description, total)
    return PlainProgress(description, total, sys.stderr)


def _rich_console(stream: IO[str]) -> Console | None:
    """A rich console for ``stream`` if it is a terminal and rich is installed."""
    if not stream.isatty() or not rich_available(hint=True):
        return None
    from rich.console import Console  # noqa: PLC0415 - optional extra

    return Console(file=stream, highlight=False)


def _error_text(result: CancelResult) -> str | None:
    return None if result.error is None else str(result.error)


class _JSONLine(msgspec.Struct):
    order_id: str
    account_id: str
    outcome: str
    attempts: int
    elapsed: float
    error: str | None
    activated: bool


_json_encoder: Final = msgspec.json.Encoder()


def json_line(result: CancelResult) -> str:
    """One order's result as a JSON Lines record."""
    record = _JSONLine(
        order_id=result.order_id,
        account_id=result.account_id,
        outcome=result.outcome.value,
        attempts=result.attempts,
        elapsed=round(result.elapsed, 6),
        error=_error_text(result),
        activated=result.activated,
    )
    return _json_encoder.encode(record).decode()


class ResultTracker:
    """Collects results as ``on_result`` reports them: for the progress bar, JSON Lines and Ctrl-C.

    ``cancel_stop_orders`` reports every item, also when it is cancelled, so
    after Ctrl-C the tracker still knows the outcome of each order.
    """

    def __init__(
        self,
        items: Sequence[tuple[str, str]],
        *,
        json_stream: IO[str] | None = None,
        progress: ProgressDisplay | None = None,
    ) -> None:
        self.items = items
        self.json_stream = json_stream
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
        if self.json_stream is not None and first:
            self.json_stream.write(json_line(result) + "\n")
            self.json_stream.flush()
        if self.progress is not None:
            elapsed = time.monotonic() - self.started
            self.progress.advance(self.counts, self.done, self.done / elapsed if elapsed else 0.0)

    def stop_progress(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def partial_report(self) -> CancelReport:
        """A report of the results known so far, in input order."""
        known = [self.results[item] for item in self.items if item in self.results]
        return CancelReport(known, time.monotonic() - self.started)

    def without_result(self) -> list[tuple[str, str]]:
        """Distinct input orders that got no result at all (Ctrl-C before the bulk call began)."""
        return [item for item in dict.fromkeys(self.items) if item not in self.results]


def _rate(count: int, elapsed: float) -> str:
    return f"{count / elapsed:,.0f} orders/s" if elapsed > 0 else "-"


def _note(result: CancelResult) -> str | None:
    """What a person should read about one result: the error, or why "already gone" is fine."""
    error = result.error
    if result.outcome is CancelOutcome.ALREADY_GONE:
        if isinstance(error, OrderNotFoundError) and error.after_unknown_attempt:
            return (
                "404 after an attempt with unknown outcome: that attempt most likely cancelled it"
            )
        return "404: the exchange has no live stop order with this id"
    return None if error is None else printable(str(error))


def printable(text: str) -> str:
    """``text`` with control characters escaped: exchange messages must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _describe_pending(result: CancelResult) -> str:
    text = f"{format_item(result.account_id, result.order_id)}  {result.outcome.value}"
    text += f"  attempts={result.attempts}"
    note = _note(result)
    return f"{text}  {note}" if note else text


def print_summary(
    report: CancelReport,
    stream: IO[str],
    *,
    title: str,
    interrupted: bool = False,
    unsettled: Sequence[tuple[str, str]] = (),
    pending_out: str | None = None,
    activated_hint: str = "--json marks them all with activated: true",
) -> None:
    """Counts per outcome, elapsed and rate, then the activated stops and the pending orders."""
    total = len(report.results) + len(unsettled)
    heading = f"{title}: {total} orders in {report.elapsed:.2f} s ({_rate(total, report.elapsed)})"
    if interrupted:
        heading += ", interrupted"
    console = _rich_console(stream)
    counts = report.counts
    if console is not None:
        from rich.table import Table  # noqa: PLC0415 - optional extra

        console.print(heading, style="bold")
        table = Table()
        table.add_column("outcome")
        table.add_column("orders", justify="right")
        for outcome, count in counts.items():
            style = _OUTCOME_STYLE[outcome] if count else "dim"
            table.add_row(f"[{style}]{outcome.value}[/]", f"[{style}]{count}[/]")
        if unsettled:
            table.add_row("[red]no result[/]", f"[red]{len(unsettled)}[/]")
        console.print(table)
    else:
        print(heading, file=stream)
        for outcome, count in counts.items():
            print(f"  {outcome.value:<13}{count:>8}", file=stream)
        if unsettled:
            print(f"  {'no result':<13}{len(unsettled):>8}", file=stream)

    activated = report.activated
    if activated:
        print(
            f"{len(activated)} stop(s) had already triggered when cancelled; "
            "the orders they placed may be live:",
            file=stream,
        )
        _print_capped(
            [format_item(r.account_id, r.order_id) for r in activated],
            stream,
            limit=_ACTIVATED_LIST_LIMIT,
            rest_hint=activated_hint,
        )
    lines = [_describe_pending(r) for r in report.pending]
    lines += [f"{format_item(*item)}  no result" for item in unsettled]
    if lines:
        print(f"{len(lines)} order(s) may still be live:", file=stream)
        _print_capped(
            lines,
            stream,
            limit=_PENDING_LIST_LIMIT,
            rest_hint=f"all are in {pending_out}" if pending_out else "--pending-out lists all",
        )


def _print_capped(lines: list[str], stream: IO[str], *, limit: int, rest_hint: str) -> None:
    for line in lines[:limit]:
        print(f"  {line}", file=stream)
    if len(lines) > limit:
        print(f"  ... and {len(lines) - limit} more ({rest_hint})", file=stream)


def print_result_lines(results: Sequence[CancelResult], stream: IO[str]) -> None:
    """One line per order: order id, outcome, attempts, error."""
    several_accounts = len({r.account_id for r in results}) > 1
    console = _rich_console(stream)

    def name(result: CancelResult) -> str:
        if several_accounts:
            return format_item(result.account_id, result.order_id)
        return result.order_id

    if console is not None:
        from rich.table import Table  # noqa: PLC0415 - optional extra
        from rich.text import Text  # noqa: PLC0415 - optional extra

        table = Table()
        table.add_column("order")
        table.add_column("outcome")
        table.add_column("attempts", justify="right")
        table.add_column("error", overflow="fold")
        for r in results:
            # Text, not markup: ids and exchange messages may hold "[...]".
            table.add_row(
                Text(name(r)),
                Text(r.outcome.value, style=_OUTCOME_STYLE[r.outcome]),
                str(r.attempts),
                Text(_note(r) or ""),
            )
        console.print(table)
        return
    width = max((len(name(r)) for r in results), default=0)
    for r in results:
        line = f"{name(r):<{width}}  {r.outcome.value:<12}  attempts={r.attempts}"
        note = _note(r)
        print(f"{line}  {note}" if note else line, file=stream)


# -- running -----------------------------------------------------------------------------------


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory with ``--uvloop`` (a usage error if it is missing), else None."""
    if not use_uvloop:
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional extra
    except ImportError:
        raise UsageError(
            "--uvloop: uvloop is not installed: pip install 'asyncstop[speed]'"
        ) from None
    return uvloop.new_event_loop


def run_coroutine(
    coro: Coroutine[Any, Any, _T], factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> _T:
    """Run ``coro`` on a new event loop from ``factory``; Ctrl-C cancels it (KeyboardInterrupt)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


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


async def _cancel_all(
    client: AsyncStopClient,
    items: list[tuple[str, str]],
    args: argparse.Namespace,
    tracker: ResultTracker,
) -> CancelReport:
    async with client:
        return await client.cancel_stop_orders(
            items, deadline=args.deadline, on_result=tracker.on_result
        )


def _bulk_command(
    args: argparse.Namespace, settings: Settings, items: list[tuple[str, str]], *, title: str
) -> int:
    """Run one bulk cancel over ``items`` and report it; shared by ``cancel`` and ``kill``."""
    client = _client_for(settings, args)
    factory = loop_factory(args.uvloop)
    if not items:
        print(f"{PROG}: {args.ids} lists no orders: nothing to cancel", file=sys.stderr)
        if args.pending_out is not None:
            write_pending(args.pending_out, [])
        return EXIT_OK

    per_order_lines = title == "cancel"
    progress = None
    if not per_order_lines:
        progress = _make_progress(
            title,
            len(items),
            wanted=args.progress,
            json_on_tty=args.json and sys.stdout.isatty(),
            verbose=args.verbose > 0,
        )
    tracker = ResultTracker(items, json_stream=sys.stdout if args.json else None, progress=progress)
    interrupted = False
    try:
        report = run_coroutine(_cancel_all(client, items, args, tracker), factory)
    except KeyboardInterrupt:
        # cancel_stop_orders reported every order before it let the cancellation
        # through, so the tracker knows the outcome of each one it had taken.
        interrupted = True
        report = tracker.partial_report()
    except Exception:
        # A bug, not an order's failure (those are results): still leave the
        # operator the list of everything not confirmed before the traceback.
        if args.pending_out is not None:
            _save_pending(args.pending_out, _unconfirmed(tracker))
        raise
    finally:
        tracker.stop_progress()
    unsettled = tracker.without_result()
    pending = [(r.account_id, r.order_id) for r in report.pending] + unsettled

    # The file first: it is what the operator re-runs, so it must exist even if
    # printing a long summary is interrupted.
    saved = args.pending_out is not None and _save_pending(args.pending_out, pending)
    if per_order_lines and not args.json:
        print_result_lines(report.results, sys.stdout)
    if not per_order_lines or interrupted or args.json:
        print_summary(
            report,
            sys.stderr if args.json else sys.stdout,
            title=title,
            interrupted=interrupted,
            unsettled=unsettled,
            pending_out=args.pending_out,
        )
    sys.stdout.flush()
    if saved and pending:
        print(
            f"{PROG}: the {len(pending)} order(s) that may still be live are in "
            f"{args.pending_out}; to retry exactly them: {PROG} kill --ids {args.pending_out}",
            file=sys.stderr,
        )
    if interrupted:
        print(f"{PROG}: interrupted: {len(pending)} order(s) may still be live", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if not pending and report.ok else EXIT_PENDING


def _unconfirmed(tracker: ResultTracker) -> list[tuple[str, str]]:
    known = tracker.results
    return [
        item for item in dict.fromkeys(tracker.items) if item not in known or not known[item].ok
    ]


def _save_pending(path: str, pending: list[tuple[str, str]]) -> bool:
    try:
        write_pending(path, pending)
    except OSError as err:
        print(f"{PROG}: error: cannot write {path}: {_os_reason(err)}", file=sys.stderr)
        return False
    return True


def cmd_cancel(args: argparse.Namespace) -> int:
    """``asyncstop cancel ORDER_ID ...``."""
    settings = resolve_settings(args, os.environ)
    if args.pending_out is not None:
        _check_writable(args.pending_out)
    items = []
    for position, text in enumerate(args.order_ids, start=1):
        try:
            items.append(parse_order_item(text, settings.account_id))
        except InvalidInputError as err:
            raise UsageError(
                f"ORDER_ID {position} ({text!r}): {err}; nothing was cancelled"
            ) from None
    return _bulk_command(args, settings, items, title="cancel")


def cmd_kill(args: argparse.Namespace) -> int:
    """``asyncstop kill --ids FILE``."""
    settings = resolve_settings(args, os.environ)
    if args.pending_out is not None:
        _check_writable(args.pending_out)
    items = read_ids(args.ids, settings.account_id)
    return _bulk_command(args, settings, items, title="kill")


def cmd_fake_exchange(argv: list[str]) -> int:
    """``asyncstop fake-exchange ...``: hand over to ``asyncstop.testing.main``."""
    try:
        from .testing import main as fake_exchange_main  # noqa: PLC0415 - only for this command
    except ImportError as err:
        print(f"{PROG}: error: the fake exchange is unavailable: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return fake_exchange_main(list(argv), prog=f"{PROG} fake-exchange")
    except SystemExit as exc:  # its argparse, on --help or a usage error
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE


# -- demo --------------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    try:
        from .testing import (  # noqa: PLC0415 - only the demo needs the fake exchange
            FakeExchange,
            Faults,
            LongTailLatency,
        )
    except ImportError as err:
        raise UsageError(f"the demo needs asyncstop.testing: {err}") from None

    out = sys.stdout
    accounts = [f"demo-{n}" for n in range(1, args.accounts + 1)]
    per_account = [len(range(n, args.orders, args.accounts)) for n in range(args.accounts)]
    concurrency: int = args.concurrency
    faults = Faults(
        error_before=0.02,
        error_after=0.02,
        drop_after=0.01,
        error_status=503,
        latency=LongTailLatency(
            median=_DEMO_MEDIAN_LATENCY, p99=_DEMO_P99_LATENCY, max=_DEMO_MAX_LATENCY
        ),
    )
    reports: list[CancelReport] = []
    async with FakeExchange(
        tokens={_DEMO_TOKEN}, seed=args.seed, faults=faults, rate_limit=_DEMO_EXCHANGE_RATE_LIMIT
    ) as exchange:
        registry = StopOrderRegistry()
        for account_id, count in zip(accounts, per_account, strict=True):
            for order_id in exchange.add_stop_orders(
                count, account_id=account_id, activated_fraction=_DEMO_ACTIVATED_FRACTION
            ):
                registry.add(order_id, account_id=account_id)
        total = len(registry)
        seeded_activated = sum(
            1 for order in exchange.orders.values() if order.status == OrderStatus.ACTIVATED
        )
        ms = 1000
        print(f"{PROG} demo: a kill switch against a fake exchange in this process", file=out)
        print(
            f"  exchange  {exchange.base_url}: latency median {_DEMO_MEDIAN_LATENCY * ms:.0f} ms, "
            f"p99 {_DEMO_P99_LATENCY * ms:.0f} ms, max {_DEMO_MAX_LATENCY * ms:.0f} ms; "
            f"{faults.error_before:.0%} HTTP 503 before cancelling, "
            f"{faults.error_after:.0%} after, {faults.drop_after:.0%} connections dropped "
            f"after cancelling; at most {_DEMO_EXCHANGE_RATE_LIMIT:,.0f} requests/s per account",
            file=out,
        )
        print(
            f"  orders    {total:,} live stop orders over {len(accounts)} account(s), "
            f"{seeded_activated} of them already triggered (Activated)",
            file=out,
        )
        async with AsyncStopClient(
            base_url=exchange.base_url, token=_DEMO_TOKEN, max_concurrency=concurrency
        ) as client:
            warm = await client.warm_up()
            print(
                f"  client    concurrency {concurrency}, {warm} connections warmed up; "
                "firing the kill switch",
                file=out,
            )
            out.flush()
            started = time.monotonic()
            for round_number in range(1, _DEMO_MAX_TRIGGERS + 1):
                items = [item for item in registry.snapshot() if isinstance(item, tuple)]
                title = "kill switch" if round_number == 1 else f"kill switch, round {round_number}"
                tracker = ResultTracker(
                    items,
                    progress=_make_progress(
                        title,
                        len(items),
                        wanted=args.progress,
                        json_on_tty=False,
                        verbose=args.verbose > 0,
                    ),
                )
                # The registry keeps only what may still be live, so a second
                # trigger retries exactly those, as an operator would.
                switch = KillSwitch(
                    client, registry, deadline=_DEMO_DEADLINE, on_result=tracker.on_result
                )
                try:
                    report = await switch.trigger()
                finally:
                    tracker.stop_progress()
                reports.append(report)
                print(file=out)
                print_summary(report, out, title=title, activated_hint="report.activated has all")
                if not registry:
                    break
                if round_number < _DEMO_MAX_TRIGGERS:
                    print(
                        f"{len(registry)} order(s) may still be live: triggering again, "
                        "as an operator would.",
                        file=out,
                    )
            took = time.monotonic() - started
        live = exchange.open_stop_orders()

    first = reports[0]
    lost_answers = sum(
        1
        for r in first.results
        if isinstance(r.error, OrderNotFoundError) and r.error.after_unknown_attempt
    )
    bound = math.ceil(total / concurrency) * _DEMO_MEDIAN_LATENCY
    print(file=out)
    if lost_answers:
        print(
            f"{lost_answers} already_gone: their answer was lost (503 or dropped connection "
            "after cancelling); the retry met 404: the first attempt had cancelled them.",
            file=out,
        )
    print(
        f"The client's report: {total - len(registry):,} of {total:,} orders cancelled or "
        f"already gone; {len(registry)} may still be live.",
        file=out,
    )
    print(f"The exchange's own view: {len(live)} live stop orders.", file=out)
    if live:
        last: dict[str, CancelResult] = {}
        for report in reports:
            for result in report.results:
                last[result.order_id] = result
        for order_id in sorted(live):
            known = last.get(order_id)
            why = "never reported" if known is None else _describe_pending(known)
            print(f"  still live: {order_id}: reported {why}", file=out)
    # With several triggers the first stopped at its deadline: only the total
    # time covers every order, so only it compares with the bound.
    elapsed = first.elapsed if len(reports) == 1 else took
    print(
        f"Time: {elapsed:.2f} s for {total:,} orders"
        + (f" over {len(reports)} triggers" if len(reports) > 1 else "")
        + f"; the bound that latency and concurrency allow is ceil({total}/{concurrency}) x "
        f"{_DEMO_MEDIAN_LATENCY * ms:.0f} ms = {bound:.2f} s ({elapsed / bound:.1f}x).",
        file=out,
    )
    if live:
        print(
            f"{len(live)} stop order(s) are still live on the exchange; the lines above say why.",
            file=out,
        )
        return EXIT_PENDING
    print("Every stop order is gone from the exchange, and the report says so.", file=out)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    """``asyncstop demo``."""
    return run_coroutine(_demo(args), loop_factory(args.uvloop))


# -- arguments ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asyncstop`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cancel stop orders fast, and know which are certainly gone.",
        epilog=(
            "exit status: 0 every order cancelled or already gone; 1 some may still be live; "
            "2 usage or configuration error; 130 interrupted"
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, dest="verbose_top", help=argparse.SUPPRESS
    )

    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v info, -vv debug (tokens are redacted)",
    )
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show a progress bar (default: only when stderr is a terminal)",
    )
    group.add_argument(
        "--uvloop", action="store_true", help="run on uvloop (pip install 'asyncstop[speed]')"
    )

    connection = argparse.ArgumentParser(add_help=False)
    group = connection.add_argument_group("exchange")
    group.add_argument("--base-url", help=f"the exchange's base URL (env {ENV_BASE_URL})")
    group.add_argument(
        "--account-id", help=f"account of order ids given without one (env {ENV_ACCOUNT_ID})"
    )
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the bearer token from this file (default: env {ENV_TOKEN})",
    )
    tokens.add_argument(
        "--token", help="the bearer token itself (discouraged: visible in the process list)"
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="time limit of each attempt (default: %(default)s)",
    )
    group.add_argument(
        "--max-retries",
        type=count_arg(0),
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help="retries after the first attempt, 0 for none (default: %(default)s)",
    )

    bulk = argparse.ArgumentParser(add_help=False)
    group = bulk.add_argument_group("cancelling")
    group.add_argument(
        "--deadline",
        type=positive_float,
        default=DEFAULT_DEADLINE,
        metavar="SECONDS",
        help="time for the whole run, retries included (default: %(default)s)",
    )
    group.add_argument(
        "--concurrency",
        type=count_arg(1),
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
        "--json",
        action="store_true",
        help="write one JSON object per order to stdout (JSON Lines); the summary goes to stderr",
    )
    group.add_argument(
        "--pending-out",
        metavar="FILE",
        help="write the orders that may still be live to FILE, in the form --ids reads",
    )

    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    cancel = commands.add_parser(
        "cancel",
        parents=[connection, bulk, common],
        help="cancel these stop orders",
        description=(
            "Cancel the given stop orders and print one line per order. "
            "Each ORDER_ID may be written ACCOUNT_ID,ORDER_ID."
        ),
    )
    cancel.add_argument("order_ids", nargs="+", metavar="ORDER_ID")
    cancel.set_defaults(handler=cmd_cancel)

    kill = commands.add_parser(
        "kill",
        parents=[connection, bulk, common],
        help="cancel every stop order listed in a file",
        description=(
            "Cancel every stop order listed in FILE: one ORDER_ID or ACCOUNT_ID,ORDER_ID a line; "
            "blank lines and lines starting with # are skipped. The whole file is checked "
            "before anything is sent."
        ),
    )
    kill.add_argument(
        "--ids", required=True, metavar="FILE", help="the orders to cancel (- reads stdin)"
    )
    kill.set_defaults(handler=cmd_kill)

    commands.add_parser(
        "fake-exchange",
        add_help=False,
        help="serve a fake exchange on 127.0.0.1 to try kill against (--help for its flags)",
    )

    demo = commands.add_parser(
        "demo",
        parents=[common],
        help="watch the kill switch cancel 2,000 stop orders on an in-process fake exchange",
        description=(
            "Start a fake exchange with realistic latency and faults, seed stop orders, fire "
            "the kill switch, and compare the report with the exchange's own view."
        ),
    )
    demo.add_argument(
        "--orders", type=count_arg(1), default=_DEMO_ORDERS, help="default: %(default)s"
    )
    demo.add_argument(
        "--accounts", type=count_arg(1), default=_DEMO_ACCOUNTS, help="default: %(default)s"
    )
    demo.add_argument(
        "--concurrency", type=count_arg(1), default=_DEMO_CONCURRENCY, help="default: %(default)s"
    )
    demo.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    demo.set_defaults(handler=cmd_demo)
    return parser


# -- entry point -------------------------------------------------------------------------------


class _CLIHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler installed by -v, told apart from any other."""


def setup_logging(verbosity: int) -> None:
    """Log asyncstop's records to stderr at INFO (-v) or DEBUG (-vv); nothing by default."""
    log = logging.getLogger("asyncstop")
    for handler in [h for h in log.handlers if isinstance(h, _CLIHandler | logging.NullHandler)]:
        log.removeHandler(handler)
    if verbosity <= 0:
        # Without a handler, Python's last-resort handler would print warnings
        # (the kill switch logs one when it fires) into the command's output.
        log.addHandler(logging.NullHandler())
        return
    handler = _CLIHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)


def _fake_exchange_argv(argv: Sequence[str]) -> list[str] | None:
    """The arguments after ``fake-exchange`` if that is the command, else None."""
    for index, arg in enumerate(argv):
        if arg == "fake-exchange":
            return list(argv[index + 1 :])
        if not arg.startswith("-") or arg in ("-h", "--help", "--version"):
            return None
    return None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncstop`` command on ``argv`` (default: ``sys.argv[1:]``); return its status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        fake_argv = _fake_exchange_argv(argv)
        if fake_argv is not None:
            return cmd_fake_exchange(fake_argv)
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if args.command is None:
            parser.print_usage(sys.stderr)
            print(
                f"{PROG}: error: choose a command: cancel, kill, fake-exchange or demo",
                file=sys.stderr,
            )
            return EXIT_USAGE
        args.verbose += args.verbose_top
        setup_logging(args.verbose)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return handler(args)
    except (UsageError, InvalidInputError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
