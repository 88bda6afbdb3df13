"""Scenario 6: the watchdog: how soon it cancels after the bot dies, and what it costs the bot.

* **Bot death.** A bot process with 1,000 stops in a durable registry and an
  armed :class:`asyncstop.Watchdog` is SIGKILLed. Measured from the kill: the
  watchdog's detection (it fired), the first DELETE reaching the 20 ms server,
  and the watchdog's run finished (every reply in). The bound is
  ceil(N/C) x the measured round trip plus the detection time.
* **Bot loop lag.** A ticker in the bot's loop sleeps 5 ms again and again
  while 10,000 stops are cancelled at concurrency 64 against the fast server:
  by ``await watchdog.fire()`` (the cancels run in the watchdog's process) and
  by an in-loop ``KillSwitch.trigger()`` (as scenario 4), and for an idle
  loop (the floor that the timers and the machine's other work set).
* **Registry latency.** One ``add()`` plus one ``discard()`` on a durable
  registry (``synchronous="NORMAL"`` and ``"FULL"``) and on the in-memory one,
  timed on the bot's thread.
* **Outage recovery.** A bot with 1,000 stops is SIGKILLed as a fake exchange
  (in this process) starts answering every cancel with 503; it recovers
  ``OUTAGE`` seconds later (30, or 5 with ``--quick``). Measured: the time from
  the recovery to the last cancel (the issue's bound: 45 s; the watchdog's
  rounds back off to at most 30 s apart), the rounds it ran, and its CPU share
  from its second round to the recovery (it must sleep between rounds, not spin).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import math
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, Final

import asyncstop

from .common import (
    ACCOUNT_ID,
    TOKEN,
    Figure,
    FigureSet,
    Settings,
    order_ids,
    rotate,
    run_in_loop,
)
from .responsiveness import _percentile, _ticker
from .servers import ServerProcess, ServerSpec, child_env, repo_root

__all__ = ["run"]

SCENARIO: Final = 6

LATENCY: Final = 0.020
CONCURRENCY: Final = 64
TICK: Final = 0.005
#: The watchdog's heartbeat settings in the bot-death case (detection of a
#: death does not depend on them: the pipe closes).
INTERVAL: Final = 0.5
TIMEOUT: Final = 3.0
TARGET_FIRST_DELETE_MS: Final = 100.0
TARGET_FIRE_LAG_P99_MS: Final = 1.0
TARGET_REGISTRY_P99_US: Final = 200.0
#: How long the idle loop is sampled (the floor: timer granularity and the machine's load).
IDLE_SECONDS: Final = 1.0
#: Seconds any one child may take (start, fire, exit).
CHILD_TIMEOUT: Final = 60.0
#: The outage case: stops, seconds of outage (full and quick), and the targets.
OUTAGE_ORDERS: Final = 1_000
OUTAGE: Final = 30.0
OUTAGE_QUICK: Final = 5.0
TARGET_RECOVERY_S: Final = 45.0
TARGET_IDLE_CPU_PCT: Final = 2.0
#: Seconds between two readings of the watchdog's CPU time in the outage.
_CPU_SAMPLE_EVERY: Final = 0.05

_BOT: Final = """
import asyncio, json, sys
import asyncstop

async def main():
    cfg = json.loads(sys.stdin.readline())
    registry = asyncstop.StopOrderRegistry.open(cfg["registry"])
    async with asyncstop.Watchdog(
        registry, base_url=cfg["base_url"], token=cfg["token"], account_id=cfg["account_id"],
        heartbeat_interval=cfg["interval"], heartbeat_timeout=cfg["timeout"],
        concurrency=cfg["concurrency"], max_concurrency=cfg["concurrency"], preflight=False,
    ) as watchdog:
        print(json.dumps({"watchdog": watchdog.pid}), flush=True)
        await asyncio.Event().wait()

asyncio.run(main())
"""


def _report_lines(registry: Path) -> list[dict[str, Any]]:
    """The lines of the watchdog's report file next to ``registry``."""
    lines = Path(f"{registry}.watchdog.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def _idle_share(samples: list[tuple[float, float]], lines: list[dict[str, Any]]) -> float:
    """CPU seconds per second inside the sleeps between rounds (from the report's round lines)."""
    cpu = wall = 0.0
    for line in lines:
        pause = line.get("next_round_in") if line.get("event") == "round" else None
        if not pause:
            continue
        # A margin each side: the round's last work and the next round's first.
        start = _wall(line["time"]) + _CPU_SAMPLE_EVERY
        end = start + pause - 2 * _CPU_SAMPLE_EVERY
        inside = [(t, c) for t, c in samples if start <= t <= end]
        if len(inside) >= 2:
            cpu += inside[-1][1] - inside[0][1]
            wall += inside[-1][0] - inside[0][0]
    return cpu / wall if wall else math.nan


def _wall(stamp: str) -> float:
    """Seconds since the epoch of an ISO 8601 time from the watchdog's report."""
    return dt.datetime.fromisoformat(stamp).timestamp()


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of process ``pid`` so far (Linux; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _wait_exit(pid: int, timeout: float) -> None:
    """Wait for process ``pid`` (not our child) to end."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        readable, _, _ = select.select([fd], [], [], timeout)
        if not readable:
            raise TimeoutError(f"process {pid} did not exit within {timeout:g} s")
    finally:
        os.close(fd)


@contextlib.contextmanager
def _registry_file(ids: list[str]) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="asyncstop-bench-") as directory:
        path = Path(directory) / "stops.db"
        with asyncstop.StopOrderRegistry.open(path) as registry:
            for order_id in ids:
                registry.add(order_id)
        yield path


def _all_cores(pid: int) -> None:
    """Let the watchdog run on any core: it is not the bot, and the bot's core is pinned."""
    if hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, range(os.cpu_count() or 1))


class _Watchdog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.figures = FigureSet(SCENARIO)
        self.death_n = 200 if settings.quick else 1_000
        self.lag_n = 2_000 if settings.quick else 10_000
        self.registry_n = 1_000 if settings.quick else 5_000

    # -- bot death ---------------------------------------------------------------------------

    def bot_death(self, server: ServerProcess, round_trip: float) -> None:
        ids = order_ids(self.death_n, "W6")
        server.reset()
        with _registry_file(ids) as path:
            bot = subprocess.Popen(
                [sys.executable, "-c", _BOT],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                env=child_env(),
                cwd=repo_root(),
            )
            watchdog_pid = 0
            try:
                assert bot.stdin is not None
                assert bot.stdout is not None
                config = {
                    "registry": str(path),
                    "base_url": server.base_url,
                    "token": TOKEN,
                    "account_id": ACCOUNT_ID,
                    "interval": INTERVAL,
                    "timeout": TIMEOUT,
                    "concurrency": CONCURRENCY,
                }
                bot.stdin.write(json.dumps(config).encode() + b"\n")
                bot.stdin.flush()
                readable, _, _ = select.select([bot.stdout], [], [], CHILD_TIMEOUT)
                if not readable:
                    raise TimeoutError("the bot's watchdog did not start")
                watchdog_pid = json.loads(bot.stdout.readline())["watchdog"]
                _all_cores(watchdog_pid)
                time.sleep(2 * INTERVAL)  # armed and beating, as in a running bot
                killed_at = time.monotonic()
                killed_wall = time.time()
                bot.send_signal(signal.SIGKILL)
                _wait_exit(watchdog_pid, CHILD_TIMEOUT)
            finally:
                if bot.poll() is None:
                    bot.kill()
                bot.wait()
                for stream in (bot.stdin, bot.stdout):
                    if stream is not None:
                        stream.close()
            lines = Path(f"{path}.watchdog.jsonl").read_text().splitlines()
            fired: dict[str, Any] = json.loads(lines[0])
            last: dict[str, Any] = json.loads(lines[-1])
        account = server.stats()["accounts"].get(ACCOUNT_ID, {})
        figures = self.figures
        case = f"N={self.death_n} C={CONCURRENCY} 20 ms"
        # The report's times are wall-clock (ISO 8601, to the millisecond).
        detected = _wall(fired["time"]) - killed_wall
        done = _wall(last["time"]) - killed_wall
        bound = math.ceil(self.death_n / CONCURRENCY) * round_trip + detected
        figures.add(case, "kill -> fired", "ms", detected * 1e3)
        figures.add(case, "kill -> first DELETE", "ms", (account["first"] - killed_at) * 1e3)
        figures.add(case, "kill -> all settled", "ms", done * 1e3)
        figures.add(
            case, "all settled / bound", "x", done / bound
        ).note = f"bound ceil(N/C) x {round_trip * 1e3:.1f} ms + detection"
        figures.add(case, "not cancelled", "orders", float(len(last["pending"])))

    # -- bot loop lag --------------------------------------------------------------------------

    async def sampled(self, work: Awaitable[object], case: str) -> None:
        lags: list[float] = []
        stop = asyncio.Event()
        ticker = asyncio.create_task(_ticker(lags, stop))
        await asyncio.sleep(0)
        try:
            await work
        finally:
            stop.set()
            await ticker
        figures = self.figures
        figures.add(case, "lag p50", "ms", _percentile(lags, 0.50) * 1e3)
        figures.add(
            case, "lag p99", "ms", _percentile(lags, 0.99) * 1e3
        ).note = f"{len(lags)} ticks, N={self.lag_n}"
        figures.add(case, "lag max", "ms", max(lags, default=math.nan) * 1e3)

    async def fire_lag(self, server: ServerProcess) -> None:
        ids = order_ids(self.lag_n, "F6")
        with _registry_file(ids) as path, asyncstop.StopOrderRegistry.open(path) as registry:
            async with asyncstop.Watchdog(
                registry,
                base_url=server.base_url,
                token=TOKEN,
                account_id=ACCOUNT_ID,
                concurrency=CONCURRENCY,
                max_concurrency=CONCURRENCY,
                deadline=None,
                preflight=False,
            ) as watchdog:
                assert watchdog.pid is not None
                _all_cores(watchdog.pid)
                await self.sampled(watchdog.fire(), "watchdog.fire()")

    async def trigger_lag(self, server: ServerProcess) -> None:
        registry = asyncstop.StopOrderRegistry(order_ids(self.lag_n, "T6"))
        async with asyncstop.AsyncStopClient(
            base_url=server.base_url,
            token=TOKEN,
            account_id=ACCOUNT_ID,
            max_concurrency=CONCURRENCY,
        ) as client:
            switch = asyncstop.KillSwitch(client, registry, concurrency=CONCURRENCY, deadline=None)
            await switch.arm()
            await self.sampled(switch.trigger(), "in-loop KillSwitch.trigger()")

    async def idle_lag(self, server: ServerProcess) -> None:
        await self.sampled(asyncio.sleep(IDLE_SECONDS), "idle loop")

    async def lag(self, server: ServerProcess) -> None:
        cases = [self.fire_lag, self.trigger_lag, self.idle_lag]
        await self.trigger_lag(server)  # untimed: the first run of a process is slower
        self.figures = FigureSet(SCENARIO)
        for run in range(self.settings.runs):
            for case in rotate(cases, run):
                await case(server)

    # -- registry latency ----------------------------------------------------------------------

    def registry_latency(self) -> None:
        ids = order_ids(self.registry_n, "R6")
        with tempfile.TemporaryDirectory(prefix="asyncstop-bench-") as directory:
            registries: dict[str, asyncstop.StopOrderRegistry] = {
                "registry NORMAL": asyncstop.StopOrderRegistry.open(Path(directory) / "n.db"),
                "registry FULL": asyncstop.StopOrderRegistry.open(
                    Path(directory) / "f.db", synchronous="FULL"
                ),
                "registry in memory": asyncstop.StopOrderRegistry(),
            }
            try:
                for case, registry in registries.items():
                    samples: list[float] = []
                    clock = time.perf_counter_ns
                    for order_id in ids:
                        started = clock()
                        registry.add(order_id)
                        registry.discard(order_id)
                        samples.append((clock() - started) / 1e3)
                    figures = self.figures
                    figures.add(case, "add+discard p50", "µs", _percentile(samples, 0.50))
                    figures.add(
                        case, "add+discard p99", "µs", _percentile(samples, 0.99)
                    ).note = f"{len(samples)} pairs"
                    figures.add(case, "add+discard max", "µs", max(samples))
            finally:
                for registry in registries.values():
                    registry.close()

    # -- outage recovery -----------------------------------------------------------------------

    async def outage(self) -> None:
        from asyncstop.testing import FakeExchange, Faults  # noqa: PLC0415 - the bench extra

        seconds = OUTAGE_QUICK if self.settings.quick else OUTAGE
        async with FakeExchange(tokens={TOKEN}, seed=6) as exchange:
            ids = exchange.add_stop_orders(OUTAGE_ORDERS, account_id=ACCOUNT_ID)
            with _registry_file(ids) as path:
                bot = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-c",
                    _BOT,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,  # the watchdog's round-by-round WARNINGs
                    env=child_env(),
                    cwd=repo_root(),
                )
                assert bot.stdin is not None
                assert bot.stdout is not None
                config = {
                    "registry": str(path),
                    "base_url": exchange.base_url,
                    "token": TOKEN,
                    "account_id": ACCOUNT_ID,
                    "interval": INTERVAL,
                    "timeout": TIMEOUT,
                    "concurrency": CONCURRENCY,
                }
                loop = asyncio.get_running_loop()
                try:
                    bot.stdin.write(json.dumps(config).encode() + b"\n")
                    async with asyncio.timeout(CHILD_TIMEOUT):
                        line = await bot.stdout.readline()
                    watchdog_pid = json.loads(line)["watchdog"]
                    exchange.faults = Faults(error_before=1.0)
                    killed_at = loop.time()
                    bot.kill()
                    await bot.wait()
                    samples: list[tuple[float, float]] = []  # (wall clock, CPU seconds)
                    while loop.time() < killed_at + seconds:
                        samples.append((time.time(), _cpu_seconds(watchdog_pid)))
                        await asyncio.sleep(_CPU_SAMPLE_EVERY)
                finally:
                    exchange.faults = Faults()
                    if bot.returncode is None:
                        bot.kill()
                        await bot.wait()
                recovered_at = loop.time()
                await asyncio.to_thread(_wait_exit, watchdog_pid, CHILD_TIMEOUT)
                rounds = _report_lines(path)
                last = rounds[-1]
            cancels = [e.done_time for e in exchange.requests("DELETE") if e.applied]
            live = len(exchange.open_stop_orders(ACCOUNT_ID))
        case = f"outage {seconds:g} s N={OUTAGE_ORDERS}"
        figures = self.figures
        figures.add(
            case, "recovery -> last cancel", "s", max(cancels, default=math.nan) - recovered_at
        ).note = "rounds back off with jitter to at most 30 s apart"
        figures.add(case, "rounds", "rounds", float(last.get("rounds", 0)))
        total = (samples[-1][1] - samples[0][1]) / (samples[-1][0] - samples[0][0])
        figures.add(
            case, "watchdog CPU in the outage", "%", total * 100
        ).note = f"rounds included: {OUTAGE_ORDERS:,} orders x 4 attempts each"
        figures.add(
            case, "watchdog CPU between rounds", "%", _idle_share(samples, rounds) * 100
        ).note = "while it sleeps out the backoff: it must not spin"
        figures.add(case, "not cancelled", "orders", float(live))

    def check_targets(self) -> None:
        for figure in self.figures:
            if figure.metric == "kill -> first DELETE":
                figure.check(
                    f"<= {TARGET_FIRST_DELETE_MS:g} ms", lambda v: v <= TARGET_FIRST_DELETE_MS
                )
            elif figure.metric == "recovery -> last cancel":
                figure.check(f"<= {TARGET_RECOVERY_S:g} s", lambda v: v <= TARGET_RECOVERY_S)
            elif figure.metric == "watchdog CPU between rounds":
                figure.check(f"<= {TARGET_IDLE_CPU_PCT:g} %", lambda v: v <= TARGET_IDLE_CPU_PCT)
            elif figure.metric == "not cancelled":
                figure.check("0 in every run", lambda v: v == 0, on_max=True)
            elif figure.case == "watchdog.fire()" and figure.metric == "lag p99":
                figure.check(
                    f"<= {TARGET_FIRE_LAG_P99_MS:g} ms", lambda v: v <= TARGET_FIRE_LAG_P99_MS
                )
            elif figure.case == "registry NORMAL" and figure.metric == "add+discard p99":
                figure.check(
                    f"<= {TARGET_REGISTRY_P99_US:g} µs", lambda v: v <= TARGET_REGISTRY_P99_US
                )


async def _round_trip(server: ServerProcess) -> float:
    """The median of 15 sequential cancels on one warm connection: 20 ms plus both ends' work."""
    async with asyncstop.AsyncStopClient(
        base_url=server.base_url, token=TOKEN, account_id=ACCOUNT_ID, max_concurrency=1
    ) as client:
        await client.cancel_stop_order("01K2MNGAWPMQJ7WARMUP0000000")
        samples = []
        for n in range(15):
            started = time.perf_counter()
            await client.cancel_stop_order(f"01K2MNGAWPMQJ7RTT{n:09d}")
            samples.append(time.perf_counter() - started)
    return sorted(samples)[len(samples) // 2]


def run(settings: Settings) -> list[Figure]:
    """Run scenario 6 and return its figures."""
    scenario = _Watchdog(settings)
    with ServerProcess(ServerSpec(), core=settings.server_core) as fast:
        run_in_loop(None, lambda: scenario.lag(fast))
    # A rate limit no client reaches: the server then records each account's
    # first and last DELETE arrival (time.monotonic(), one clock for the host).
    slow = ServerSpec(latency=LATENCY, uvloop=False, rate_limit=1e9, burst=1e9)
    with ServerProcess(slow, core=settings.server_core) as server:
        round_trip = run_in_loop(None, lambda: _round_trip(server))
        for _ in range(settings.runs):
            scenario.bot_death(server, round_trip)
    for _ in range(settings.runs):
        scenario.registry_latency()
    for _ in range(settings.runs):
        run_in_loop(None, scenario.outage)
    scenario.check_targets()
    return scenario.figures.as_list()
