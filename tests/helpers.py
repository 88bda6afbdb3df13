"""What several test modules share: the fake credentials, the documented reply, and checks.

Fixtures live in ``conftest.py``; everything a test imports lives here.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

import aiohttp

import asyncstop
from asyncstop.testing import FakeExchange, JournalEntry

#: Recognisable, so that a leak is easy to find in any text.
TOKEN = "SECRET-TOKEN-3f9a1c"
ACCOUNT = "acc-1"
#: How long after a 429 a request may still arrive at the fake exchange without
#: counting as sent inside the pause: the client may have sent it before it could
#: read the 429, and a stall of this shared process delays its arrival. Tests that
#: judge pauses at the exchange ask for a Retry-After of at least 0.25 s, so the
#: rest of the window still catches a client that ignores pauses. ClientTimeline
#: judges them on the client's own clock and needs no grace.
PAUSE_GRACE = 0.1
#: Seconds a test waits for a condition with ``asyncstop.testing.wait_until``: generous
#: for a loaded 2-core machine, yet far inside pytest's 60 s, so the failure names the condition.
WAIT_LIMIT = 10.0

#: The 200 example of the Cancel Stop order documentation (api/openapi.yaml), verbatim.
DOC_EXAMPLE = (
    b'{"order": {"marketId": "perp.btc_usdt", "marketDisplayName": "Perpetual BTC/USDT", '
    b'"orderId": "01K2MNGAWPMQJ7WGATFSCAS1G4", "orderType": "Limit", "side": "Sell", '
    b'"requestedPrice": "115100", "activationPrice": "115000", "requestedAmount": "1", '
    b'"timeInForce": "Gtc", "status": "Rejected", "createdAt": "2025-08-14T16:09:44.5986099Z", '
    b'"updatedAt": "2025-08-14T16:09:44.5986103Z", "cancellationDate": null}}'
)


#: The documented paths, as the fake exchange serves them.
STOP_ORDERS_PATH = "/frontoffice/api/v3/stop-orders/"
ACCOUNTS_PATH = "/frontoffice/api/v3/accounts"
#: The fields of the documented ``order`` object of a Cancel Stop order reply, in order.
DOCUMENTED_FIELDS = [
    "marketId",
    "marketDisplayName",
    "orderId",
    "orderType",
    "side",
    "requestedPrice",
    "activationPrice",
    "requestedAmount",
    "timeInForce",
    "status",
    "createdAt",
    "updatedAt",
    "cancellationDate",
]
#: The documented 404 body of Cancel Stop order.
NOT_FOUND_BODY = {
    "errorCode": 10002,
    "message": "Object not found",
    "errors": [{"key": "orderId", "code": "not_found", "message": "Stop order not found"}],
}
#: What a raw aiohttp client raises when the fake exchange drops its connection.
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)


class ClientFactory(Protocol):
    """The ``make_client`` fixture: opens a client; keyword arguments override the defaults."""

    async def __call__(self, **overrides: Any) -> asyncstop.AsyncStopClient: ...


_PACKAGE = Path(asyncstop.__file__).parent
_TESTING = _PACKAGE / "testing"


def client_tasks() -> list[asyncio.Task[object]]:
    """Tasks on this loop running asyncstop's client code (the fake exchange's are left out)."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        filename = Path(code.co_filename) if code is not None else None
        if (
            filename is not None
            and filename.is_relative_to(_PACKAGE)
            and not filename.is_relative_to(_TESTING)
        ):
            found.append(task)
    return found


def order_ids(entries: Iterable[JournalEntry]) -> list[str]:
    """The order id of each journaled request, in order; each request must name one."""
    ids: list[str] = []
    for entry in entries:
        assert entry.order_id is not None, entry
        ids.append(entry.order_id)
    return ids


def requests_per_order(exchange: FakeExchange) -> Counter[str | None]:
    """How many DELETE requests the exchange received for each order id."""
    return Counter(entry.order_id for entry in exchange.requests("DELETE"))


def check_report_against_exchange(
    report: asyncstop.CancelReport,
    items: list[tuple[str, str]],
    exchange: FakeExchange,
    *,
    exact_attempts: bool = True,
) -> None:
    """The invariants every run must satisfy, read from the exchange's state and journal.

    ``exact_attempts=False`` for attempt time limits short enough that a loaded
    machine may let the client give up on a request it sent before the exchange,
    on the same loop, got to read it: then only "no request the exchange saw
    went uncounted" holds.
    """
    # Every order reported once, in input order.
    assert [(r.account_id, r.order_id) for r in report.results] == items
    live = exchange.open_stop_orders()
    for result in report.results:
        if result.ok:
            # No order reported gone (cancelled, already gone, not found) is still live.
            assert result.order_id not in live, result
        if result.order_id in live:
            # No order still live is reported as a success.
            assert not result.ok, result
        if result.outcome is asyncstop.CancelOutcome.FAILED:
            # No failed result for an order the exchange shows as cancelled.
            assert result.order_id in live, result
        if result.outcome is asyncstop.CancelOutcome.NOT_SENT:
            assert result.attempts == 0
            assert result.order_id in live
    sent = requests_per_order(exchange)
    for result in report.results:
        if exact_attempts:
            assert result.attempts == sent[result.order_id], result
        else:
            assert result.attempts >= sent[result.order_id], result


class ClientTimeline:
    """When the client started each request and read each 429, on the client's own clock.

    A request the client starts after reading a 429 (its headers) and before
    that 429's Retry-After has passed ignored the pause. Both times are taken in
    the client's own tasks, in the order its code runs, so a stall of the test
    process moves them together and cannot fake a violation, as it can between
    a request's sending and its arrival at the exchange. Pass ``timeline.trace``
    to the ``aiohttp.ClientSession`` given to the client.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []
        #: (when the client read the 429, its Retry-After in seconds)
        self.pauses: list[tuple[float, float]] = []
        self.trace = aiohttp.TraceConfig()
        self.trace.on_request_start.append(self._started)
        self.trace.on_request_end.append(self._ended)

    async def _started(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestStartParams,
    ) -> None:
        self.starts.append(asyncio.get_running_loop().time())

    async def _ended(
        self,
        session: aiohttp.ClientSession,
        context: SimpleNamespace,
        params: aiohttp.TraceRequestEndParams,
    ) -> None:
        if params.response.status == 429:
            retry_after = float(params.response.headers["Retry-After"])
            self.pauses.append((asyncio.get_running_loop().time(), retry_after))

    def starts_inside_pauses(self) -> list[float]:
        """The request starts that fell inside a pause the client had already read."""
        return [
            start
            for start in self.starts
            if any(read < start < read + seconds for read, seconds in self.pauses)
        ]


# -- a raw HTTP client of the fake exchange (no asyncstop client code in between) -----------


def documented_headers(account_id: str | None = ACCOUNT, token: str = TOKEN) -> dict[str, str]:
    """The request headers of the documented example; ``account_id=None`` leaves accountId out."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json; x-api-version=4.0",
        "Accept": "*/*",
    }
    if account_id is not None:
        headers["accountId"] = account_id
    return headers


async def raw_delete(
    session: aiohttp.ClientSession,
    exchange: FakeExchange,
    order_id: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], bytes]:
    """Send one documented cancel with ``session``; return (status, response headers, body)."""
    async with session.delete(
        exchange.base_url + STOP_ORDERS_PATH + order_id,
        headers=documented_headers() if headers is None else headers,
        **kwargs,
    ) as response:
        return response.status, dict(response.headers), await response.read()


async def raw_get_accounts(
    session: aiohttp.ClientSession, exchange: FakeExchange, token: str = TOKEN
) -> tuple[int, Any]:
    """GET /frontoffice/api/v3/accounts as documented; return (status, decoded body)."""
    async with session.get(
        exchange.base_url + ACCOUNTS_PATH,
        headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
    ) as response:
        return response.status, await response.json(content_type=None)


def read_report(path: Path) -> list[dict[str, Any]]:
    """The lines of a watchdog's report file (``<registry>.watchdog.jsonl``), decoded."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- a bot process with a watchdog (the watchdog tests) -----------------------------------------

#: The watchdog tests' heartbeat: short, so that the tests are quick; the timeout
#: 10x the interval, so that a loaded machine does not miss a heartbeat by accident.
HEARTBEAT_INTERVAL = 0.1
HEARTBEAT_TIMEOUT = 1.0


def watchdog_settings(exchange: FakeExchange, **overrides: Any) -> dict[str, Any]:
    """A Watchdog's keyword arguments against ``exchange``, with the short heartbeat."""
    settings: dict[str, Any] = {
        "base_url": exchange.base_url,
        "token": TOKEN,
        "account_id": ACCOUNT,
        "heartbeat_interval": HEARTBEAT_INTERVAL,
        "heartbeat_timeout": HEARTBEAT_TIMEOUT,
        "deadline": 10.0,
    }
    settings.update(overrides)
    return settings


#: A bot: reads its settings line, arms a Watchdog with ``settings["watchdog"]``,
#: registers ``settings["add"]`` ([order_id, protective] pairs), prints a ready line
#: (or the WatchdogError that refused it) and waits to be killed.
WATCHDOG_BOT = """
import asyncio, json, sys
import asyncstop

async def main():
    cfg = json.loads(sys.stdin.readline())
    registry = asyncstop.StopOrderRegistry.open(cfg["registry"])
    try:
        async with asyncstop.Watchdog(registry, **cfg["watchdog"]) as watchdog:
            for order_id, protective in cfg["add"]:
                registry.add(order_id, protective=protective)
            ready = {"watchdog": watchdog.pid, "leftovers": watchdog.leftovers}
            print(json.dumps(ready), flush=True)
            await asyncio.Event().wait()
    except asyncstop.WatchdogError as err:
        print(json.dumps({"error": str(err)}), flush=True)

asyncio.run(main())
"""


async def read_description(stdout: asyncio.StreamReader) -> dict[str, str]:
    """The ``key: value`` lines a fake exchange command prints about itself, up to ``orders``."""
    description: dict[str, str] = {}
    while "orders" not in description:
        line = (await stdout.readline()).decode()
        assert line, "the fake exchange ended before describing itself"
        key, _, value = line.rstrip("\n").partition(": ")
        description[key] = value
    return description


async def process_exited(pid: int) -> None:
    """Return once process ``pid`` (not necessarily our child) has ended (Linux: a pidfd)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[None] = loop.create_future()
    loop.add_reader(fd, lambda: None if ended.done() else ended.set_result(None))
    try:
        await ended
    finally:
        loop.remove_reader(fd)
        os.close(fd)


class WatchdogBot:
    """A bot process started by :func:`start_watchdog_bot`: its process and its ready line."""

    def __init__(self, process: asyncio.subprocess.Process, ready: dict[str, Any]) -> None:
        self.process = process
        self.ready = ready
        self.watchdog_pid: int = ready.get("watchdog", 0)


async def start_watchdog_bot(
    registry: Path,
    watchdog: dict[str, Any],
    add: Sequence[tuple[str, bool]] = (),
    *,
    argv_prefix: tuple[str, ...] = (),
) -> WatchdogBot:
    """Start :data:`WATCHDOG_BOT` and return once it printed its ready (or error) line."""
    settings = {"registry": str(registry), "watchdog": watchdog, "add": list(add)}
    return await start_bot(WATCHDOG_BOT, settings, argv_prefix=argv_prefix)


async def start_bot(
    script: str, settings: dict[str, Any], *, argv_prefix: tuple[str, ...] = ()
) -> WatchdogBot:
    """Run the Python ``script`` with ``settings`` as its first stdin line; return at its first
    stdout line (its ready or error line; ``{"error": "no ready line"}`` if it printed none)."""
    bot = await asyncio.create_subprocess_exec(
        *argv_prefix,
        sys.executable,
        "-c",
        script,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert bot.stdin is not None
    assert bot.stdout is not None
    bot.stdin.write(json.dumps(settings).encode() + b"\n")
    try:
        async with asyncio.timeout(45):
            await bot.stdin.drain()
            line = await bot.stdout.readline()
    except BaseException:
        bot.kill()
        await bot.wait()
        raise
    return WatchdogBot(bot, json.loads(line) if line else {"error": "no ready line"})


async def kill_bot(bot: WatchdogBot) -> None:
    """SIGKILL the bot (its death) and return once its watchdog has ended (60 s at most)."""
    bot.process.kill()
    async with asyncio.timeout(60):
        await process_exited(bot.watchdog_pid)


async def stop_watchdog_bot(bot: WatchdogBot) -> None:
    """Kill the bot if it runs; wait for its watchdog to end (kill it after 60 s)."""
    if bot.process.returncode is None:
        bot.process.kill()
    await bot.process.wait()
    if bot.watchdog_pid:
        try:
            async with asyncio.timeout(60):
                await process_exited(bot.watchdog_pid)
        except TimeoutError:
            os.kill(bot.watchdog_pid, signal.SIGKILL)
            raise
