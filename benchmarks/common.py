"""What every scenario shares: settings, figures (median, min, max of runs), cores, loops."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

from .servers import ACCOUNT_ID, child_env, repo_root

__all__ = [
    "ACCOUNT_ID",
    "TOKEN",
    "Figure",
    "FigureSet",
    "LoopFactory",
    "ScenarioSkipped",
    "Settings",
    "Stopwatch",
    "loop_factories",
    "order_ids",
    "ratio",
    "run_children",
    "run_in_loop",
]

T = TypeVar("T")

TOKEN: Final = "bench-token"  # noqa: S105 - a made-up token for our own fake servers

#: A loop factory for asyncio.Runner; None is the default asyncio loop.
LoopFactory = Callable[[], asyncio.AbstractEventLoop] | None


class ScenarioSkipped(Exception):
    """A scenario cannot run on this machine (no PostgreSQL, say); the message says why."""


@dataclass(frozen=True, slots=True)
class Settings:
    """How one ``python -m benchmarks`` invocation runs."""

    quick: bool
    runs: int
    out_dir: Path
    #: The core the client (this process) runs on, and the core of every server;
    #: None when the machine has a single core (then nothing is pinned).
    client_core: int | None
    server_core: int | None


@dataclass(slots=True)
class Figure:
    """One reported number: a value per run, summarised as median, min and max.

    ``target`` is the goal in words (``">= 0.95"``) and ``passed`` whether the
    median meets it; both are None for figures without a target.
    """

    scenario: int
    case: str
    metric: str
    unit: str
    values: list[float] = field(default_factory=list)
    target: str | None = None
    passed: bool | None = None
    note: str | None = None

    @property
    def finite(self) -> list[float]:
        return [v for v in self.values if math.isfinite(v)]

    @property
    def median(self) -> float:
        values = self.finite
        return statistics.median(values) if values else math.nan

    @property
    def min(self) -> float:
        values = self.finite
        return min(values) if values else math.nan

    @property
    def max(self) -> float:
        values = self.finite
        return max(values) if values else math.nan

    def check(self, target: str, meets: Callable[[float], bool], *, on_max: bool = False) -> Figure:
        """Attach a target, judged on the median (or on the worst run, ``on_max``).

        A figure without numbers misses its target.
        """
        self.target = target
        judged = self.max if on_max else self.median
        self.passed = math.isfinite(judged) and meets(judged)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "median": _json_number(self.median),
            "min": _json_number(self.min),
            "max": _json_number(self.max),
            "runs": [_json_number(v) for v in self.values],
            "target": self.target,
            "passed": self.passed,
            "note": self.note,
        }


def _json_number(value: float) -> float | None:
    return value if math.isfinite(value) else None


class FigureSet:
    """The figures of one scenario, created on first use and kept in order."""

    def __init__(self, scenario: int) -> None:
        self.scenario = scenario
        self._figures: dict[tuple[str, str], Figure] = {}

    def add(self, case: str, metric: str, unit: str, value: float) -> Figure:
        """Record one run's value of (case, metric)."""
        key = (case, metric)
        figure = self._figures.get(key)
        if figure is None:
            figure = self._figures[key] = Figure(self.scenario, case, metric, unit)
        figure.values.append(value)
        return figure

    def get(self, case: str, metric: str) -> Figure | None:
        return self._figures.get((case, metric))

    def __iter__(self) -> Iterator[Figure]:
        return iter(self._figures.values())

    def as_list(self) -> list[Figure]:
        return list(self._figures.values())


def ratio(numerator: float, denominator: float) -> float:
    """numerator / denominator, or NaN when it is undefined."""
    if not denominator or not math.isfinite(numerator) or not math.isfinite(denominator):
        return math.nan
    return numerator / denominator


def order_ids(count: int, prefix: str = "") -> list[str]:
    """Distinct ULID-shaped order ids (26 characters), ``prefix`` folded into the start."""
    head = ("01K2MNGAWPMQJ7" + prefix)[:16]
    return [f"{head}{i:010d}" for i in range(count)]


@dataclass(slots=True)
class Stopwatch:
    """Wall seconds (perf_counter) and this process's CPU seconds (process_time)."""

    wall: float = 0.0
    cpu: float = 0.0
    _wall0: float = 0.0
    _cpu0: float = 0.0

    def __enter__(self) -> Stopwatch:
        # Garbage from the previous case must not be collected on this one's time.
        gc.collect()
        self._cpu0 = time.process_time()
        self._wall0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0


def loop_factories() -> dict[str, LoopFactory]:
    """The event loops to compare: asyncio's default, and uvloop where it is installed."""
    loops: dict[str, LoopFactory] = {"asyncio": None}
    with contextlib.suppress(ImportError):
        import uvloop  # noqa: PLC0415 - optional (the bench extra; not on Windows)

        loops["uvloop"] = uvloop.new_event_loop
    return loops


def run_in_loop(factory: LoopFactory, main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``main()`` to completion in a fresh event loop made by ``factory``."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def pick_cores() -> tuple[int | None, int | None]:
    """Two distinct cores for the client and the servers, or (None, None) on one core."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return None, None
    return cores[0], cores[1]


@contextlib.contextmanager
def pinned(core: int | None) -> Iterator[None]:
    """Pin this process to ``core`` for the duration (no-op for None)."""
    if core is None or not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {core})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def rotate(items: Sequence[T], by: int) -> list[T]:
    """``items`` rotated left by ``by``: each run measures the cases in a different order."""
    if not items:
        return []
    by %= len(items)
    return [*items[by:], *items[:by]]


def run_children(commands: Sequence[Sequence[str]], timeout: float) -> list[dict[str, Any]]:
    """Run ``python -m <command...>`` children at once; return the JSON each prints last.

    Each child inherits this process's core. Every child is reaped on every exit
    path: one that is still running at the timeout, or when another fails, is killed.
    """
    processes: list[subprocess.Popen[bytes]] = []
    try:
        for command in commands:
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", *command],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    env=child_env(),
                    cwd=repo_root(),
                )
            )
        deadline = time.monotonic() + timeout
        outputs = []
        for command, process in zip(commands, processes, strict=True):
            stdout, stderr = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
            if process.returncode != 0:
                raise RuntimeError(
                    f"{' '.join(command[:2])} failed with code {process.returncode}:\n"
                    + stderr.decode(errors="replace")[-2000:]
                )
            outputs.append(json.loads(stdout.decode().strip().splitlines()[-1]))
        return outputs
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
            for stream in (process.stdout, process.stderr):
                if stream is not None:
                    stream.close()
