"""Profile asyncstop's bulk path in scenario-1 conditions, and say where the CPU goes.

::

    pip install py-spy
    python -m benchmarks.profile_bulk [--orders 100000] [--concurrency 64] [--uvloop]

Starts the fast server on the second core, then runs one ``cancel_stop_orders``
call in a child process on the first core under ``py-spy record --format raw
--nonblocking`` (sampling from outside, so the client runs at full speed). It
prints the share of CPU samples, and microseconds per cancel (the share times
the child's measured CPU per cancel), of each step of the request path
(inclusive: a step includes what it calls), then of each package's own code.
Not part of ``python -m benchmarks``: py-spy is not in the bench extra.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from .common import ACCOUNT_ID, TOKEN, order_ids, pick_cores, pinned
from .servers import ServerProcess, ServerSpec, child_env, repo_root

__all__ = ["main"]

#: A py-spy frame: "function (path/to/file.py:line)".
_FRAME: Final = re.compile(r"^(?P<function>.+?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

Frame = tuple[str, str]  # (function, file)


def _in(file_part: str, *functions: str) -> Callable[[Frame], bool]:
    def matches(frame: Frame) -> bool:
        function, file = frame  # py-spy qualifies methods: "ClientSession._request"
        return file_part in file and (not functions or function.rpartition(".")[2] in functions)

    return matches


#: The steps of one cancel: (label, file, functions), inclusive of what they call.
_STEP_FRAMES: Final = [
    ("asyncstop bulk engine: run_job (all per-order work)", "asyncstop/_bulk.py", ("run_job",)),
    ("  asyncstop _attempt (one attempt)", "asyncstop/_client.py", ("_attempt",)),
    ("    aiohttp ClientSession._request", "aiohttp/client.py", ("_request",)),
    ("      ClientRequest.__init__ (build the request)", "aiohttp/client_reqrep.py", ("__init__",)),
    ("        yarl (URL parsing, joining)", "yarl/", ()),
    (
        "        headers (CIMultiDict, update_*headers)",
        "aiohttp/client_reqrep.py",
        ("update_headers", "update_auto_headers"),
    ),
    ("      connector (get/release a connection)", "aiohttp/connector.py", ()),
    ("      ClientRequest.send (serialise, write)", "aiohttp/client_reqrep.py", ("send",)),
    ("      ClientResponse.start (status, headers)", "aiohttp/client_reqrep.py", ("start",)),
    ("    ClientResponse.read (body)", "aiohttp/client_reqrep.py", ("read",)),
    ("    decode_stop_order (msgspec)", "asyncstop/_models.py", ()),
    ("  settle (CancelResult, bookkeeping)", "asyncstop/_bulk.py", ("settle",)),
    ("tenacity (retries)", "tenacity/", ()),
    ("aiolimiter (pacing)", "aiolimiter/", ()),
    ("loop: socket read + HTTP parser", "aiohttp/client_proto.py", ("data_received",)),
    ("loop: selector poll", "selectors.py", ()),
]
STEPS: Final[list[tuple[str, Callable[[Frame], bool]]]] = [
    (label, _in(file, *functions)) for label, file, functions in _STEP_FRAMES
]

#: Packages whose own code (self time) is reported.
PACKAGES: Final = (
    "asyncstop/",
    "aiohttp/",
    "yarl/",
    "multidict/",
    "msgspec",
    "tenacity/",
    "aiolimiter/",
    "asyncio/",
    "selectors.py",
)


def _parse(line: str) -> tuple[list[Frame], int] | None:
    stack, _, count = line.rstrip().rpartition(" ")
    if not stack or not count.isdigit():
        return None
    frames: list[Frame] = []
    for text in stack.split(";"):
        match = _FRAME.match(text)
        if match is not None:
            frames.append((match["function"], match["file"]))
    return frames, int(count)


def breakdown(raw: str, cpu_per_cancel_us: float) -> str:
    """Aggregate py-spy raw (collapsed) stacks into the report."""
    total = 0
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    for line in raw.splitlines():
        parsed = _parse(line)
        if parsed is None:
            continue
        frames, count = parsed
        if any("importlib" in file for _, file in frames):
            continue  # start-up imports, not the bulk call
        total += count
        for label, matches in STEPS:
            if any(matches(frame) for frame in frames):
                inclusive[label] += count
        function, leaf = frames[-1] if frames else ("?", "")
        package = next((p for p in PACKAGES if p in leaf), "other")
        own[package.rstrip("/")] += count
        leaves[f"{function} ({leaf.rpartition('site-packages/')[2]})"] += count
    if not total:
        return "no samples"

    def row(label: str, count: int) -> str:
        share = count / total
        return f"  {label:<62} {100 * share:5.1f} %  {share * cpu_per_cancel_us:6.1f} µs"

    lines = [f"{total} samples; client CPU {cpu_per_cancel_us:.1f} µs per cancel", ""]
    lines.append("Steps (inclusive):")
    lines += [row(label, inclusive[label]) for label, _ in STEPS]
    lines.append("")
    lines.append("Own code by package (self time; C extensions count in their caller):")
    lines += [row(package, count) for package, count in own.most_common()]
    lines.append("")
    lines.append("Functions with the most own time:")
    lines += [row(name[:62], count) for name, count in leaves.most_common(15)]
    return "\n".join(lines)


async def _child(base_url: str, count: int, concurrency: int) -> dict[str, Any]:
    import asyncstop  # noqa: PLC0415 - the child imports what it profiles

    ids = order_ids(count, "PR")
    async with asyncstop.AsyncStopClient(
        base_url=base_url, token=TOKEN, account_id=ACCOUNT_ID, max_concurrency=concurrency
    ) as client:
        await client.cancel_stop_orders(ids[: 4 * concurrency], concurrency=concurrency)
        cpu = time.process_time()
        report = await client.cancel_stop_orders(ids, concurrency=concurrency)
        cpu = time.process_time() - cpu
    return {"cpu_per_cancel_us": cpu / count * 1e6, "ok": report.ok}


def main(argv: list[str] | None = None) -> int:
    """Profile one bulk call; print the breakdown."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_bulk")
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--rate", type=int, default=1000, help="py-spy samples per second")
    parser.add_argument("--uvloop", action="store_true")
    parser.add_argument("--raw", type=Path, help="also keep py-spy's raw stacks here")
    parser.add_argument("--child", nargs=2, metavar=("URL", "UVLOOP"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        runner: Any = asyncio.run
        if args.child[1] == "1":
            import uvloop  # noqa: PLC0415 - the bench extra

            runner = uvloop.run
        print(json.dumps(runner(_child(args.child[0], args.orders, args.concurrency))))
        return 0
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print("profile_bulk needs py-spy: pip install py-spy", file=sys.stderr)
        return 2
    client_core, server_core = pick_cores()
    with (
        ServerProcess(ServerSpec(), core=server_core) as server,
        pinned(client_core),
        tempfile.TemporaryDirectory() as tmp,
    ):
        raw_path = args.raw or Path(tmp) / "stacks.txt"
        command = [
            py_spy, "record", "--format", "raw", "--nonblocking",
            "--rate", str(args.rate), "--output", str(raw_path), "--",
            sys.executable, "-m", "benchmarks.profile_bulk",
            "--orders", str(args.orders), "--concurrency", str(args.concurrency),
            "--child", server.base_url, "1" if args.uvloop else "0",
        ]  # fmt: skip
        completed = subprocess.run(
            command, capture_output=True, env=child_env(), cwd=repo_root(), timeout=600, check=False
        )
        if completed.returncode != 0:
            print(completed.stderr.decode(errors="replace"), file=sys.stderr)
            return 1
        # py-spy prints its own lines too; the child's result is the JSON one.
        lines = completed.stdout.decode().splitlines()
        result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        raw = raw_path.read_text()
    loop = "uvloop" if args.uvloop else "asyncio"
    print(f"{args.orders} orders at concurrency {args.concurrency} on {loop}, ok={result['ok']}")
    print(breakdown(raw, result["cpu_per_cancel_us"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
