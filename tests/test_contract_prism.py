"""The contract: the client against a Prism mock built from the repo's own api/openapi.yaml.

Prism is a second, independent reading of the API documentation: it catches
what our own fake exchange would agree with us about. It is installed by
``npm ci`` (package.json pins @stoplight/prism-cli 5.14.2, the newest release
that runs on Node 20). Without it the Prism tests skip locally, and fail under CI.

``api/`` is the project's copy of the contract (the documentation pages and
``openapi.yaml``), so that a clone anywhere runs these tests. Where the
team's ``../shared/api`` sits beside the repo, a test checks the copy is
still the same.

Prism logs from a worker process, so a request's log lines can reach us after
its response does. Instead of sleeping, each test reads the log up to a marker
request sent after its own: Prism handles and logs requests one at a time, so
once the marker's line is there, every line of the requests before it is too.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

import asyncstop

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "api"
SPEC = API / "openapi.yaml"
SHARED_API = ROOT.parent / "shared" / "api"
PRISM = Path(os.environ.get("ASYNCSTOP_PRISM", ROOT / "node_modules" / ".bin" / "prism"))
ORDER_ID = "01K2MNGAWPMQJ7WGATFSCAS1G4"
HEDGING_ACCOUNT = "685a7eaa360f9e7416221a61"
NETTING_ACCOUNT = "6891e70db552ff9c6fbbccf5"
#: How Prism reports a broken contract: "✖ error ..." for a refused request,
#: "Violation: ..." for one it served anyway.
VIOLATION = re.compile(r"Violation|✖")
#: Generous: a loaded 2-core machine starts node slowly.
STARTUP_TIMEOUT = 30.0
LOG_TIMEOUT = 10.0
#: The path of the marker requests that delimit a test's log lines (see log_since).
MARK_PATH = "/asyncstop-log-mark/"


def on_prism(test: Callable[..., Coroutine[object, object, None]]) -> Any:
    """Mark a test as a Prism test on the module's loop, where the shared Prism lives.

    The Prism tests share one Prism process, because starting node and parsing the
    spec costs far more than the tests themselves; each reads only its own part of the log.
    """
    return pytest.mark.prism(pytest.mark.asyncio(loop_scope="module")(test))


def _missing_prism() -> str | None:
    if not PRISM.exists() or shutil.which("node") is None:
        return f"Prism is not installed at {PRISM} (run `npm ci`)"
    return None


@dataclass
class Prism:
    """A running Prism mock and everything it has logged so far."""

    base_url: str
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)
    exited: bool = False
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _marks: itertools.count[int] = field(default_factory=itertools.count)

    async def wait_for_line(self, pattern: re.Pattern[str] | str, start: int = 0) -> int:
        """Index of the first line from ``start`` matching ``pattern``; fails if Prism exits."""
        found: int | None = None

        def seen() -> bool:
            nonlocal found
            for index in range(start, len(self.output)):
                if re.search(pattern, self.output[index]):
                    found = index
                    return True
            return self.exited

        async with self.changed:
            await self.changed.wait_for(seen)
        if found is None:
            pytest.fail(f"Prism exited before logging {pattern!r}:\n" + "".join(self.output))
        return found

    def mark(self) -> int:
        """A position in the log: pass it to ``log_since`` after sending requests."""
        return len(self.output)

    async def log_since(self, mark: int) -> str:
        """Every line Prism logged for the requests sent since ``mark``, all of them."""
        path = f"{MARK_PATH}{next(self._marks)}"
        async with aiohttp.ClientSession() as session, session.get(self.base_url + path) as resp:
            await resp.read()
        async with asyncio.timeout(LOG_TIMEOUT):
            end = await self.wait_for_line(f"get {re.escape(path)} .*Request received", mark)
        # A marker's "no path matched" error line may come before or after its
        # "Request received": it is no line of the requests under test.
        return "".join(line for line in self.output[mark:end] if MARK_PATH not in line)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def prism() -> AsyncIterator[Prism]:
    """A Prism mock of api/openapi.yaml on a free loopback port, once it says it is listening."""
    reason = _missing_prism()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        str(PRISM),
        "mock",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        str(SPEC),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = Prism(f"http://127.0.0.1:{port}", process)

    async def pump() -> None:
        assert process.stdout is not None
        try:
            async for line in process.stdout:
                async with server.changed:
                    server.output.append(line.decode(errors="replace"))
                    server.changed.notify_all()
        finally:
            async with server.changed:
                server.exited = True
                server.changed.notify_all()

    reader = asyncio.create_task(pump())
    try:
        try:
            async with asyncio.timeout(STARTUP_TIMEOUT):
                await server.wait_for_line(re.escape(f"Prism is listening on {server.base_url}"))
        except TimeoutError:
            pytest.fail("Prism did not start listening:\n" + "".join(server.output))
        yield server
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


def test_the_repo_carries_the_contract_of_both_endpoints() -> None:
    """api/ documents both endpoints the client calls, so any clone runs the contract tests."""
    spec = SPEC.read_text(encoding="utf-8")
    assert "/frontoffice/api/v3/stop-orders/{orderId}:" in spec
    assert "/frontoffice/api/v3/accounts:" in spec
    assert (API / "cancel-stop-order.txt").is_file()
    assert (API / "get-accounts.txt").is_file()


@pytest.mark.skipif(
    not SHARED_API.is_dir(),
    reason="no team copy of the contract beside this checkout: api/ is the contract here",
)
def test_the_contract_copy_is_in_step_with_shared() -> None:
    """api/ holds exactly the files of the team's shared contract, byte for byte."""
    shared = {path.name: path.read_bytes() for path in SHARED_API.iterdir() if path.is_file()}
    ours = {path.name: path.read_bytes() for path in API.iterdir() if path.is_file()}
    assert sorted(ours) == sorted(shared), "api/ and ../shared/api list different files"
    differing = sorted(name for name in shared if ours[name] != shared[name])
    assert not differing, f"copy ../shared/api/ into api/ again: {differing} changed"


@on_prism
async def test_the_request_satisfies_the_contract_and_the_example_decodes(prism: Prism) -> None:
    """Prism finds no violation in our request, and its example decodes to the documented values."""
    mark = prism.mark()
    async with asyncstop.AsyncStopClient(
        base_url=prism.base_url, token="x.y.z", account_id=HEDGING_ACCOUNT
    ) as client:
        order = await client.cancel_stop_order(ORDER_ID)
    log = await prism.log_since(mark)
    assert f"delete /frontoffice/api/v3/stop-orders/{ORDER_ID}" in log, log
    assert "The request passed the validation rules" in log, log
    assert not VIOLATION.search(log), log
    assert order.order_id == ORDER_ID
    assert order.market_id == "perp.btc_usdt"
    assert order.market_display_name == "Perpetual BTC/USDT"
    assert order.requested_price == Decimal("115100")
    assert order.activation_price == Decimal("115000")
    assert order.requested_amount == Decimal("1")
    assert order.status == asyncstop.OrderStatus.REJECTED
    assert order.created_at == datetime(2025, 8, 14, 16, 9, 44, 598610, tzinfo=UTC)
    assert order.cancellation_date is None


@on_prism
@pytest.mark.parametrize(
    ("method", "path", "headers"),
    [
        pytest.param(
            "DELETE",
            f"/frontoffice/api/v3/stop-orders/{ORDER_ID}",
            {"Authorization": "Bearer x.y.z"},
            id="cancel-without-accountId",
        ),
        pytest.param(
            "GET", "/frontoffice/api/v3/accounts", {"accountId": "acc"}, id="accounts-without-token"
        ),
    ],
)
async def test_prism_flags_a_request_that_breaks_the_contract(
    prism: Prism, method: str, path: str, headers: dict[str, str]
) -> None:
    """Control: the log check that passes our requests fails on requests that break the contract."""
    mark = prism.mark()
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, prism.base_url + path, headers=headers) as resp,
    ):
        # 400 is the contract's own answer to a missing accountId; 422 is Prism's for a
        # request its validator refuses before picking a response.
        assert resp.status in {400, 401, 422}
    log = await prism.log_since(mark)
    assert f"{method.lower()} {path}" in log, log
    assert VIOLATION.search(log), log


@on_prism
@pytest.mark.parametrize(
    ("code", "error_class", "error_code"),
    [("404", asyncstop.OrderNotFoundError, 10002), ("401", asyncstop.AuthenticationError, 10005)],
)
async def test_the_assumed_error_bodies_decode(
    prism: Prism, code: str, error_class: type[asyncstop.APIStatusError], error_code: int
) -> None:
    """The spec's 404 and 401 examples map to their error classes with the errorCode decoded."""
    async with (
        aiohttp.ClientSession(headers={"Prefer": f"code={code}"}) as session,
        asyncstop.AsyncStopClient(
            base_url=prism.base_url, token="x.y.z", account_id="acc", session=session
        ) as client,
    ):
        with pytest.raises(error_class) as caught:
            await client.cancel_stop_order(ORDER_ID)
    assert caught.value.error_code == error_code


@on_prism
async def test_the_assumed_429_example_is_handled_as_a_rate_limit(prism: Prism) -> None:
    """Prism's 429 example (Prefer: code=429) reaches the caller as a RateLimitError, decoded."""
    mark = prism.mark()
    async with (
        aiohttp.ClientSession(headers={"Prefer": "code=429"}) as session,
        asyncstop.AsyncStopClient(
            base_url=prism.base_url,
            token="x.y.z",
            account_id=HEDGING_ACCOUNT,
            session=session,
            max_retries=0,
        ) as client,
    ):
        with pytest.raises(asyncstop.RateLimitError) as caught:
            await client.cancel_stop_order(ORDER_ID)
    assert caught.value.status_code == 429
    assert caught.value.error_code == 10029
    log = await prism.log_since(mark)
    assert caught.value.exchange_message == "Too many requests"
    assert log.count(f"delete /frontoffice/api/v3/stop-orders/{ORDER_ID}") == 1, log
    assert not VIOLATION.search(log), log


@on_prism
async def test_preflight_reads_the_documented_accounts(prism: Prism) -> None:
    """preflight() sends a GET Prism accepts and returns both example accounts, balances Decimal."""
    mark = prism.mark()
    async with asyncstop.AsyncStopClient(
        base_url=prism.base_url, token="x.y.z", account_id=HEDGING_ACCOUNT
    ) as client:
        accounts = await client.preflight()
    log = await prism.log_since(mark)
    assert "get /frontoffice/api/v3/accounts" in log, log
    assert "The request passed the validation rules" in log, log
    assert not VIOLATION.search(log), log
    assert all(isinstance(account, asyncstop.TradingAccount) for account in accounts)
    assert [
        (
            account.account_id,
            account.account_name,
            account.account_type,
            account.total_balance_in_rat,
            account.is_copy_trading_account,
        )
        for account in accounts
    ] == [
        (HEDGING_ACCOUNT, "B2TRADER Hedging account", "Hedging", Decimal("6020.12"), False),
        (NETTING_ACCOUNT, "B2TRADER Netting account", "Netting", Decimal("10987.39"), False),
    ]
    assert all(type(account.total_balance_in_rat) is Decimal for account in accounts)


@on_prism
async def test_preflight_refuses_an_account_the_token_does_not_have(prism: Prism) -> None:
    """preflight() raises AccountNotFoundError naming an account id the token does not list."""
    async with asyncstop.AsyncStopClient(
        base_url=prism.base_url, token="x.y.z", account_id="not-one-of-mine"
    ) as client:
        with pytest.raises(asyncstop.AccountNotFoundError) as caught:
            await client.preflight()
    assert caught.value.account_id == "not-one-of-mine"
