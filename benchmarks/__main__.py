"""``python -m benchmarks``: run the scenarios, print one table, write JSON and a plot.

See benchmarks/README.md. The exit status is 1 when a scenario produced no
numbers (it failed, or measured nothing), 2 for bad arguments or a missing
dependency, and 0 otherwise, whatever the targets say: they are reported, not
enforced.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import importlib.metadata
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

__all__ = ["main"]

#: Scenario number -> module (each has ``run(settings) -> list[Figure]``).
SCENARIOS: Final = {
    1: "benchmarks.overhead",
    2: "benchmarks.latency",
    3: "benchmarks.ratelimit",
    4: "benchmarks.responsiveness",
    5: "benchmarks.memory",
    6: "benchmarks.watchdog",
    7: "benchmarks.postgres",
    8: "benchmarks.oneround",
}
#: The bench extra; uvloop is optional (the extra leaves it out on Windows).
REQUIRED: Final = ("aiohttp", "msgspec", "httpx", "trustme", "matplotlib")
DEFAULT_OUT: Final = Path(__file__).resolve().parent / "results"
DEFAULT_RUNS: Final = 3
QUICK_RUNS: Final = 1


def _scenarios(text: str) -> list[int]:
    try:
        numbers = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 1,3, not {text!r}") from None
    unknown = [n for n in numbers if n not in SCENARIOS]
    if not numbers or unknown:
        raise argparse.ArgumentTypeError(f"scenarios are 1 to {len(SCENARIOS)}, not {text!r}")
    return numbers


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Benchmark asyncstop against fake exchange servers on 127.0.0.1.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smaller version (under 60 s) that checks every scenario produces numbers",
    )
    parser.add_argument(
        "--scenarios",
        type=_scenarios,
        default=sorted(SCENARIOS),
        metavar="1,3",
        help="which scenarios to run (default: all)",
    )
    parser.add_argument(
        "--runs",
        type=_positive,
        default=None,
        help=f"runs per figure (default {DEFAULT_RUNS}, or {QUICK_RUNS} with --quick)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="where to write the JSON and the plot (default: benchmarks/results)",
    )
    return parser


def _missing_dependencies() -> list[str]:
    missing = []
    for name in REQUIRED:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("aiohttp", "msgspec", "tenacity", "aiolimiter", "httpx", "uvloop", "yarl"):
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _output_name(quick: bool, scenarios: Sequence[int]) -> str:
    # Only a full run replaces the committed latest.*; the others get their own
    # (git-ignored) names so that a smoke test never overwrites real results.
    if quick:
        return "quick"
    if list(scenarios) != sorted(SCENARIOS):
        return "partial"
    return "latest"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; return the process exit status."""
    args = _parser().parse_args(argv)
    missing = _missing_dependencies()
    if missing:
        print(
            f"benchmarks need the bench extra (missing: {', '.join(missing)}):\n"
            "    pip install -e '.[bench]'",
            file=sys.stderr,
        )
        return 2

    from .common import (  # noqa: PLC0415 - after the check
        ScenarioSkipped,
        Settings,
        pick_cores,
        pinned,
    )
    from .report import (  # noqa: PLC0415
        ScenarioResult,
        format_table,
        write_json,
        write_plot,
    )

    client_core, server_core = pick_cores()
    runs = args.runs or (QUICK_RUNS if args.quick else DEFAULT_RUNS)
    settings = Settings(
        quick=args.quick,
        runs=runs,
        out_dir=args.out,
        client_core=client_core,
        server_core=server_core,
    )
    print(
        f"asyncstop benchmarks: scenarios {','.join(map(str, args.scenarios))}, "
        f"{runs} run(s) each{', quick' if args.quick else ''}; "
        + (
            f"client on core {client_core}, servers on core {server_core}"
            if client_core is not None
            else "one core: client and servers share it"
        ),
        flush=True,
    )
    started = time.perf_counter()
    results: list[ScenarioResult] = []
    skipped: dict[int, str] = {}
    with pinned(client_core):
        for number in args.scenarios:
            result = ScenarioResult(number)
            print(f"  scenario {number} ...", end="", flush=True)
            scenario_started = time.perf_counter()
            try:
                module = importlib.import_module(SCENARIOS[number])
                run: Callable[[Settings], Any] = module.run
                result.figures = run(settings)
            except ScenarioSkipped as why:
                skipped[number] = str(why)
                print(f" skipped: {why}", end="", flush=True)
            except Exception:
                result.error = traceback.format_exc()
                print(f"\n{result.error}", file=sys.stderr, flush=True)
            result.seconds = time.perf_counter() - scenario_started
            print(f" {result.seconds:.0f} s", flush=True)
            results.append(result)
    wall = time.perf_counter() - started

    print()
    print(format_table(results))
    print(f"\nWall time: {wall:.0f} s")

    settings.out_dir.mkdir(parents=True, exist_ok=True)
    name = _output_name(args.quick, args.scenarios)
    document = {
        "generated": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "benchmarks", *(argv if argv is not None else sys.argv[1:])],
        "quick": args.quick,
        "runs": runs,
        "wall_seconds": round(wall, 1),
        "machine": {
            "cpus": os.cpu_count(),
            "client_core": client_core,
            "server_core": server_core,
            "platform": platform.platform(),
        },
        "versions": _versions(),
        "scenarios": {str(r.number): r.as_dict() for r in results},
    }
    json_path = settings.out_dir / f"{name}.json"
    write_json(json_path, document)
    plot_path = settings.out_dir / f"{name}.png"
    write_plot(plot_path, results)
    print(f"Wrote {json_path} and {plot_path}")

    empty = [
        r.number
        for r in results
        if r.error is not None or (not r.has_numbers and r.number not in skipped)
    ]
    if empty:
        print(f"Scenario(s) {', '.join(map(str, empty))} produced no numbers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
