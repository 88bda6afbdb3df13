"""The outputs of a benchmark run: one table on stdout, a JSON file and a plot."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from .common import Figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["ScenarioResult", "format_table", "write_json", "write_plot"]

TITLES: Final = {
    1: "Client overhead, fast server",
    2: "Kill switch against 20 ms latency",
    3: "Kill switch against a 200/s rate limit",
    4: "Event-loop responsiveness",
    5: "Memory per order",
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


def _select(results: Sequence[ScenarioResult], number: int, metric: str) -> list[Figure]:
    return [f for r in results if r.number == number for f in r.figures if f.metric == metric]


def _colour(figure: Figure) -> str:
    if figure.passed is not None:
        return "tab:green" if figure.passed else "tab:red"
    return (
        "tab:orange"
        if figure.case.startswith("asyncstop") or figure.case.endswith("asyncstop")
        else "tab:blue"
    )


def _bars(
    ax: Axes,
    figures: list[Figure],
    title: str,
    unit: str,
    *,
    log: bool = False,
    label: Callable[[Figure], str] = lambda f: f.case,
    line: float | None = None,
) -> None:
    ax.set_title(title, fontsize=9)
    if not figures:
        ax.text(0.5, 0.5, "not run", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    medians = [f.median if math.isfinite(f.median) else 0.0 for f in figures]
    lows = [
        max(0.0, m - f.min) if math.isfinite(f.min) else 0.0
        for f, m in zip(figures, medians, strict=True)
    ]
    highs = [
        max(0.0, f.max - m) if math.isfinite(f.max) else 0.0
        for f, m in zip(figures, medians, strict=True)
    ]
    colours = [_colour(f) for f in figures]
    positions = range(len(figures))
    ax.barh(positions, medians, xerr=[lows, highs], color=colours, capsize=2, height=0.7)
    ax.set_yticks(list(positions), [label(f) for f in figures], fontsize=6)
    ax.invert_yaxis()
    ax.set_xlabel(unit, fontsize=7)
    ax.tick_params(axis="x", labelsize=7)
    if log:
        ax.set_xscale("log")
    if line is not None:
        ax.axvline(line, color="black", linewidth=0.8, linestyle="--")


def _rate_limit_panel(ax: Axes, results: Sequence[ScenarioResult]) -> None:
    """Time / (N/R) per client, annotated with its 429s and requests inside a pause."""
    timing = _select(results, 3, "time / (N/R)")
    _bars(ax, timing, "3. Time / (N/R) (dashed: 1.05)", "x", line=1.05)
    counts = {
        (f.case, f.metric): f.median
        for metric in ("429s received", "requests inside a pause")
        for f in _select(results, 3, metric)
    }
    for position, figure in enumerate(timing):
        rejected = counts.get((figure.case, "429s received"), math.nan)
        inside = counts.get((figure.case, "requests inside a pause"), math.nan)
        ax.text(
            0.02,
            position + 0.3,
            f"429s {_number(rejected)}, inside a pause {_number(inside)}",
            fontsize=7,
            color="white",
            fontweight="bold",
        )


def write_plot(path: Path, results: Sequence[ScenarioResult]) -> None:
    """Draw the main figures of each scenario (median bars, min-max whiskers)."""
    import matplotlib  # noqa: PLC0415 - the bench extra; imported only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(2, 3, figsize=(17, 11))
    (a1, a2, a3), (a4, a5, a6) = axes
    _bars(
        a1,
        _select(results, 1, "cancels/s"),
        "1. Cancels per second (log scale)",
        "cancels/s",
        log=True,
    )
    _bars(
        a2,
        _select(results, 1, "client CPU per cancel"),
        "1. Client CPU per cancel (log scale)",
        "µs",
        log=True,
    )
    _bars(
        a3,
        [f for f in _select(results, 2, "time / bound") if "(a)" not in f.case],
        "2. asyncstop: time / ceil(N/C) round trips (dashed: 1.1)",
        "x",
        line=1.1,
    )
    _rate_limit_panel(a4, results)
    lag_figures = [
        f for metric in ("lag p50", "lag p99", "lag max") for f in _select(results, 4, metric)
    ]
    _bars(
        a5,
        lag_figures,
        "4. Ticker lag during 10,000 cancels (dashed: 5 ms)",
        "ms",
        label=lambda f: f"{f.case}: {f.metric}",
        line=5.0,
    )
    memory = [f for r in results if r.number == 5 for f in r.figures]
    _bars(
        a6,
        memory,
        "5. Memory per order (dashed: 2 KiB)",
        "bytes",
        label=lambda f: f.metric,
        line=2048.0,
    )
    fig.suptitle(
        "asyncstop benchmarks: median of the runs, whiskers min-max;"
        " green PASS, red MISS; orange asyncstop, blue others (no target)",
        fontsize=11,
    )
    fig.tight_layout()
    _replace_atomically(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
    plt.close(fig)
