"""The contract: the client against a Prism mock built from ../shared/api/openapi.yaml.

Prism is a second, independent reading of the API documentation: it catches
what our own fake exchange would agree with us about. It is installed by
``npm ci`` (package.json pins @stoplight/prism-cli 5.14.2, the newest release
that runs on Node 20). Without it the tests skip locally, and fail under CI.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import aiohttp
import pytest

import asyncstop

pytestmark = pytest.mark.prism

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT.parent / "shared" / "api" / "openapi.yaml"
PRISM = Path(os.environ.get("ASYNCSTOP_PRISM", ROOT / "node_modules" / ".bin" / "prism"))
ORDER_ID = "01K2MNGAWPMQJ7WGATFSCAS1G4"
VIOLATION = re.compile(r"Violation|✖")


def _missing() -> str | None:
    if not SPEC.is_file():
        return f"the API contract {SPEC} is missing"
    if not PRISM.exists() or shutil.which("node") is None:
        return f"Prism is not installed at {PRISM} (run `npm ci`)"
    return None


@dataclass
class Prism:
    base_url: str
    process: asyncio.subprocess.Process
    output: list[str] = field(default_factory=list)

    async def log_since(self, mark: int) -> str:
        await asyncio.sleep(0.3)  # let Prism flush the lines of the last request
        return "".join(self.output[mark:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def prism() -> AsyncIterator[Prism]:
    """A Prism mock of the contract on a free loopback port."""
    reason = _missing()
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
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    server = Prism(f"http://127.0.0.1:{port}", process)

    async def pump() -> None:
        assert process.stdout is not None
        async for line in process.stdout:
            server.output.append(line.decode(errors="replace"))

    reader = asyncio.create_task(pump())
    try:
        async with asyncio.timeout(30):
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    if process.returncode is not None:
                        pytest.fail("Prism exited:\n" + "".join(server.output))
                    await asyncio.sleep(0.1)
                    continue
                writer.close()
                await writer.wait_closed()
                break
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


async def test_the_request_satisfies_the_contract_and_the_example_decodes(prism: Prism) -> None:
    """Prism finds no violation in our request, and its example decodes to the documented values."""
    mark = len(prism.output)
    async with asyncstop.AsyncStopClient(
        base_url=prism.base_url, token="x.y.z", account_id="685a7eaa360f9e7416221a61"
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


async def test_a_request_without_account_id_is_a_violation(prism: Prism) -> None:
    """Control: Prism does flag a request that breaks the contract, so the test above can fail."""
    async with (
        aiohttp.ClientSession() as session,
        session.delete(
            f"{prism.base_url}/frontoffice/api/v3/stop-orders/{ORDER_ID}",
            headers={"Authorization": "Bearer x.y.z"},
        ) as resp,
    ):
        assert resp.status == 422


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
