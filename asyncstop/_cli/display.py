"""What a person reads: progress, the summary, one line per order, and JSON Lines for scripts.

rich (``pip install 'asyncstop[cli]'``) draws the bar and the tables when it is
installed and the stream is a terminal; otherwise everything is plain text.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Mapping, Sequence
from typing import IO, TYPE_CHECKING, Final, Protocol

import msgspec

from asyncstop import CancelOutcome, CancelReport, CancelResult

from .._report import result_record
from .ids import format_item

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress, TaskID

__all__ = [
    "PlainProgress",
    "ProgressDisplay",
    "RichProgress",
    "add_output_arguments",
    "describe_pending",
    "json_line",
    "make_progress",
    "print_capped",
    "print_result_lines",
    "print_summary",
    "printable",
    "rich_available",
]

RICH_HINT: Final = (
    "asyncstop: rich is not installed, so progress and tables are plain text; "
    "for the full display: pip install 'asyncstop[cli]'"
)

#: How many pending and activated orders a summary lists before it points elsewhere.
PENDING_LIST_LIMIT: Final = 50
ACTIVATED_LIST_LIMIT: Final = 10


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The "output" group: logging, the progress bar, and the event loop."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log to stderr: -v info (repeated records are counted, not shown), "
        "-vv debug, every record (tokens are redacted)",
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


def _rich_console(stream: IO[str]) -> Console | None:
    """A rich console for ``stream`` if it is a terminal and rich is installed."""
    if not stream.isatty() or not rich_available(hint=True):
        return None
    from rich.console import Console  # noqa: PLC0415 - optional extra

    return Console(file=stream, highlight=False)


_SHORT_NAME: Final = {
    CancelOutcome.ALREADY_GONE: "gone",
    CancelOutcome.NOT_FOUND: "not found",
    CancelOutcome.NOT_SENT: "not sent",
}
_STYLE: Final = {
    CancelOutcome.CANCELLED: "green",
    CancelOutcome.ALREADY_GONE: "green",
    # Not live on this account, but a run full of them usually names the wrong account.
    CancelOutcome.NOT_FOUND: "cyan",
    CancelOutcome.UNKNOWN: "yellow",
}


def _style(outcome: CancelOutcome) -> str:
    return _STYLE.get(outcome, "red")


def _counts_text(counts: Mapping[CancelOutcome, int], *, markup: bool) -> str:
    """Short counts for a progress line: cancelled always, the other outcomes once they occur."""
    parts = []
    for outcome, count in counts.items():
        if count or outcome is CancelOutcome.CANCELLED:
            text = f"{_SHORT_NAME.get(outcome, outcome.value)} {count}"
            if markup:
                text = f"[{_style(outcome)}]{text}[/]"
            parts.append(text)
    return " ".join(parts)


class ProgressDisplay(Protocol):
    """Shows how far a bulk cancel has got; ``rate`` counts requests sent per second."""

    def advance(self, counts: Mapping[CancelOutcome, int], done: int, rate: float) -> None: ...

    def stop(self) -> None: ...


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


def make_progress(
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


_json_encoder: Final = msgspec.json.Encoder()


def json_line(result: CancelResult) -> str:
    """One order's result as a JSON Lines record: ``asyncstop``'s one record of a result."""
    return _json_encoder.encode(result_record(result)).decode()


def printable(text: str) -> str:
    """``text`` with control characters escaped: exchange messages must not drive the terminal."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)


def _note(result: CancelResult) -> str | None:
    """What a person should read about one result: the error, or why "already gone" is fine."""
    if result.outcome is CancelOutcome.ALREADY_GONE:
        return "404 after an attempt with unknown outcome: that attempt most likely cancelled it"
    if result.outcome is CancelOutcome.NOT_FOUND:
        return "404: the exchange has no live stop order with this id on this account"
    return None if result.error is None else printable(str(result.error))


def describe_pending(result: CancelResult) -> str:
    """One line about an order that may still be live: id, outcome, attempts, and why."""
    text = f"{format_item(result.account_id, result.order_id)}  {result.outcome.value}"
    text += f"  attempts={result.attempts}"
    note = _note(result)
    return f"{text}  {note}" if note else text


def _heading(report: CancelReport, title: str, unsettled: int, *, interrupted: bool) -> str:
    """Orders, time, and a rate of the requests actually sent: unsent orders cost no time."""
    total = len(report.results) + unsettled
    not_sent = report.counts[CancelOutcome.NOT_SENT] + unsettled
    sent = total - not_sent
    text = f"{title}: {total:,} orders in {report.elapsed:.2f} s"
    rate = f"{sent / report.elapsed:,.0f} orders/s" if report.elapsed > 0 and sent else None
    if not_sent:
        text += f"; {sent:,} sent" + (f" ({rate})" if rate else "") + f", {not_sent:,} never sent"
    elif rate:
        text += f" ({rate})"
    if interrupted:
        text += ", interrupted"
    return text


def print_summary(
    report: CancelReport,
    stream: IO[str],
    *,
    title: str,
    interrupted: bool = False,
    unsettled: Sequence[tuple[str, str]] = (),
    pending_hint: str,
    activated_hint: str,
    rate_limited: int = 0,
) -> None:
    """Counts per outcome, time and rate, the 429s met, then the activated and pending orders.

    ``pending_hint`` and ``activated_hint`` say where the rest of a long list can
    be found; each command knows its own flags.
    """
    heading = _heading(report, title, len(unsettled), interrupted=interrupted)
    console = _rich_console(stream)
    counts = report.counts
    if console is not None:
        from rich.table import Table  # noqa: PLC0415 - optional extra

        console.print(heading, style="bold")
        table = Table()
        table.add_column("outcome")
        table.add_column("orders", justify="right")
        for outcome, count in counts.items():
            style = _style(outcome) if count else "dim"
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
    if rate_limited:
        print(
            f"The exchange answered HTTP 429 (slow down) {rate_limited:,} time(s); the client "
            "paused as asked. --rate-limit paces requests below the exchange's limit.",
            file=stream,
        )

    activated = report.activated
    if activated:
        print(
            f"{len(activated)} cancelled stop(s) had already triggered (status Activated): "
            "the orders they placed may be live:",
            file=stream,
        )
        print_capped(
            [format_item(r.account_id, r.order_id) for r in activated],
            stream,
            limit=ACTIVATED_LIST_LIMIT,
            rest_hint=activated_hint,
        )
    lines = [describe_pending(r) for r in report.pending]
    lines += [f"{format_item(*item)}  no result" for item in unsettled]
    if lines:
        print(f"{len(lines)} order(s) may still be live:", file=stream)
        print_capped(lines, stream, limit=PENDING_LIST_LIMIT, rest_hint=pending_hint)


def print_capped(lines: Sequence[str], stream: IO[str], *, limit: int, rest_hint: str) -> None:
    """The first ``limit`` lines, indented, then how many more and where to find them."""
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
                Text(r.outcome.value, style=_style(r.outcome)),
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
