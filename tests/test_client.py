"""The single cancel: the request on the wire, errors, retries, tokens and the client's lifetime."""

from __future__ import annotations

import asyncio
import logging
import socket
from datetime import UTC, datetime
from decimal import Decimal

import aiohttp
import pytest

import asyncstop
from asyncstop.testing import FakeExchange, Fault

from .helpers import ACCOUNT, DOC_EXAMPLE, TOKEN, ClientFactory


async def test_sends_exactly_the_documented_request(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """The client sends DELETE on the documented path with the documented four headers."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    order = await client.cancel_stop_order(order_id)
    assert order.order_id == order_id
    [entry] = exchange.journal
    assert entry.method == "DELETE"
    assert entry.path == f"/frontoffice/api/v3/stop-orders/{order_id}"
    assert entry.account_id == ACCOUNT
    assert entry.authorized  # the fake accepts exactly "Bearer <token>"
    assert entry.headers["Content-Type"] == "application/json; x-api-version=4.0"
    assert entry.headers["Accept"] == "*/*"
    assert entry.headers["accountId"] == ACCOUNT
    assert entry.outcome == "cancelled"
    assert order_id not in exchange.open_stop_orders(ACCOUNT)


async def test_per_call_account_overrides_the_clients(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """account_id= on the call sends that account's header and cancels that account's order."""
    order_id = exchange.add_stop_order(account_id="other")
    await client.cancel_stop_order(order_id, account_id="other")
    assert exchange.journal[-1].account_id == "other"
    assert not exchange.open_stop_orders("other")


async def test_decodes_the_documented_example(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """The doc's example decodes: 7-digit timestamps, Decimals, nulls, snake_case names."""
    exchange.inject(Fault.reply(200, DOC_EXAMPLE))
    order = await client.cancel_stop_order("01K2MNGAWPMQJ7WGATFSCAS1G4")
    assert order.market_id == "perp.btc_usdt"
    assert order.market_display_name == "Perpetual BTC/USDT"
    assert order.order_type == "Limit"
    assert order.side == "Sell"
    assert order.requested_price == Decimal("115100")
    assert order.activation_price == Decimal("115000")
    assert order.requested_amount == Decimal("1")
    assert order.time_in_force == "Gtc"
    assert order.status == asyncstop.OrderStatus.REJECTED
    assert order.created_at == datetime(2025, 8, 14, 16, 9, 44, 598610, tzinfo=UTC)
    assert order.updated_at is not None
    assert order.updated_at.tzinfo is not None
    assert order.cancellation_date is None


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, asyncstop.BadRequestError),
        (401, asyncstop.AuthenticationError),
        (403, asyncstop.PermissionDeniedError),
        (404, asyncstop.OrderNotFoundError),
        (405, asyncstop.APIStatusError),
        (422, asyncstop.APIStatusError),
        (418, asyncstop.APIStatusError),
        (429, asyncstop.RateLimitError),
        (500, asyncstop.ServerError),
        (503, asyncstop.ServerError),
        (504, asyncstop.ServerError),
    ],
)
async def test_each_status_raises_its_error(
    exchange: FakeExchange,
    make_client: ClientFactory,
    status: int,
    error_class: type[asyncstop.APIStatusError],
) -> None:
    """Each error status maps to its class, with the exchange's errorCode and message decoded."""
    body = b'{"errorCode": 12345, "message": "exchange says no", "errors": [{"key": "k"}]}'
    exchange.inject(Fault.error(status, body=body))
    client = await make_client(max_retries=0)
    with pytest.raises(error_class) as caught:
        await client.cancel_stop_order("01K2MNGAWPMQJ7WGATFSCAS1G4")
    err = caught.value
    assert type(err) is error_class
    assert err.status_code == status
    assert err.error_code == 12345
    assert "exchange says no" in str(err)
    assert err.errors == [{"key": "k"}]
    assert err.body == body
    assert err.order_id == "01K2MNGAWPMQJ7WGATFSCAS1G4"


@pytest.mark.parametrize(
    "body", [b"", b"<html>Bad Gateway</html>", b'{"detail": "nope"}', b"[1,2]"]
)
async def test_error_bodies_of_any_shape_give_a_clean_error(
    exchange: FakeExchange, make_client: ClientFactory, body: bytes
) -> None:
    """An empty, HTML or differently shaped error body still gives the status's error class."""
    exchange.inject(Fault.error(403, body=body))
    client = await make_client(max_retries=0)
    with pytest.raises(asyncstop.PermissionDeniedError) as caught:
        await client.cancel_stop_order("X1")
    assert caught.value.status_code == 403
    assert caught.value.error_code is None
    assert str(caught.value).startswith("HTTP 403")


@pytest.mark.parametrize(
    "order_id",
    [
        "",
        "a/b",
        "../x",
        "a?b=1",
        "a#b",
        "a%2Fb",
        "a b",
        "a\tb",
        "a\r\nX-Evil: 1",
        "\x00",
        ".",
        "..",
        "ü",
        "a\\b",
    ],
)
async def test_bad_order_ids_are_refused_before_sending(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, order_id: str
) -> None:
    """An id that would change the URL is refused with a ValueError and nothing is sent."""
    with pytest.raises(ValueError, match="order id"):
        await client.cancel_stop_order(order_id)
    assert exchange.journal == []


@pytest.mark.parametrize("order_id", [None, 5, b"abc"])
async def test_non_str_order_ids_are_refused(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, order_id: object
) -> None:
    """A non-str id is refused with a ValueError naming its type, and nothing is sent."""
    with pytest.raises(ValueError, match="must be a str"):
        await client.cancel_stop_order(order_id)  # type: ignore[arg-type]
    assert exchange.journal == []


@pytest.mark.parametrize("account_id", ["", " acc", "acc\r\nX-Evil: 1", "acc\n", "a\x00c", "a\x7f"])
async def test_header_injection_in_account_id_is_refused(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, account_id: str
) -> None:
    """An account id with CR/LF or control characters is refused before anything is sent."""
    with pytest.raises(ValueError, match="account id"):
        await client.cancel_stop_order("X1", account_id=account_id)
    with pytest.raises(ValueError, match="account id"):
        asyncstop.AsyncStopClient(base_url=exchange.base_url, token=TOKEN, account_id=account_id)
    assert exchange.journal == []


@pytest.mark.parametrize(
    "base_url",
    [
        "ftp://broker.example",
        "broker.example",
        "127.0.0.1:8080",
        "http://",
        "https://u:p@host",
        "https://host/?q=1",
        "https://ho st",
        "file:///etc/passwd",
    ],
)
def test_bad_base_urls_are_refused(base_url: str) -> None:
    """A base_url that is not a plain http(s) URL with a host is refused at construction."""
    with pytest.raises(ValueError, match="base_url"):
        asyncstop.AsyncStopClient(base_url=base_url, token=TOKEN, account_id=ACCOUNT)


@pytest.mark.parametrize("token", ["", "two words", "tok\r\nX-Evil: 1", "Bearer abc"])
def test_bad_tokens_are_refused_without_echoing_them(token: str) -> None:
    """A token that would break the Authorization header is refused; the message omits it."""
    with pytest.raises(ValueError, match="token") as caught:
        asyncstop.AsyncStopClient(base_url="https://broker.example", token=token)
    if token:
        assert token not in str(caught.value)


async def test_retries_503_then_succeeds(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """Two 503s then a 200: the call succeeds after exactly three requests."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject(Fault.error(503), Fault.error(503))
    order = await client.cancel_stop_order(order_id)
    assert order.order_id == order_id
    assert [e.status for e in exchange.journal] == [503, 503, 200]


async def test_retries_stop_after_max_retries(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """With max_retries=2, a server that keeps failing sees 3 requests; the last error is raised."""
    exchange.inject(*[Fault.error(502)] * 5)
    client = await make_client(max_retries=2)
    with pytest.raises(asyncstop.ServerError):
        await client.cancel_stop_order("X1")
    assert len(exchange.journal) == 3


@pytest.mark.parametrize("status", [400, 403, 404])
async def test_definitive_refusals_are_not_retried(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, status: int
) -> None:
    """400, 403 and 404 are final: exactly one request is sent."""
    exchange.inject(Fault.error(status))
    with pytest.raises(asyncstop.APIStatusError):
        await client.cancel_stop_order("X1")
    assert len(exchange.journal) == 1


async def test_max_retries_zero_disables_retries(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """max_retries=0 sends one request even for a retryable 503."""
    exchange.inject(Fault.error(503))
    client = await make_client(max_retries=0)
    with pytest.raises(asyncstop.ServerError):
        await client.cancel_stop_order("X1")
    assert len(exchange.journal) == 1


async def test_429_retry_after_is_honoured(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """After a 429 with Retry-After 0.3, the next request waits at least 0.3 s."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject(Fault.rate_limited(retry_after="0.3"))
    await client.cancel_stop_order(order_id)
    first, second = exchange.journal
    assert first.status == 429
    assert second.status == 200
    assert second.time - first.done_time >= 0.3 - 0.005


async def test_retry_after_beyond_the_cap_ends_the_retries(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A Retry-After longer than max_retry_after raises RateLimitError at once, with its value."""
    exchange.inject(Fault.rate_limited(retry_after="120"))
    client = await make_client(max_retry_after=5)
    with pytest.raises(asyncstop.RateLimitError) as caught:
        await client.cancel_stop_order("X1")
    assert caught.value.retry_after == 120
    assert len(exchange.journal) == 1


async def test_a_dropped_connection_after_the_cancel_is_one_request_and_reads_as_gone(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A drop after the cancel applied: the retry meets 404, flagged after_unknown_attempt."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject_for(order_id, Fault.drop(after=True))
    with pytest.raises(asyncstop.OrderNotFoundError) as caught:
        await client.cancel_stop_order(order_id)
    assert caught.value.after_unknown_attempt is True
    # aiohttp would silently re-send the DELETE once on its own; the client turns
    # that off, so the journal shows exactly the two requests the client made.
    assert [e.outcome for e in exchange.journal] == ["dropped_after", "not_found"]
    assert order_id not in exchange.open_stop_orders(ACCOUNT)


async def test_cancelling_twice_gives_order_not_found(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A second cancel of the same order raises OrderNotFoundError, not after an unknown attempt."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    await client.cancel_stop_order(order_id)
    with pytest.raises(asyncstop.OrderNotFoundError) as caught:
        await client.cancel_stop_order(order_id)
    assert caught.value.after_unknown_attempt is False
    assert caught.value.error_code == 10002


async def test_another_accounts_order_is_not_found(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """An order of another account is not cancelled through this account."""
    order_id = exchange.add_stop_order(account_id="acc-2")
    with pytest.raises(asyncstop.OrderNotFoundError):
        await client.cancel_stop_order(order_id)
    assert order_id in exchange.open_stop_orders("acc-2")


async def test_a_hanging_request_times_out(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A request with no answer raises APITimeoutError, which is also a TimeoutError."""
    exchange.inject(Fault.hang())
    client = await make_client(timeout=0.2, max_retries=0)
    with pytest.raises(asyncstop.APITimeoutError) as caught:
        await client.cancel_stop_order("X1")
    assert isinstance(caught.value, TimeoutError)
    assert isinstance(caught.value, asyncstop.APIConnectionError)


async def test_connection_refused_is_a_connection_error(make_client: ClientFactory) -> None:
    """A port where nothing listens gives APIConnectionError after the retries."""
    # Bound but not listening: connections are refused, and no other process can take the port.
    with socket.socket() as closed_port:
        closed_port.bind(("127.0.0.1", 0))
        port = closed_port.getsockname()[1]
        client = await make_client(base_url=f"http://127.0.0.1:{port}", max_retries=1)
        with pytest.raises(asyncstop.APIConnectionError):
            await client.cancel_stop_order("X1")


async def test_redirects_are_not_followed(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A 307 is refused as an error; the token never travels to the Location."""
    exchange.inject(Fault.redirect("http://127.0.0.1:9/steal"))
    with pytest.raises(asyncstop.APIStatusError) as caught:
        await client.cancel_stop_order("X1")
    assert caught.value.status_code == 307
    assert "redirect" in str(caught.value)
    assert len(exchange.journal) == 1


async def test_an_undecodable_2xx_raises_response_validation_error(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A 200 that is not the reply is retried, then raised with its body and Content-Type."""
    page = Fault.reply(200, b"<html>ok</html>", {"Content-Type": "text/html"}, apply=False)
    exchange.inject(*[page] * 4)
    with pytest.raises(asyncstop.ResponseValidationError) as caught:
        await client.cancel_stop_order("X1")
    assert caught.value.body == b"<html>ok</html>"
    assert caught.value.status_code == 200
    assert caught.value.content_type == "text/html"
    assert "text/html" in str(caught.value)
    assert len(exchange.journal) == 4  # the first attempt and max_retries=3 retries


async def test_an_unlisted_status_and_odd_fields_do_not_fail_a_confirmed_cancel(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """A 200 with a new status, an extra field and an odd timestamp still returns the order."""
    body = (
        b'{"order": {"orderId": "X1", "status": "PartiallyCancelled", "createdAt": "yesterday",'
        b' "activationPrice": 115000.5, "brandNewField": {"a": 1}}, "meta": 1}'
    )
    exchange.inject(Fault.reply(200, body))
    order = await client.cancel_stop_order("X1")
    assert order.order_id == "X1"
    assert order.status == "PartiallyCancelled"
    assert order.created_at is None
    assert str(order.activation_price) == "115000.5"


async def test_a_token_provider_is_asked_again_after_a_401(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """After a 401 the provider is called again and the request resent once with the new token."""
    tokens = iter(["old-token", "new-token"])
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return next(tokens)

    exchange.tokens.clear()
    exchange.tokens.add("new-token")
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    client = await make_client(token=provider)
    order = await client.cancel_stop_order(order_id)
    assert order.order_id == order_id
    assert calls == 2
    assert [e.status for e in exchange.journal] == [401, 200]


async def test_a_second_401_raises_authentication_error(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """If the fresh token is refused too, AuthenticationError is raised after two requests."""

    async def provider() -> str:
        return "never-valid"

    client = await make_client(token=provider)
    with pytest.raises(asyncstop.AuthenticationError):
        await client.cancel_stop_order("X1")
    assert [e.status for e in exchange.journal] == [401, 401]


async def test_a_static_token_401_is_not_retried(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """With a plain token there is nothing to refresh: one 401, one AuthenticationError."""
    exchange.tokens.clear()
    with pytest.raises(asyncstop.AuthenticationError):
        await client.cancel_stop_order("X1")
    assert len(exchange.journal) == 1


async def test_the_token_never_appears_in_reprs_errors_or_logs(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient, caplog: pytest.LogCaptureFixture
) -> None:
    """With DEBUG logging, retries, a 401 and errors, the token is in no text we produce."""
    caplog.set_level(logging.DEBUG, logger="asyncstop")
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject(Fault.error(503), Fault.drop(), Fault.rate_limited(retry_after="0.01"))
    texts: list[str] = [repr(client)]
    await client.cancel_stop_order(order_id)
    exchange.tokens.clear()
    for attempt in (order_id, "X2"):
        try:
            await client.cancel_stop_order(attempt)
        except asyncstop.AsyncStopError as err:
            texts += [str(err), repr(err), repr(vars(err))]
            cause = err.__cause__
            texts += [repr(cause), str(cause)]
    report = await client.cancel_stop_orders(["X3"])
    texts += [repr(report), repr(report.results)]
    texts += [r.getMessage() for r in caplog.records]
    texts.append(repr(exchange.journal))
    assert any("retrying" in t for t in texts)  # the logging did run
    for text in texts:
        assert TOKEN not in text


def test_the_redacting_filter_hides_bearer_tokens(caplog: pytest.LogCaptureFixture) -> None:
    """A log line carrying a header dict or a Bearer value is redacted on the asyncstop logger."""
    caplog.set_level(logging.DEBUG, logger="asyncstop")
    logging.getLogger("asyncstop").debug("headers: %s", {"Authorization": f"Bearer {TOKEN}"})
    logging.getLogger("asyncstop").debug("sent Bearer %s", TOKEN)
    assert caplog.records
    for record in caplog.records:
        assert TOKEN not in record.getMessage()


async def test_a_users_session_is_used_and_left_open(exchange: FakeExchange) -> None:
    """A session passed in is used for the requests and is still open after the client closes."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    async with aiohttp.ClientSession() as session:
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, session=session
        ) as client:
            await client.cancel_stop_order(order_id)
        assert not session.closed
        async with session.head(exchange.base_url + "/") as resp:
            assert resp.status == 200


async def test_lifetime_is_explicit(exchange: FakeExchange) -> None:
    """Calls before open and after close raise RuntimeError; close is idempotent; no reopening."""
    client = asyncstop.AsyncStopClient(base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT)
    with pytest.raises(RuntimeError, match="not open"):
        await client.cancel_stop_order("X1")
    async with client:
        pass
    await client.aclose()
    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        await client.cancel_stop_order("X1")
    with pytest.raises(RuntimeError, match="cannot be reopened"):
        async with client:
            pass
    assert exchange.journal == []


def test_construction_needs_no_event_loop() -> None:
    """A client is built in plain synchronous code, where no event loop is running."""
    client = asyncstop.AsyncStopClient(base_url="https://broker.example", token=TOKEN)
    assert "broker.example" in repr(client)
    assert TOKEN not in repr(client)
    assert not client.is_closed


def test_works_under_uvloop() -> None:
    """The client and a bulk call run on a uvloop event loop."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> tuple[str, bool]:
        async with FakeExchange(tokens={TOKEN}) as exchange:
            ids = exchange.add_stop_orders(50, account_id=ACCOUNT)
            async with asyncstop.AsyncStopClient(
                base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT
            ) as client:
                order = await client.cancel_stop_order(ids[0])
                report = await client.cancel_stop_orders(ids[1:])
            ok = report.ok and order.order_id == ids[0]
            return type(asyncio.get_running_loop()).__module__, ok

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        loop_module, ok = runner.run(main())
    assert loop_module.startswith("uvloop")
    assert ok


async def test_warm_up_opens_connections_with_head_requests(
    exchange: FakeExchange, client: asyncstop.AsyncStopClient
) -> None:
    """warm_up(8) sends 8 concurrent HEADs without the token and cancels nothing."""
    exchange.add_stop_orders(5, account_id=ACCOUNT)
    answered = await client.warm_up(8)
    assert answered == 8
    assert [e.method for e in exchange.journal] == ["HEAD"] * 8
    assert not any(e.authorized for e in exchange.journal)
    assert len(exchange.open_stop_orders(ACCOUNT)) == 5


async def test_aiohttp_still_has_the_private_resend_switch() -> None:
    """The private attribute asyncstop turns off to stop aiohttp's own resends still exists."""
    # If a future aiohttp renames it, this fails instead of the client silently
    # sending two requests per attempt.
    async with aiohttp.ClientSession() as session:
        assert isinstance(getattr(session, "_retry_connection", None), bool)


async def test_a_burst_after_warm_up_needs_no_new_connection(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """After warm_up(8), eight concurrent cancels reuse the warmed connections: none is opened."""
    ids = exchange.add_stop_orders(8, account_id=ACCOUNT)
    opened = 0

    async def count_new_connection(*_: object) -> None:
        nonlocal opened
        opened += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(count_new_connection)
    connector = aiohttp.TCPConnector(limit=8)
    async with aiohttp.ClientSession(connector=connector, trace_configs=[tracing]) as session:
        client = await make_client(session=session)
        assert await client.warm_up(8) == 8
        assert opened == 8
        report = await client.cancel_stop_orders(ids, concurrency=8)
    assert report.ok
    assert opened == 8
