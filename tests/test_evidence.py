"""Never a false all-clear: an order is reported gone only on the exchange's evidence."""

from __future__ import annotations

import gzip
import json

import pytest

import asyncstop
from asyncstop import CancelOutcome
from asyncstop.testing import FakeExchange, Fault, Faults, spread_faults, wait_until

from .helpers import ACCOUNT, TOKEN, ClientFactory, requests_per_order

HTML = b"<!doctype html><html><body>Welcome to the hotel Wi-Fi</body></html>"


def reply_for(order_id: str) -> bytes:
    """A well-formed Cancel Stop order reply naming ``order_id``."""
    return json.dumps({"order": {"orderId": order_id, "status": "Rejected"}}).encode()


@pytest.mark.parametrize(
    ("body", "headers", "shown"),
    [
        (HTML, {"Content-Type": "text/html"}, "text/html"),
        (b"", {}, "not JSON"),
        (b'{"ok": true}', {}, "no order object"),
        (b'{"order": {"status": "Rejected"}}', {}, "no orderId"),
        (reply_for("SOMEONE-ELSES-ORDER"), {}, "SOMEONE-ELSES-ORDER"),
    ],
)
async def test_a_2xx_that_is_not_this_orders_reply_is_not_a_cancel(
    make_client: ClientFactory,
    exchange: FakeExchange,
    body: bytes,
    headers: dict[str, str],
    shown: str,
) -> None:
    """An HTML page, an empty body or another order's reply leaves the order unknown and live."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(order_id, *[Fault.reply(200, body, headers, apply=False)] * 3)
    client = await make_client(max_retries=2)
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert not report.ok
    assert report.pending == [result]
    assert order_id in exchange.open_stop_orders()
    assert result.attempts == 3  # retried like a 5xx
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert shown in str(result.error)


async def test_a_retry_after_a_stray_2xx_settles_on_the_real_answer(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """A 2xx with another order's body, then the real reply: cancelled, on evidence."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(order_id, Fault.reply(200, reply_for("OTHER"), apply=False))
    client = await make_client()
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.order is not None
    assert result.order.order_id == order_id
    assert result.attempts == 2
    assert order_id not in exchange.open_stop_orders()


async def test_this_orders_reply_with_an_odd_field_is_still_cancelled(
    make_client: ClientFactory,
    exchange: FakeExchange,
) -> None:
    """The lenient decode keeps a confirmed cancel whose reply has an unreadable field."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    odd = json.dumps({"order": {"orderId": order_id, "createdAt": "yesterday", "x": [1]}})
    exchange.inject_for(order_id, Fault.reply(200, odd.encode(), apply=True))
    client = await make_client()
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.CANCELLED
    assert result.order is not None
    assert result.order.created_at is None


async def test_a_huge_2xx_is_read_only_up_to_the_limit_and_is_no_evidence(
    make_client: ClientFactory,
    exchange: FakeExchange,
) -> None:
    """A 2 MiB 200 body is cut at max_body_size, kept as at most 1 KiB, and not a cancel."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(order_id, Fault.reply(200, b"x" * (2 << 20), apply=False))
    client = await make_client(max_retries=0)
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert "over 65536 bytes" in str(result.error)
    assert len(result.error.body) <= 1024


async def test_a_gzip_bomb_is_decompressed_only_up_to_the_limit(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """A reply of 10 MiB of zeros gzipped to a few KiB is cut at the limit, not inflated."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    bomb = gzip.compress(b"0" * (10 << 20))
    assert len(bomb) < 64 * 1024
    exchange.inject_for(order_id, Fault.reply(200, bomb, {"Content-Encoding": "gzip"}, apply=False))
    client = await make_client(max_retries=0)
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert len(result.error.body) <= 1024


async def test_a_gzipped_reply_within_the_limit_is_decoded(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """A server that compresses anyway still gets its cancel recognised."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(
        order_id,
        Fault.reply(200, gzip.compress(reply_for(order_id)), {"Content-Encoding": "gzip"}),
    )
    client = await make_client()
    report = await client.cancel_stop_orders([order_id])
    assert report.results[0].outcome is CancelOutcome.CANCELLED


async def test_error_pages_kept_in_a_report_hold_at_most_a_kib(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """400 orders answered with 256 KiB 503 pages keep at most 1 KiB of body each."""
    ids = exchange.add_stop_orders(40, account_id=ACCOUNT)
    page = b"<html>" + b"busy " * (256 * 1024 // 5) + b"</html>"
    for order_id in ids:
        exchange.inject_for(
            order_id, Fault.reply(503, page, {"Content-Type": "text/html"}, apply=False)
        )
    client = await make_client(max_retries=0)
    report = await client.cancel_stop_orders(ids)
    for result in report.results:
        assert isinstance(result.error, asyncstop.ServerError)
        assert 0 < len(result.error.body) <= 1024


async def test_a_first_attempt_404_is_not_found_and_after_a_drop_already_gone(
    make_client: ClientFactory,
    exchange: FakeExchange,
) -> None:
    """404 at once is not_found; 404 after our own dropped attempt is already_gone."""
    missing, dropped = exchange.add_stop_orders(2, account_id=ACCOUNT)
    exchange.inject_for(missing, Fault.error(404))
    exchange.inject_for(dropped, Fault.drop(after=True))
    client = await make_client()
    report = await client.cancel_stop_orders([missing, dropped])
    outcomes = {r.order_id: r.outcome for r in report.results}
    assert outcomes == {missing: CancelOutcome.NOT_FOUND, dropped: CancelOutcome.ALREADY_GONE}
    assert report.ok
    assert report.counts[CancelOutcome.NOT_FOUND] == 1
    assert report.warning is None


async def test_a_wrong_account_id_gives_not_found_and_a_warning(exchange: FakeExchange) -> None:
    """Orders of acc-1 cancelled as acc-2: every one not_found, the report warns, all stay live."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    async with asyncstop.AsyncStopClient(
        base_url=exchange.base_url, token=TOKEN, account_id="acc-2"
    ) as client:
        report = await client.cancel_stop_orders(ids)
    assert report.counts[CancelOutcome.NOT_FOUND] == 5
    assert report.warning is not None
    assert "account id" in report.warning
    assert exchange.open_stop_orders() == set(ids)


async def test_two_missing_orders_give_no_warning(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """Fewer than three not_found orders are ordinary (filled meanwhile): no warning."""
    client = await make_client()
    report = await client.cancel_stop_orders(["GONE-1", "GONE-2"])
    assert report.counts[CancelOutcome.NOT_FOUND] == 2
    assert report.warning is None


async def test_a_stale_reply_on_an_idle_connection_is_not_taken_for_the_next_order(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A stray 200 about order A, read as B's answer while B got a 503: B is not cancelled."""
    first, second = exchange.add_stop_orders(2, account_id=ACCOUNT)
    exchange.inject_for(first, Fault.stale_reply())
    exchange.inject_for(second, Fault.error(503))
    client = await make_client(max_concurrency=1, max_retries=0)
    report = await client.cancel_stop_orders([first, second])
    assert exchange.stale_replies_sent == 1
    outcomes = {r.order_id: r.outcome for r in report.results}
    assert outcomes[first] is CancelOutcome.CANCELLED
    assert outcomes[second] is CancelOutcome.UNKNOWN
    assert second in exchange.open_stop_orders()


async def test_a_stale_404_written_on_an_idle_connection_is_not_taken_for_the_next_order(
    exchange: FakeExchange, make_client: ClientFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """A stray 404 arriving on a pooled connection: the next order gets its own 503, not it."""
    first, second = exchange.add_stop_orders(2, account_id=ACCOUNT)
    exchange.inject_for(first, Fault.stale_reply(idle=0.05, status=404))
    exchange.inject_for(second, Fault.error(503))
    client = await make_client(max_concurrency=1, max_retries=0)
    assert (await client.cancel_stop_orders([first])).ok
    await wait_until(lambda: exchange.stale_replies_sent == 1, timeout=10)
    report = await client.cancel_stop_orders([second])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN  # not NOT_FOUND: that would be a false all-clear
    assert second in exchange.open_stop_orders()
    assert "held data nobody asked for" in caplog.text


@pytest.mark.parametrize("own_answer", [503, 200])
async def test_a_stray_404_read_after_the_next_request_went_out_is_not_believed(
    exchange: FakeExchange, make_client: ClientFactory, own_answer: int
) -> None:
    """A stray 404 that lands as the next order's answer: that order is gone only if it is."""
    first, second = exchange.add_stop_orders(2, account_id=ACCOUNT)
    exchange.inject_for(first, Fault.stale_reply(status=404))  # written as the next one arrives
    if own_answer == 503:
        exchange.inject_for(second, Fault.error(503))
    client = await make_client(max_concurrency=1, max_retries=0)
    assert (await client.cancel_stop_orders([first])).ok
    report = await client.cancel_stop_orders([second])
    assert exchange.stale_replies_sent == 1
    (result,) = report.results
    # The 404 came on a reused connection, so a second request went. It read the
    # first one's own answer (one answer late), or, if that answer had already
    # closed the connection, its own on a new one. Either way it is the truth.
    assert result.attempts == 2 == requests_per_order(exchange)[second]
    live = second in exchange.open_stop_orders()
    assert result.ok is not live
    if live:
        assert result.outcome is CancelOutcome.UNKNOWN  # without the second request: not_found


async def test_a_gateway_full_of_stray_404s_never_yields_a_false_all_clear(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Strays shown early, then 120 stray 404s and 5 % 503s: no order reported gone is live."""
    strays = [Fault.stale_reply(status=404)] * 60 + [Fault.stale_reply(status=404, idle=0.002)] * 60
    # A stray 200 about the first order, read by that connection's next request: the
    # client has seen a stray before the 404s begin, so it confirms them on new connections.
    schedule = {1: Fault.stale_reply()}
    schedule |= {n + 200: f for n, f in spread_faults(strays, within=1800, seed=11).items()}
    faults = Faults(error_before=0.05, latency=0.002)
    async with FakeExchange(tokens={TOKEN}, seed=11, schedule=schedule, faults=faults) as exchange:
        ids = exchange.add_stop_orders(2000, account_id=ACCOUNT)
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url, token=TOKEN, account_id=ACCOUNT, max_retries=0
        ) as client:
            report = await client.cancel_stop_orders(ids, concurrency=32)
        assert exchange.stale_replies_sent > 60
        assert "from now on a 404 read on a reused connection is confirmed" in caplog.text
        live = exchange.open_stop_orders(ACCOUNT)
        assert [r.order_id for r in report.results if r.ok and r.order_id in live] == []
        # Never fewer attempts than the exchange handled. (More is possible here: a
        # request sent on a connection the client then closed for its stray answer.)
        seen = requests_per_order(exchange)
        assert all(r.attempts >= seen[r.order_id] for r in report.results)


async def test_a_404_is_asked_twice_only_on_a_reused_connection(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A 404 on a new connection is believed at once; on a reused one, after a second 404."""
    (live,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    client = await make_client(max_concurrency=1)
    report = await client.cancel_stop_orders(["01K2MNGAWPMQJ7WGATFSCAS1G4"])  # a new connection
    assert (report.results[0].outcome, report.results[0].attempts) == (CancelOutcome.NOT_FOUND, 1)
    assert (await client.cancel_stop_orders([live])).ok
    report = await client.cancel_stop_orders(["01K2MNGAWPMQJ7WGATFSCAS1G5"])  # reused
    (result,) = report.results
    assert (result.outcome, result.attempts) == (CancelOutcome.NOT_FOUND, 2)
    assert requests_per_order(exchange)["01K2MNGAWPMQJ7WGATFSCAS1G5"] == 2


async def test_an_endless_body_is_cut_at_the_limit(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """A 200 that streams forever is read up to max_body_size, then dropped: unknown, live."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(order_id, Fault.endless_body())
    client = await make_client(max_retries=0, max_body_size=4096)
    report = await client.cancel_stop_orders([order_id], deadline=5.0)
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert "over 4096 bytes" in str(result.error)
    assert order_id in exchange.open_stop_orders()


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"<html><body><h1>404 Not Found</h1>nginx</body></html>", {"Content-Type": "text/html"}),
        (b"", {"Content-Type": "text/plain"}),
    ],
    ids=["proxy-page", "empty"],
)
async def test_a_404_that_is_not_the_apis_answer_is_not_a_not_found(
    exchange: FakeExchange, make_client: ClientFactory, body: bytes, headers: dict[str, str]
) -> None:
    """A proxy's HTML or empty 404 is no evidence: the order stays unknown and pending."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    exchange.inject_for(order_id, *[Fault.reply(404, body, headers, apply=False)] * 2)
    client = await make_client(max_retries=1)
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert not report.ok
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert "404" in str(result.error)
    assert order_id in exchange.open_stop_orders()


@pytest.mark.parametrize(
    ("status", "encoding"),
    [(200, "br"), (200, "zstd"), (404, "br"), (200, "gzip")],
    ids=["200-br", "200-zstd", "404-br", "200-broken-gzip"],
)
async def test_a_reply_in_an_encoding_we_cannot_read_is_no_evidence(
    make_client: ClientFactory, exchange: FakeExchange, status: int, encoding: str
) -> None:
    """A br, zstd or broken gzip body (a recompressing proxy) is unknown and retried, no crash."""
    (order_id,) = exchange.add_stop_orders(1, account_id=ACCOUNT)
    junk = Fault.reply(
        status,
        b"\x8b\x00 not a body we can decode",
        {"Content-Type": "application/json", "Content-Encoding": encoding},
        apply=False,
    )
    exchange.inject_for(order_id, junk, junk)
    client = await make_client(max_retries=1)
    report = await client.cancel_stop_orders([order_id])
    (result,) = report.results
    assert result.outcome is CancelOutcome.UNKNOWN
    assert report.pending == [result]
    assert order_id in exchange.open_stop_orders()
    assert result.attempts == 2  # retried like a 5xx
    assert isinstance(result.error, asyncstop.ResponseValidationError)
    assert encoding in str(result.error)
    exchange.inject_for(order_id, junk, junk)
    with pytest.raises(asyncstop.ResponseValidationError):  # not a private exception
        await client.cancel_stop_order(order_id)
    assert order_id in exchange.open_stop_orders()


async def test_the_client_offers_only_the_encodings_it_can_read(
    make_client: ClientFactory, exchange: FakeExchange
) -> None:
    """Every request asks for gzip or deflate only, even where aiohttp could offer br or zstd."""
    order_ids = exchange.add_stop_orders(2, account_id=ACCOUNT)
    client = await make_client()
    await client.cancel_stop_orders(order_ids)
    offered = {entry.headers.get("Accept-Encoding") for entry in exchange.requests("DELETE")}
    assert offered == {"gzip, deflate"}
