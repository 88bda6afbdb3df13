"""The outputs of a benchmark run: one table on stdout, a JSON file and a plot."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .common import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure as Picture

__all__ = ["ScenarioResult", "format_table", "read_results", "write_json", "write_plot"]

TITLES: Final = {
    1: "Client overhead, fast server",
    2: "Kill switch against 20 ms latency",
    3: "Kill switch against a 200/s rate limit",
    4: "Event-loop responsiveness",
    5: "Memory per order",
    6: "Watchdog: bot death, bot loop lag, registry latency, outage recovery",
    7: "PostgreSQL: add() latency, lease renewals, machine death to last cancel",
    8: "Hedging when one round decides: 200 orders at C=256, log-normal 50 ms",
}


@dataclass(slots=True)
class ScenarioResult:
    """What one scenario produced: its figures, or the error that stopped it."""

    number: int
    seconds: float = 0.0
    figures: list[Figure] = field(default_factory=list)
    error: str | None = None

    @property
    def has_numbers(self) -> bool:
        return any(figure.finite for figure in self.figures)

    def as_dict(self) -> dict[str, Any]:
        return {
            "title": TITLES[self.number],
            "seconds": round(self.seconds, 2),
            "error": self.error,
            "figures": [figure.as_dict() for figure in self.figures],
        }


def _number(value: float, unit: str = "") -> str:
    if not math.isfinite(value):
        return "-"
    size = abs(value)
    if unit == "x" and size < 10:
        return f"{value:.3f}"  # ratios are compared with targets like 0.95
    if size >= 1000:
        return f"{value:,.0f}"
    if size >= 100 or value == int(value):
        return f"{value:.0f}"
    if size >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _verdict(figure: Figure) -> str:
    if figure.target is None:
        return ""
    return f"{'PASS' if figure.passed else 'MISS'} ({figure.target})"


def format_table(results: Sequence[ScenarioResult]) -> str:
    """One table of every figure: median [min, max] of the runs, and the targets."""
    header = ("Case", "Metric", "Median", "Min", "Max", "Unit", "Target", "Note")
    rows: list[tuple[str, ...] | str] = []
    for result in results:
        rows.append(f"-- {result.number}. {TITLES[result.number]} ({result.seconds:.0f} s)")
        if result.error is not None:
            rows.append(f"   FAILED: {result.error.strip().splitlines()[-1]}")
        elif not result.figures:
            rows.append("   (no figures)")
        for figure in result.figures:
            rows.append(
                (
                    figure.case,
                    figure.metric,
                    _number(figure.median, figure.unit),
                    _number(figure.min, figure.unit),
                    _number(figure.max, figure.unit),
                    figure.unit,
                    _verdict(figure),
                    figure.note or "",
                )
            )
    cells = [header, *(row for row in rows if isinstance(row, tuple))]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    right = {2, 3, 4}  # numbers are right-aligned

    def line(row: tuple[str, ...]) -> str:
        parts = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  ".join(parts).rstrip()

    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [row if isinstance(row, str) else line(row) for row in rows]
    targets = [f for r in results for f in r.figures if f.target is not None]
    missed = [f for f in targets if not f.passed]
    out.append("")
    out.append(f"Targets: {len(targets) - len(missed)} PASS, {len(missed)} MISS")
    out += [
        f"  MISS  {f.scenario}. {f.case}: {f.metric} = {_number(f.median, f.unit)} {f.unit}"
        f" (target {f.target})"
        for f in missed
    ]
    return "\n".join(out)


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    # benchmarks/results/*.tmp is git-ignored: a run killed midway leaves no half file.
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write the results document as indented JSON (replacing the file at once)."""
    text = json.dumps(document, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    _replace_atomically(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


# -- the plot --------------------------------------------------------------------------------
#
# A fill colour says whose number a bar is, in every panel alike; whether a
# figure meets its target is said in words (PASS / MISS) at the right of its
# row, next to its median, and its target is drawn on that row only.

#: Fill colours by who was measured (see _who).
FILLS: Final = {"asyncstop": "tab:orange", "other": "tab:blue", "floor": "tab:gray"}
VERDICT_COLOURS: Final = {True: "tab:green", False: "tab:red"}
#: Point sizes: row labels, the value and verdict columns, panel titles.
LABEL_SIZE: Final = 7.0
VALUE_SIZE: Final = 7.0
TITLE_SIZE: Final = 9.5
#: Characters per line before a row label or a panel title wraps.
LABEL_WRAP: Final = 34
TITLE_WRAP: Final = 62
_HATCH: Final = "///"

_THRESHOLD = re.compile(r"[<>]=?\s*(-?\d[\d,]*(?:\.\d+)?)|^\s*(-?\d+(?:\.\d+)?)\s+in every run")


def _who(figure: Figure) -> str:
    """Whose number it is: "asyncstop", "other" (a baseline client) or "floor" (no client)."""
    if "idle loop" in figure.case or figure.case.startswith("theory"):
        return "floor"
    if figure.case.startswith("naive") or any(f"({b}) " in figure.case for b in "abcd"):
        return "other"
    return "asyncstop"


def _threshold(target: str) -> float | None:
    """The number a target compares with: ``"<= 2048 B"`` -> 2048, ``"0 in every run"`` -> 0."""
    match = _THRESHOLD.search(target)
    if match is None:
        return None
    return float((match[1] or match[2]).replace(",", ""))


def _plot_verdict(figure: Figure) -> str:
    return _verdict(figure).replace("<=", "≤").replace(">=", "≥")


def _metric(figure: Figure) -> str:
    return figure.metric.replace("->", "→")


def _value(figure: Figure, *, with_unit: bool = True) -> str:
    """The median as the picture writes it: ratios with a times sign, other units on request."""
    number = _number(figure.median, figure.unit)
    if figure.unit == "x":
        return number + "\N{MULTIPLICATION SIGN}"
    return f"{number} {figure.unit}" if with_unit and figure.unit else number


def _ungrouped(figure: Figure) -> tuple[str, str]:
    return "", figure.case


def _by_metric(figure: Figure) -> tuple[str, str]:
    return figure.metric, figure.case


def _by_case(figure: Figure) -> tuple[str, str]:
    return figure.case, _metric(figure)


def _by_first_words(count: int) -> Callable[[Figure], tuple[str, str]]:
    """Group by the case's first words: "asyncio C=16 asyncstop" -> "asyncio", "C=16 asyncstop"."""

    def split(figure: Figure) -> tuple[str, str]:
        words = figure.case.split(" ")
        return " ".join(words[:count]), " ".join(words[count:])

    return split


def _no_detail(figure: Figure) -> str:
    return ""


#: Scenario 8's cases are "<workload> <mode>"; the theory's is "theory: <what it assumes>".
_HEDGE_MODE = re.compile(r"^(?P<workload>.*?) (?P<mode>plain|hedge=.*)$")
_HEDGE_MODES: Final = {
    'hedge="auto"': 'hedge="auto" warm',
    'hedge="auto", no earlier calls': 'hedge="auto" cold',
}


def _by_hedge_mode(figure: Figure) -> tuple[str, str]:
    """ "one round ... C=256 hedge="auto"" -> "one round ... C=256", "hedge="auto" warm"."""
    theory, colon, assumption = figure.case.partition(": ")
    if colon and theory == "theory":
        return "theory (Monte Carlo)", assumption
    match = _HEDGE_MODE.match(figure.case)
    if match is None:
        return "", figure.case
    return match["workload"], _HEDGE_MODES.get(match["mode"], match["mode"])


def _by_metric_then_mode(figure: Figure) -> tuple[str, str]:
    workload, mode = _by_hedge_mode(figure)
    return figure.metric, f"{workload.removeprefix('one round ')}: {mode}"


def _ttl(figures: Sequence[Figure]) -> float | None:
    """The lease ttl a machine-death case names ("machine death, 200 stops, ttl 3 s" -> 3)."""
    for figure in figures:
        match = re.search(r"ttl (\d+(?:\.\d+)?) s", figure.case)
        if match is not None:
            return float(match[1])
    return None


@dataclass(slots=True)
class _Panel:
    """One panel: a bar per figure (all in one unit), and other figures as lines of text."""

    scenario: int
    title: str
    xlabel: str
    figures: list[Figure] = field(default_factory=list)
    #: A row's group (a heading row above its first figure) and its label under it.
    label: Callable[[Figure], tuple[str, str]] = _ungrouped
    #: Text after a row's median in the value column.
    detail: Callable[[Figure], str] = _no_detail
    log: bool = False
    #: Where the dotted reference line goes (the bound, N/R, as fast as the baseline).
    reference: float | None = None
    #: Where the axis ends at the latest, so that one slow outlier cannot squash the
    #: rows near their targets; a longer bar ends in an arrow (its number is at the right).
    cut: float | None = None
    #: Which bars are hatched, and what the hatching means (the panel's own legend).
    hatched: Callable[[Figure], bool] | None = None
    hatch_label: str = ""
    #: Figures in another unit, written under the panel.
    notes: list[Figure] = field(default_factory=list)
    #: "not run", or why the scenario has no numbers.
    status: str | None = None


def _pick(
    result: ScenarioResult | None, metrics: Sequence[str], *, by_metric: bool = False
) -> list[Figure]:
    """The figures of these metrics, in the scenario's order or grouped by metric.

    A figure with neither numbers nor a target has nothing to show ("hedges that
    won" when no hedge was sent).
    """
    if result is None:
        return []
    shown = [f for f in result.figures if f.finite or f.target is not None]
    if by_metric:
        return [f for metric in metrics for f in shown if f.metric == metric]
    return [f for f in shown if f.metric in metrics]


def _status(result: ScenarioResult | None) -> str | None:
    if result is None:
        return "not run"
    if result.error is not None:
        return "failed: " + result.error.strip().splitlines()[-1]
    if not result.has_numbers:
        return "no numbers"
    return None


def _panels(results: Sequence[ScenarioResult]) -> dict[str, _Panel]:
    """What each panel of the picture shows, keyed by its place in the grid."""
    by_number = {r.number: r for r in results}
    s1, s2, s3, s4, s5, s6, s7, s8 = (by_number.get(n) for n in range(1, 9))

    cpu = {f.case: f for f in _pick(s1, ["client CPU per cancel"])}

    def cpu_detail(figure: Figure) -> str:
        used = cpu.get(figure.case)
        return "/s" if used is None else f"/s, {_number(used.median)} µs CPU"

    def ratio_label(figure: Figure) -> tuple[str, str]:
        loop, _, rest = figure.case.partition(" ")
        return loop, f"{rest} ÷ {figure.metric.rpartition(' / ')[2]}"

    counts = {
        (f.case, f.metric): f.median
        for f in _pick(s3, ["429s received", "requests inside a pause"])
    }

    def got_429s(figure: Figure) -> bool:
        return counts.get((figure.case, "429s received"), 0.0) > 0

    def rate_limit_detail(figure: Figure) -> str:
        rejected = counts.get((figure.case, "429s received"), math.nan)
        inside = counts.get((figure.case, "requests inside a pause"), math.nan)
        return f"  429s: {_number(rejected)}, inside a pause: {_number(inside)}"

    memory = _pick(s5, ["tracemalloc peak per order", "tracemalloc kept by the report"])
    memory += _pick(s5, ["peak RSS per order"])
    kill = _pick(s6, ["kill -> fired", "kill -> first DELETE", "kill -> all settled"])
    lags = ["lag p50", "lag p99", "lag max"]
    outage = [f for f in _pick(s6, ["rounds", "not cancelled"]) if f.case.startswith("outage")]
    outage = _pick(s6, ["recovery -> last cancel"]) + outage
    death = _pick(s7, ["kill -> first DELETE", "kill -> last cancel"])

    plain_ms = {
        match["workload"]: f.median
        for f in _pick(s8, ["time"])
        if (match := _HEDGE_MODE.match(f.case)) is not None and match["mode"] == "plain"
    }
    hedged_ms = {f.case: f.median for f in _pick(s8, ["time"])}
    theory_ms = {
        f.metric: f.median for f in _pick(s8, ["plain slowest order", "hedged slowest order"])
    }

    def hedge_detail(figure: Figure) -> str:
        if figure.case.startswith("theory"):
            hedged = theory_ms.get("hedged slowest order", math.nan)
            plain = theory_ms.get("plain slowest order", math.nan)
            return f"  {_number(hedged)} vs {_number(plain)} ms plain"
        match = _HEDGE_MODE.match(figure.case)
        if match is None or figure.case not in hedged_ms:
            return ""
        plain = plain_ms.get(match["workload"], math.nan)
        return f"  {_number(hedged_ms[figure.case])} vs {_number(plain)} ms plain"

    panels = {
        "1a": _Panel(
            1,
            "1. Client overhead: cancels per second against the fast server (log scale); "
            "the client's CPU per cancel at the right",
            "cancels/s",
            _pick(s1, ["cancels/s"]),
            label=_by_first_words(1),
            detail=cpu_detail,
            log=True,
        ),
        "1b": _Panel(
            1,
            "1. Cancels/s of one client ÷ another's, in the same run (log scale; "
            "dotted: as fast as the other)",
            "ratio (x)",
            _pick(s1, ["cancels/s / (b)", "cancels/s / httpx"]),
            label=ratio_label,
            log=True,
            reference=1.0,
        ),
        "2a": _Panel(
            2,
            "2. Kill switch against 20 ms latency: time ÷ bound (dotted: the bound, "
            "ceil(N/C) measured round trips; a bar ending in ▶ goes beyond 3 x)",
            "time ÷ bound (x)",
            _pick(s2, ["time / bound"]),
            label=_by_first_words(2),
            reference=1.0,
            cut=3.0,
        ),
        "2b": _Panel(
            2,
            "2. Warm-up and hedging, in % (a negative cost left is noise: warm beat hot)",
            "%",
            _pick(
                s2,
                ["cold cost left after warm_up()", "extra requests (hedges)", "hedges that won"],
                by_metric=True,
            ),
            label=_by_metric,
        ),
        "3a": _Panel(
            3,
            "3. Time ÷ (N/R) against a 200/s rate limit (dotted: N/R). Shorter is not better "
            "when it comes from 429s: see them at the right and in the next panel",
            "time ÷ (N/R) (x)",
            _pick(s3, ["time / (N/R)"]),
            detail=rate_limit_detail,
            reference=1.0,
            hatched=got_429s,
            hatch_label="hatched: this client got 429s (it went faster than the exchange allows)",
        ),
        "3b": _Panel(
            3,
            "3. What each client did to the exchange: 429s it got, requests it sent "
            "inside a pause, orders it left live (fewer is better)",
            "count",
            _pick(
                s3,
                ["429s received", "requests inside a pause", "orders not cancelled"],
                by_metric=True,
            ),
            label=_by_metric,
        ),
        "4": _Panel(
            4,
            "4. Lag of a 5 ms ticker in the client's event loop while the cancels run",
            "ms",
            _pick(s4, lags, by_metric=True),
            label=_by_metric,
        ),
        "5": _Panel(
            5,
            "5. Memory per order",
            "bytes per order",
            memory,
            label=_by_case,
        ),
        "6a": _Panel(
            6,
            "6. Lag of a 5 ms ticker in the bot's event loop while the cancels run: "
            "in the watchdog's process (watchdog.fire()) or in the bot's loop (KillSwitch)",
            "ms",
            _pick(s6, lags, by_metric=True),
            label=_by_metric,
        ),
        "6b": _Panel(
            6,
            "6. Bot SIGKILLed while holding live stops: time from the kill until the "
            "watchdog fired, sent its first DELETE, and had every order settled",
            "ms after the SIGKILL",
            kill,
            label=_by_case,
            notes=[
                f
                for f in _pick(s6, ["all settled / bound", "not cancelled"])
                if not f.case.startswith("outage")
            ],
        ),
        "6c": _Panel(
            6,
            "6. Registry latency: one add() + one discard() on the bot's thread (log scale)",
            "µs",
            _pick(s6, ["add+discard p50", "add+discard p99", "add+discard max"]),
            label=_by_case,
            log=True,
        ),
        "6d": _Panel(
            6,
            "6. Outage recovery: the bot is SIGKILLed while the exchange answers 503; "
            "the watchdog's CPU share, in the outage and between its rounds (sleeping out "
            "the backoff: it must not spin); below, recovery → last cancel",
            "% of one core",
            _pick(s6, ["watchdog CPU in the outage", "watchdog CPU between rounds"]),
            label=_by_case,
            notes=outage,
        ),
        "7": _Panel(
            7,
            "7. PostgreSQL: machine death with live stops, from the kill to the other "
            "machine's first DELETE and last cancel (dotted: the lease ttl); below, add() "
            "latency and lease renewals",
            "s after the kill",
            death,
            label=_by_case,
            reference=_ttl(death),
            notes=_pick(s7, ["p50", "p99", "renewals per second", "bots kept alive at ttl 10 s"]),
        ),
        "8a": _Panel(
            8,
            '8. One round decides: time with hedge="auto" ÷ plain, in the same run '
            "(dotted: as fast as plain; grey: the theory line); cold: no earlier calls; "
            "the times at the right",
            "time ÷ plain (x)",
            _pick(s8, ["time / plain"]),
            label=_by_hedge_mode,
            detail=hedge_detail,
            reference=1.0,
        ),
        "8b": _Panel(
            8,
            '8. What hedge="auto" cost: extra requests (hedges, % of the orders) and '
            "the hedges that won (% of the hedges); cold: no earlier calls",
            "%",
            _pick(s8, ["extra requests (hedges)", "hedges that won"], by_metric=True),
            label=_by_metric_then_mode,
        ),
    }
    for panel in panels.values():
        panel.status = _status(by_number.get(panel.scenario))
    # A figure with a target is never left out of the picture: the ones no
    # panel draws go under the last panel of their scenario.
    drawn = {id(f) for panel in panels.values() for f in (*panel.figures, *panel.notes)}
    last = {panel.scenario: panel for panel in panels.values()}
    fallback = list(panels.values())[-1]
    for result in results:
        for figure in result.figures:
            if figure.target is not None and id(figure) not in drawn:
                last.get(result.number, fallback).notes.append(figure)
    return panels


def _draw(ax: Axes, panel: _Panel) -> None:
    ax.set_title(textwrap.fill(panel.title, TITLE_WRAP), fontsize=TITLE_SIZE, loc="left")
    figures = panel.figures
    if panel.status is not None or not figures:
        ax.text(
            0.5,
            0.5,
            textwrap.fill(panel.status or "no figures", 50),
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
        ax.set_axis_off()
        if panel.status is not None:
            return
    else:
        _draw_bars(ax, panel)
    for line, figure in enumerate(panel.notes):
        verdict = "" if figure.target is None else f"   {_plot_verdict(figure)}"
        ax.annotate(
            f"{figure.case}: {_metric(figure)} = {_value(figure)}{verdict}",
            xy=(0.0, 0.0),
            xycoords="axes fraction",
            xytext=(0, -30 - 11 * line),
            textcoords="offset points",
            va="top",
            fontsize=VALUE_SIZE + 0.5,
            fontweight="bold" if figure.target is not None else "normal",
            color="black" if figure.passed is None else VERDICT_COLOURS[figure.passed],
        )


def _rows(panel: _Panel) -> tuple[list[str], list[int], list[int]]:
    """Every row's label, the rows that are group headings, and each figure's row."""
    labels: list[str] = []
    headings: list[int] = []
    places: list[int] = []
    group = ""
    for figure in panel.figures:
        heading, label = panel.label(figure)
        if heading and heading != group:
            headings.append(len(labels))
            labels.append(heading)
        group = heading
        places.append(len(labels))
        labels.append(textwrap.fill(label, LABEL_WRAP))
    return labels, headings, places


def _draw_bars(ax: Axes, panel: _Panel) -> None:
    figures = panel.figures
    labels, headings, places = _rows(panel)
    medians = [f.median if math.isfinite(f.median) else 0.0 for f in figures]
    lows = [
        max(0.0, m - f.min) if math.isfinite(f.min) else 0.0
        for f, m in zip(figures, medians, strict=True)
    ]
    highs = [
        max(0.0, f.max - m) if math.isfinite(f.max) else 0.0
        for f, m in zip(figures, medians, strict=True)
    ]
    bars = ax.barh(
        places,
        medians,
        xerr=[lows, highs],
        color=[FILLS[_who(f)] for f in figures],
        capsize=2,
        height=0.7,
        error_kw={"elinewidth": 0.8},
    )
    if panel.hatched is not None:
        from matplotlib.patches import Patch  # noqa: PLC0415 - the bench extra, as in write_plot

        for bar, figure in zip(bars.patches, figures, strict=True):
            if panel.hatched(figure):
                bar.set_hatch(_HATCH)
                bar.set_edgecolor("white")
        ax.legend(
            [Patch(facecolor="gray", edgecolor="white", hatch=_HATCH)],
            [panel.hatch_label],
            loc="upper center",
            bbox_to_anchor=(0.5, -0.1),
            fontsize=LABEL_SIZE,
            frameon=False,
        )
    ax.set_yticks(range(len(labels)), labels)
    for row in headings:
        tick = ax.get_yticklabels()[row]
        tick.set_fontweight("bold")
        tick.set_fontsize(LABEL_SIZE + 0.5)
    ax.tick_params(axis="y", labelsize=LABEL_SIZE, length=0)
    ax.tick_params(axis="x", labelsize=LABEL_SIZE)
    ax.set_ylim(len(labels) - 0.5, -0.5)  # the first row on top
    ax.set_xlabel(panel.xlabel, fontsize=LABEL_SIZE + 0.5)
    if panel.log:
        ax.set_xscale("log")
    if panel.reference is not None:
        ax.axvline(panel.reference, color="dimgray", linestyle=":", linewidth=1.2)
    if (
        panel.cut is not None
        and max(m + h for m, h in zip(medians, highs, strict=True)) > panel.cut
    ):
        ax.set_xlim(right=panel.cut)
        for row, median in zip(places, medians, strict=True):
            if median > panel.cut:
                ax.annotate(
                    "\N{BLACK RIGHT-POINTING TRIANGLE}",
                    xy=(panel.cut, row),
                    ha="right",
                    va="center",
                    fontsize=LABEL_SIZE + 1,
                    color="white",
                )
    for row, figure in zip(places, figures, strict=True):
        threshold = None if figure.target is None else _threshold(figure.target)
        if threshold is not None and (threshold > 0 or not panel.log):
            ax.plot(
                [threshold, threshold],
                [row - 0.48, row + 0.48],
                color="black",
                linewidth=2.4,
                solid_capstyle="butt",
                zorder=3,
            )
    # The value column (monospaced, right-aligned) and the verdict column sit
    # right of the axes, where no bar or whisker can hide them.
    values = [_value(f, with_unit=False) + panel.detail(f) for f in figures]
    width = 4 + max(len(v) for v in values) * VALUE_SIZE * 0.61
    for row, figure, value in zip(places, figures, values, strict=True):
        ax.annotate(
            value,
            xy=(1.0, row),
            xycoords=("axes fraction", "data"),
            xytext=(width, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=VALUE_SIZE,
            family="monospace",
        )
        if figure.passed is not None:
            ax.annotate(
                _plot_verdict(figure),
                xy=(1.0, row),
                xycoords=("axes fraction", "data"),
                xytext=(width + 6, 0),
                textcoords="offset points",
                ha="left",
                va="center",
                fontsize=VALUE_SIZE,
                fontweight="bold",
                color=VERDICT_COLOURS[figure.passed],
            )


#: Each panel's place in a 4 x 4 grid (rows, columns); 2a is tall: it has the most rows.
LAYOUT: Final = {
    "1a": (slice(0, 1), 0),
    "1b": (slice(0, 1), 1),
    "2a": (slice(0, 2), 2),
    "2b": (slice(0, 1), 3),
    "3a": (slice(1, 2), 0),
    "3b": (slice(1, 2), 1),
    "4": (slice(1, 2), 3),
    "5": (slice(2, 3), 0),
    "6a": (slice(2, 3), 1),
    "6b": (slice(2, 3), 2),
    "6c": (slice(2, 3), 3),
    "6d": (slice(3, 4), 0),
    "7": (slice(3, 4), 1),
    "8a": (slice(3, 4), 2),
    "8b": (slice(3, 4), 3),
}
GRID: Final = (4, 4)


def write_plot(path: Path, results: Sequence[ScenarioResult]) -> None:
    """Draw the main figures of each scenario (median bars, min-max whiskers, verdicts)."""
    picture = _picture(results)
    _replace_atomically(path, lambda tmp: picture.savefig(tmp, dpi=100, format="png"))


def _picture(results: Sequence[ScenarioResult]) -> Picture:
    # The bench extra, imported only to draw; a bare matplotlib Figure keeps
    # pyplot's global state (and its GUI backends) out of it.
    from matplotlib.figure import Figure as Picture  # noqa: PLC0415
    from matplotlib.lines import Line2D  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    picture = Picture(figsize=(26, 22), layout="constrained")
    grid = picture.add_gridspec(*GRID)
    for key, panel in _panels(results).items():
        rows, column = LAYOUT[key]
        _draw(picture.add_subplot(grid[rows, column]), panel)

    targets = [f for r in results for f in r.figures if f.target is not None]
    missed = sum(1 for f in targets if not f.passed)
    runs = max((len(f.values) for r in results for f in r.figures), default=0)
    picture.suptitle(
        f"asyncstop benchmarks: bars are the median of {runs} run(s), whiskers min to max; "
        f"targets: {len(targets) - missed} PASS, {missed} MISS\n"
        "At the right of each row: its median, then PASS or MISS for a figure with a target "
        "(judged on the median, or on the worst run for '0 in every run').",
        fontsize=12,
    )
    picture.legend(
        handles=[
            Patch(color=FILLS["asyncstop"], label="asyncstop"),
            Patch(color=FILLS["other"], label="another client: baselines (a)-(d), naive gather"),
            Patch(color=FILLS["floor"], label="no client: the idle loop (the floor), theory"),
            Line2D([], [], color="black", linewidth=2.4, label="the target, on its own row"),
            Line2D(
                [],
                [],
                color="dimgray",
                linestyle=":",
                label="reference: the bound, N/R, or as fast as the other client",
            ),
        ],
        loc="outside lower center",
        ncols=5,
        fontsize=9,
        frameon=False,
    )
    return picture


def read_results(path: Path) -> list[ScenarioResult]:
    """The scenarios of a results JSON written by ``python -m benchmarks``, to draw again."""
    document = json.loads(path.read_text(encoding="utf-8"))
    results = []
    for number, scenario in document["scenarios"].items():
        figures = [
            Figure(
                f["scenario"],
                f["case"],
                f["metric"],
                f["unit"],
                [math.nan if v is None else float(v) for v in f["runs"]],
                f["target"],
                f["passed"],
                f["note"],
            )
            for f in scenario["figures"]
        ]
        results.append(ScenarioResult(int(number), scenario["seconds"], figures, scenario["error"]))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """Draw the picture of a results JSON again: ``python -m benchmarks.report quick.json``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.report",
        description="Redraw the PNG of a benchmark run from its JSON, without running it.",
    )
    parser.add_argument("json", type=Path, help="results written by python -m benchmarks")
    parser.add_argument("png", type=Path, nargs="?", help="default: the JSON's name, .png")
    args = parser.parse_args(argv)
    write_plot(args.png or args.json.with_suffix(".png"), read_results(args.json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
