"""A refused token stops early, and attempts and not_sent count only what reached the exchange."""

from __future__ import annotations

import asyncio
import socket

import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

import asyncstop
from asyncstop import CancelOutcome
from asyncstop.testing import FakeExchange, Fault

from .helpers import ACCOUNT, TOKEN, ClientFactory


async def test_a_refused_static_token_costs_at_most_one_wave(exchange: FakeExchange) -> None:
    """A refused token: at most `concurrency` DELETEs go out, and the rest end not_sent."""
    ids = exchange.add_stop_orders(500, account_id=ACCOUNT)
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token="WRONG-TOKEN", account_id=ACCOUNT
    ) as client:
        report = await client.cancel_stop_orders(ids, concurrency=8)
    assert len(exchange.requests("DELETE")) <= 8
    counts = report.counts
    assert counts[CancelOutcome.FAILED] == len(exchange.requests("DELETE"))
    assert counts[CancelOutcome.NOT_SENT] == 500 - len(exchange.requests("DELETE"))
    for result in report.results:
        assert isinstance(result.error, asyncstop.AuthenticationError)
    assert exchange.open_stop_orders() == set(ids)


async def test_a_provider_is_asked_once_per_refresh_in_a_401_storm(exchange: FakeExchange) -> None:
    """1,000 orders meeting 401s with a fresh token each time: the provider is asked once."""
    ids = exchange.add_stop_orders(1000, account_id=ACCOUNT)
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return TOKEN

    exchange.inject(*[Fault.unauthorized()] * 16)
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=provider, account_id=ACCOUNT
    ) as client:
        report = await client.cancel_stop_orders(ids, concurrency=16)
    assert report.ok
    assert calls == 2  # once at open, once for the refresh


@pytest.mark.parametrize("failure", ["raises", "hangs", "unusable"])
async def test_a_failing_provider_stops_the_account_with_one_call(
    exchange: FakeExchange, failure: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A provider that raises, hangs or returns junk after a 401 is asked once; orders: not_sent."""
    ids = exchange.add_stop_orders(200, account_id=ACCOUNT)
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        if calls == 1:
            return TOKEN
        if failure == "raises":
            raise RuntimeError("vault unreachable")
        if failure == "hangs":
            await asyncio.Event().wait()
        return "Bearer not a token"

    exchange.inject(*[Fault.unauthorized()] * 4)
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=provider, account_id=ACCOUNT, timeout=0.5
    ) as client:
        report = await client.cancel_stop_orders(ids, concurrency=4)
    assert calls == 2
    assert len(exchange.requests("DELETE")) <= 4
    assert report.counts[CancelOutcome.NOT_SENT] == 200 - len(exchange.requests("DELETE"))
    assert all(isinstance(r.error, asyncstop.TokenProviderError) for r in report.results)
    provider_records = [r for r in caplog.records if "token provider" in r.getMessage()]
    assert len([r for r in provider_records if r.levelname == "ERROR"]) == 1


async def test_a_hanging_provider_at_open_is_bounded_by_the_timeout() -> None:
    """open() with a provider that never answers raises TokenProviderError within the timeout."""

    async def provider() -> str:
        await asyncio.Event().wait()
        return TOKEN

    client = asyncstop.AsyncStopClient(
        base_url="http://127.0.0.1:9", token=provider, account_id=ACCOUNT, timeout=0.2
    )
    with pytest.raises(asyncstop.TokenProviderError, match="did not answer"):
        await client.open()


async def test_a_refused_connection_sends_nothing_and_ends_not_sent() -> None:
    """Nobody listening: every order not_sent, attempts 0, the error says nothing was sent."""
    async with FakeExchange(tokens={TOKEN}) as gone:
        url = gone.base_url
    async with asyncstop.AsyncStopClient(
        base_url=url, token=TOKEN, account_id=ACCOUNT, max_retries=2
    ) as client:
        report = await client.cancel_stop_orders(["A", "B"])
    for result in report.results:
        assert result.outcome is CancelOutcome.NOT_SENT
        assert result.attempts == 0
        assert isinstance(result.error, asyncstop.APIConnectionError)
        assert result.error.request_sent is False


class ScriptedResolver(AbstractResolver):
    """Resolves every name to 127.0.0.1, after failing or hanging as scripted; no DNS query."""

    def __init__(self, script: list[str]) -> None:
        self.script = script
        self.calls = 0

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Follow the script, then answer 127.0.0.1."""
        step = self.script[self.calls] if self.calls < len(self.script) else "ok"
        self.calls += 1
        if step == "nxdomain":
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        if step == "hang":
            await asyncio.Event().wait()
        return [
            ResolveResult(
                hostname=host,
                host="127.0.0.1",
                port=port,
                family=socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
        ]

    async def close(self) -> None:
        """Nothing to release."""


@pytest.mark.parametrize("step", ["nxdomain", "hang"])
async def test_a_dns_failure_sends_nothing(exchange: FakeExchange, step: str) -> None:
    """An unresolvable or hanging name: not_sent, attempts 0, and the exchange saw nothing."""
    resolver = ScriptedResolver([step] * 10)
    async with asyncstop.AsyncStopClient(
        base_url=f"http://exchange.test:{exchange.port}",
        token=TOKEN,
        account_id=ACCOUNT,
        timeout=0.3,
        max_retries=1,
        resolver=resolver,
    ) as client:
        report = await client.cancel_stop_orders(["A"], deadline=2.0)
    (result,) = report.results
    assert result.outcome is CancelOutcome.NOT_SENT
    assert result.attempts == 0
    assert len(exchange.requests("DELETE")) == 0


async def test_a_404_after_a_request_that_never_left_is_not_found(exchange: FakeExchange) -> None:
    """A failed name lookup then a 404 is not_found: nothing of ours could have cancelled it."""
    resolver = ScriptedResolver(["nxdomain"])
    async with asyncstop.AsyncStopClient(
        base_url=f"http://exchange.test:{exchange.port}",
        token=TOKEN,
        account_id=ACCOUNT,
        resolver=resolver,
    ) as client:
        with pytest.raises(asyncstop.OrderNotFoundError) as caught:
            await client.cancel_stop_order("NO-SUCH-ORDER")
    assert caught.value.after_unknown_attempt is False
    assert len(exchange.requests("DELETE")) == 1


async def test_requests_waiting_for_a_pooled_connection_are_not_counted(
    make_client: ClientFactory,
    exchange: FakeExchange,
) -> None:
    """Two bulk calls on a pool of 2 with hung requests: orders that never left are not_sent."""
    ids = exchange.add_stop_orders(12, account_id=ACCOUNT)
    exchange.inject(*[Fault.hang()] * 12)
    client = await make_client(max_concurrency=2)
    first, second = await asyncio.gather(
        client.cancel_stop_orders(ids[:6], deadline=0.5),
        client.cancel_stop_orders(ids[6:], deadline=0.5),
    )
    results = first.results + second.results
    sent = {e.order_id for e in exchange.requests("DELETE")}
    for result in results:
        assert result.attempts == (1 if result.order_id in sent else 0)
        expected = CancelOutcome.UNKNOWN if result.order_id in sent else CancelOutcome.NOT_SENT
        assert result.outcome is expected
    assert len(sent) == 2


async def test_a_day_long_retry_after_pauses_the_account_only_up_to_the_cap(
    make_client: ClientFactory, exchange: FakeExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """Retry-After: 86400 pauses the account for max_retry_after, logged at WARNING."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    exchange.inject(Fault.error(429, retry_after="86400"))
    client = await make_client(max_retry_after=0.3)
    first = await client.cancel_stop_orders(ids[:1], deadline=1.0)
    second = await client.cancel_stop_orders(ids[1:], deadline=2.0)
    assert first.results[0].outcome is CancelOutcome.UNKNOWN
    assert [r.outcome for r in second.results] == [CancelOutcome.CANCELLED] * 2
    assert any(r.levelname == "WARNING" and "86400" in r.getMessage() for r in caplog.records)


async def test_hung_orders_do_not_hold_the_workers_from_fresh_ones(
    make_client: ClientFactory,
    exchange: FakeExchange,
) -> None:
    """8 hung orders ahead of 200 at concurrency 8: the 200 are all cancelled in time."""
    hung = exchange.add_stop_orders(8, account_id=ACCOUNT)
    fresh = exchange.add_stop_orders(200, account_id=ACCOUNT)
    for order_id in hung:
        exchange.inject_for(order_id, *[Fault.hang()] * 10)
    client = await make_client(timeout=1.0)
    report = await client.cancel_stop_orders(hung + fresh, concurrency=8, deadline=4.0)
    outcomes = {r.order_id: r.outcome for r in report.results}
    assert all(outcomes[o] is CancelOutcome.CANCELLED for o in fresh)
    assert all(outcomes[o] is CancelOutcome.UNKNOWN for o in hung)
