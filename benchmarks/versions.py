"""Client CPU per cancel of this checkout against another revision, side by side in one run.

::

    python -m benchmarks.versions REV [OTHER_REV] [--runs 7] [--orders 20000] [--concurrency 64]

A refactor must not slow the hot path. This runs scenario 1's measurement
(one fast server on its own core, a fresh warmed pool per sample, N cancels at
concurrency C) for ``REV`` and for the working tree (or ``OTHER_REV``),
each exported with ``git archive``, alternating which goes first in each
round, each sample in a fresh interpreter pinned to the client core. It prints the median client CPU
microseconds per cancel of each and their ratio. Both versions talk to the same
server process in the same run, so the ratio holds on a noisy machine where
the absolute figures do not.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Final

from .common import pick_cores
from .servers import ServerProcess, ServerSpec, repo_root

#: One sample, run in a fresh interpreter with the version under test first on the path.
_SAMPLE: Final = """
import asyncio, json, os, sys, time
import asyncstop

base_url, n, concurrency, core = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
if core != "-1":
    os.sched_setaffinity(0, {int(core)})

async def main():
    ids = [f"V{i:07d}" for i in range(n)]
    async with asyncstop.AsyncStopClient(
        base_url=base_url, token="bench-token", account_id="acc-1", max_concurrency=concurrency
    ) as client:
        await client.cancel_stop_orders(ids[:concurrency], concurrency=concurrency)
        cpu, wall = time.process_time(), time.perf_counter()
        report = await client.cancel_stop_orders(ids, concurrency=concurrency)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    cancelled = sum(1 for r in report.results if r.outcome == "cancelled")
    print(json.dumps({"cpu_us": cpu / n * 1e6, "rate": n / wall, "cancelled": cancelled}))

asyncio.run(main())
"""


def _export(revision: str, into: Path) -> Path:
    """The ``asyncstop`` package of ``revision``, unpacked under ``into``."""
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision, "asyncstop"],
        cwd=repo_root(),
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def _sample(
    root: Path, base_url: str, n: int, concurrency: int, core: int | None
) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", _SAMPLE, base_url, str(n), str(concurrency), str(core or -1)],
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        check=True,
        capture_output=True,
        text=True,
    )
    sample: dict[str, float] = json.loads(done.stdout)
    if sample["cancelled"] != n:
        raise RuntimeError(f"{root}: only {sample['cancelled']} of {n} cancels confirmed")
    return sample


def main(argv: Sequence[str] | None = None) -> int:
    """Measure both versions and print the comparison."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.versions", description=__doc__)
    parser.add_argument("revision", help="the git revision to compare with, e.g. HEAD~3")
    parser.add_argument("other", nargs="?", help="a second revision (default: the working tree)")
    parser.add_argument("--runs", type=int, default=7, help="rounds (default 7)")
    parser.add_argument("--orders", type=int, default=20_000, help="cancels per sample")
    parser.add_argument("--concurrency", type=int, default=64, help="default 64")
    args = parser.parse_args(argv)
    client_core, server_core = pick_cores()
    with tempfile.TemporaryDirectory() as scratch:
        versions = {args.revision: _export(args.revision, Path(scratch) / "base")}
        if args.other:
            versions[args.other] = _export(args.other, Path(scratch) / "other")
        else:
            versions["working tree"] = repo_root()
        cpu: dict[str, list[float]] = {name: [] for name in versions}
        with ServerProcess(ServerSpec(), core=server_core) as server:
            for run in range(args.runs):
                order = list(versions) if run % 2 == 0 else list(reversed(versions))
                for name in order:
                    sample = _sample(
                        versions[name], server.base_url, args.orders, args.concurrency, client_core
                    )
                    cpu[name].append(sample["cpu_us"])
                    print(
                        f"run {run + 1}: {name:>14}: {sample['cpu_us']:.1f} µs/cancel", flush=True
                    )
    (base_name, base), (name, current) = ((n, statistics.median(cpu[n])) for n in versions)
    print(
        f"median client CPU per cancel at C={args.concurrency}, N={args.orders}: "
        f"{base_name} {base:.1f} µs, {name} {current:.1f} µs, ratio {current / base:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
