"""Scenario 5: memory per order of one bulk call.

100,000 orders in one ``cancel_stop_orders`` call against the fast server, in a
fresh Python process each time, so that its RSS belongs to this call alone.
The child builds the ids, opens the client and warms up its pool, collects
garbage and takes its baseline; then it runs the call, keeps the report (it is
what the caller gets), and measures:

* with ``tracemalloc`` (in its own process, since tracing costs memory and
  time): the peak of the memory Python allocated during the call, and what the
  report still holds after it. Tracing slows the client about 4x (30 s for
  100,000 orders), so it runs once per benchmark, not ``--runs`` times: its
  figures do not depend on timing, and three runs gave the same bytes per
  order to four digits;
* without it: the peak RSS during the call (the kernel's high-water mark,
  reset at the baseline through ``/proc/self/clear_refs``) minus the baseline
  RSS.

Both are divided by the number of orders.
"""

from __future__ import annotations

import asyncio
import gc
import json
import resource
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any, Final

from .common import ACCOUNT_ID, TOKEN, Figure, FigureSet, Settings, order_ids
from .servers import ServerProcess, ServerSpec, child_env

__all__ = ["run"]

CONCURRENCY: Final = 64
TARGET_BYTES: Final = 2048
#: A child that has not finished by then is killed and the run fails.
_CHILD_TIMEOUT: Final = 180.0
TRACED: Final = "tracemalloc"
TRACED_RUNS: Final = 1
RSS: Final = "rss"


def _read_status(field: str) -> int | None:
    """A ``/proc/self/status`` field in bytes (VmRSS, VmHWM), or None off Linux."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark to the current RSS (Linux 4.0+)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _child(base_url: str, count: int, mode: str) -> dict[str, Any]:
    import asyncstop  # noqa: PLC0415 - imported by the child only, before its baseline

    ids = order_ids(count, "S5")
    async with asyncstop.AsyncStopClient(
        base_url=base_url, token=TOKEN, account_id=ACCOUNT_ID, max_concurrency=CONCURRENCY
    ) as client:
        await client.warm_up()
        gc.collect()
        result: dict[str, Any] = {}
        if mode == TRACED:
            tracemalloc.start()
            report = await client.cancel_stop_orders(ids, concurrency=CONCURRENCY)
            gc.collect()
            retained, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            result.update(peak=peak, retained=retained)
        else:
            baseline = _read_status("VmRSS")
            exact = _reset_peak_rss()
            if baseline is None or not exact:
                # Without /proc: ru_maxrss is the lifetime peak, a fair upper bound
                # only when the call is the process's largest moment (it is here).
                baseline = baseline or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            report = await client.cancel_stop_orders(ids, concurrency=CONCURRENCY)
            peak = (
                _read_status("VmHWM") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            )
            result.update(peak=peak - baseline, exact=exact)
        result["cancelled"] = report.counts[asyncstop.CancelOutcome.CANCELLED]
        del report
    return result


def _measure(base_url: str, count: int, mode: str) -> dict[str, Any]:
    """Run one measurement in a fresh interpreter; it inherits this process's core."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.memory", base_url, str(count), mode],
        capture_output=True,
        timeout=_CHILD_TIMEOUT,
        env=child_env(),
        cwd=Path(__file__).resolve().parent.parent,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"the memory child ({mode}) failed with code {completed.returncode}:\n"
            + completed.stderr.decode(errors="replace")[-2000:]
        )
    result: dict[str, Any] = json.loads(completed.stdout.decode().strip().splitlines()[-1])
    if result["cancelled"] != count:
        raise RuntimeError(f"only {result['cancelled']} of {count} orders were cancelled")
    return result


def run(settings: Settings) -> list[Figure]:
    """Run scenario 5 and return its figures."""
    count = 10_000 if settings.quick else 100_000
    figures = FigureSet(5)
    case = f"{count:,} orders, C={CONCURRENCY}"
    with ServerProcess(ServerSpec(), core=settings.server_core) as server:
        for _ in range(TRACED_RUNS):
            traced = _measure(server.base_url, count, TRACED)
            figures.add(case, "tracemalloc peak per order", "B", traced["peak"] / count)
            figures.add(case, "tracemalloc kept by the report", "B", traced["retained"] / count)
        for _ in range(settings.runs):
            rss = _measure(server.base_url, count, RSS)
            peak_rss = figures.add(case, "peak RSS per order", "B", rss["peak"] / count)
            if not rss["exact"]:
                peak_rss.note = "ru_maxrss: an upper bound"
    for metric in ("tracemalloc peak per order", "tracemalloc kept by the report"):
        figure = figures.get(case, metric)
        if figure is not None:
            figure.note = f"{TRACED_RUNS} run: tracing is slow, its bytes repeat exactly"
    for metric in ("tracemalloc peak per order", "peak RSS per order"):
        figure = figures.get(case, metric)
        if figure is not None:
            figure.check(f"<= {TARGET_BYTES} B", lambda v: v <= TARGET_BYTES)
    return figures.as_list()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(_child(sys.argv[1], int(sys.argv[2]), sys.argv[3]))))
