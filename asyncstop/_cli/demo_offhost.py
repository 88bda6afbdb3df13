"""Part 3 of ``asyncstop demo``: a machine dies; the off-host service cancels its bot's stops.

It starts a temporary PostgreSQL from this machine's binaries (skipped, with
one line saying why, when there are none or asyncpg is missing), the service
``asyncstop watchdog --store`` in its own process (its token from a
``--token-command``), and a bot (:mod:`.offhost_bot`) that registers its stops
in a :class:`asyncstop.PostgresRegistry` under a lease. Killing the bot's
whole process group with SIGKILL is what the death of its machine looks like
from the database: the renewals stop. The service claims the owner once the
lease expires by the database's clock and cancels every stop; the demo judges
it by the exchange's own count and shows the fire the service recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._postgres._db import INSTALL_HINT
from .._postgres._tempserver import TemporaryPostgres, unavailable_reason
from .common import PROG
from .offhost_bot import OffHostBotConfig, OwnerOrders
from .output import Output

if TYPE_CHECKING:
    from asyncstop.testing import FakeExchange

__all__ = ["OFFHOST_ORDERS", "run_offhost_part"]

#: Stop orders the bot holds when its machine dies.
OFFHOST_ORDERS: Final = 200
#: The bot's account, its own so that the exchange's count is the bot's alone.
_ACCOUNT: Final = "demo-offhost"
_OWNER: Final = "demo-bot-eu-1"
#: The service's name in its claims, and its log's (``demo-service.log``).
_SERVICE: Final = "demo-service"
#: The lease's ttl: the time the service waits before it may fire.
LEASE_TTL: Final = 2.0
_READY_TIMEOUT: Final = 30.0
_SETTLE_TIMEOUT: Final = 15.0
_EXIT_GRACE: Final = 5.0
_LOG_LINES: Final = 40
_MS: Final = 1000


def _say(out: Output, text: str = "") -> None:
    out.run(lambda stream: print(text, file=stream))


def skip_reason() -> str | None:
    """Why part 3 cannot run here, in one line; None when it can."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    try:
        import asyncpg  # noqa: F401, PLC0415 - the optional extra
    except ImportError:
        return f"asyncpg is not installed ({INSTALL_HINT})"
    return None


async def run_offhost_part(
    exchange: FakeExchange, out: Output, *, token: str, verbose: int
) -> bool | None:
    """Run part 3; True when no stop of the bot is left live, None when skipped."""
    _say(out)
    reason = skip_reason()
    if reason is not None:
        _say(
            out,
            f"Part 3 (a machine dies, an off-host service cancels its stops): skipped: {reason}",
        )
        return None
    _say(
        out,
        f"Part 3: the bot's machine dies (its process group SIGKILLed) with {OFFHOST_ORDERS} live "
        "stops; an off-host service (another process here) cancels them",
    )
    order_ids = exchange.add_stop_orders(OFFHOST_ORDERS, account_id=_ACCOUNT)
    with tempfile.TemporaryDirectory(prefix="asyncstop-demo3-") as directory:
        folder = Path(directory)
        try:
            server = await asyncio.to_thread(_start_server)
        except (RuntimeError, OSError) as err:
            _say(out, f"  skipped: a temporary PostgreSQL would not start: {err}")
            return None
        try:
            ok = await _machine_dies(
                exchange, out, server=server, folder=folder, token=token, order_ids=order_ids
            )
        finally:
            await asyncio.to_thread(server.close)
        if not ok or verbose:
            _show_logs(folder, failed=not ok)
    return ok


def _start_server() -> TemporaryPostgres:
    server = TemporaryPostgres()
    try:
        return server.start()
    except BaseException:
        server.close()
        raise


async def _machine_dies(
    exchange: FakeExchange,
    out: Output,
    *,
    server: TemporaryPostgres,
    folder: Path,
    token: str,
    order_ids: list[str],
) -> bool:
    from asyncstop.testing import wait_until, watchdog_service  # noqa: PLC0415 - the demo's

    dsn = server.dsn()
    _say(out, f"  database  a temporary PostgreSQL on 127.0.0.1:{server.port}")
    async with contextlib.AsyncExitStack() as stack:
        try:
            service = await stack.enter_async_context(
                watchdog_service(
                    dsn,
                    exchange.base_url,
                    token=token,
                    folder=folder,
                    account_id=_ACCOUNT,
                    name=_SERVICE,
                    options=["--round-deadline", "4", "--give-up-after", str(_SETTLE_TIMEOUT)],
                    ready_timeout=_READY_TIMEOUT,
                    stop_timeout=_EXIT_GRACE,
                    check=False,
                )
            )
        except AssertionError:  # it exited, or did not watch in time
            _say(out, "  the service did not start; its log follows")
            return False
        bot = await stack.enter_async_context(_bot(dsn, order_ids, folder))
        if bot is None:
            _say(out, "  the bot did not start; its log follows")
            return False
        _say(
            out,
            f"  bot       pid {bot.pid} registered {len(order_ids)} stops of account {_ACCOUNT} "
            f"as owner {_OWNER!r}, under a lease renewed every {LEASE_TTL / 3:.2g} s "
            f"(ttl {LEASE_TTL:g} s, judged by the database's clock)",
        )
        _say(
            out,
            f"  service   pid {service.process.pid}: asyncstop watchdog, its DSN from "
            "ASYNCSTOP_STORE and its token from --token-command; claims an owner whose lease "
            "expired (FOR UPDATE SKIP LOCKED)",
        )
        before = len(exchange.open_stop_orders(_ACCOUNT))
        _say(out, f"  live stops before the machine dies: {before} (exchange's count)")
        killed_at = asyncio.get_running_loop().time()  # the journal's clock
        with contextlib.suppress(ProcessLookupError):
            os.killpg(bot.pid, signal.SIGKILL)
        await bot.wait()
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: not exchange.open_stop_orders(_ACCOUNT), _SETTLE_TIMEOUT)
        deletes = [e for e in exchange.journal if e.method == "DELETE" and e.account_id == _ACCOUNT]
        _say(out, _timing_line(deletes, killed_at))
        with contextlib.suppress(AssertionError):
            await wait_until(lambda: "fired for owner" in service.log_text(), 5)
        record = await _fire_record(dsn)
        _say(out, _record_line(record, len(deletes)))
        after = len(exchange.open_stop_orders(_ACCOUNT))
        _say(out, f"  live stops after: {after} (exchange's count)")
        return after == 0


def _timing_line(deletes: list[Any], killed_at: float) -> str:
    def ms(at: float) -> str:
        return f"+{(at - killed_at) * _MS:.0f} ms"

    if not deletes:
        return "  machine died at +0 ms; no DELETE reached the exchange"
    text = (
        f"  machine died at +0 ms; first DELETE at {ms(min(e.time for e in deletes))} "
        f"(not before 2/3 of the ttl: the lease was still valid until then)"
    )
    cancels = [e.done_time for e in deletes if e.applied]
    if cancels:
        text += f"; last cancel at {ms(max(cancels))}"
    return text


async def _fire_record(dsn: str) -> dict[str, Any] | None:
    import asyncpg  # noqa: PLC0415 - the optional extra, present once the part runs

    with contextlib.suppress(OSError, asyncpg.PostgresError, TimeoutError):
        for _ in range(50):
            conn = await asyncpg.connect(dsn, timeout=5)
            try:
                value = await conn.fetchval(
                    "SELECT record FROM asyncstop_fires WHERE owner = $1 AND record IS NOT NULL "
                    "ORDER BY id DESC LIMIT 1",
                    _OWNER,
                )
            finally:
                await conn.close()
            if value is not None:
                record: dict[str, Any] = json.loads(value)
                return record
            await asyncio.sleep(0.1)
    return None


def _record_line(record: dict[str, Any] | None, requests: int) -> str:
    if record is None:
        return "  service   recorded no fire in the database"
    counts: dict[str, int] = record.get("counts", {})
    tally = ", ".join(f"{n} {outcome}" for outcome, n in counts.items() if n) or "nothing"
    return (
        f"  service   its record in asyncstop_fires: owner {record.get('owner')!r}: {tally}; "
        f"{record.get('pending_count', 0)} may still be live, in {record.get('rounds')} round(s) "
        f"({requests} DELETEs, retries included)"
    )


@contextlib.asynccontextmanager
async def _bot(
    dsn: str, order_ids: list[str], folder: Path
) -> AsyncIterator[asyncio.subprocess.Process | None]:
    """The bot in its own session (its process group is the machine that dies)."""
    config = OffHostBotConfig(
        dsn=dsn,
        ttl=LEASE_TTL,
        owners=[OwnerOrders(owner=_OWNER, orders=[(_ACCOUNT, oid, False) for oid in order_ids])],
    )
    with (folder / "bot.log").open("wb") as log_file:
        bot = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop._cli.offhost_bot",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
    assert bot.stdin is not None
    assert bot.stdout is not None
    try:
        bot.stdin.write(msgspec.json.encode(config) + b"\n")
        await bot.stdin.drain()
        ready = False
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(_READY_TIMEOUT):
                while line := await bot.stdout.readline():
                    if json.loads(line).get("event") == "ready":
                        ready = True
                        break
        yield bot if ready else None
    finally:
        if bot.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(bot.pid, signal.SIGKILL)
            await bot.wait()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _show_logs(folder: Path, *, failed: bool) -> None:
    why = "what went wrong may be here" if failed else "-v"
    for name in ("bot.log", f"{_SERVICE}.log"):
        lines = _read(folder / name).splitlines()
        if not lines:
            continue
        print(f"{PROG} demo: part 3's {name} ({why}):", file=sys.stderr)
        for line in lines[-_LOG_LINES:]:
            print(f"  {line}", file=sys.stderr)
