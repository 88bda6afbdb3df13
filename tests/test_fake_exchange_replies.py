"""Answers that are not the exchange's (``_replies``): the knobs for the evidence rules."""

from __future__ import annotations

import json
import zlib

import aiohttp
import pytest

from asyncstop.testing import (
    FakeExchange,
    Fault,
    wait_until,
)

from .helpers import (
    DOCUMENTED_FIELDS,
    TOKEN,
    WAIT_LIMIT,
    documented_headers,
    raw_delete,
)
from .helpers import STOP_ORDERS_PATH as PATH


async def test_fault_reply_and_redirect(session: aiohttp.ClientSession) -> None:
    """Fault.reply sends raw bodies (cancelling if asked); Fault.redirect sends 307, cancels not."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        garbage, odd, moved = exchange.add_stop_orders(3)
        odd_body = json.dumps({"order": {"orderId": odd, "status": "Cancelled"}}).encode()
        exchange.inject(
            Fault.reply(200, b"not json at all"),
            Fault.reply(200, odd_body, {"content-type": "text/plain", "X-Test": "1"}, apply=False),
            Fault.redirect("http://elsewhere.invalid/x"),
        )
        status, _, body = await raw_delete(session, exchange, garbage)
        assert (status, body) == (200, b"not json at all")
        assert not exchange.orders[garbage].live
        status, headers, body = await raw_delete(session, exchange, odd)
        assert (status, body) == (200, odd_body)
        assert (headers["Content-Type"], headers["X-Test"]) == ("text/plain", "1")
        assert exchange.orders[odd].live
        status, headers, _ = await raw_delete(session, exchange, moved, allow_redirects=False)
        assert (status, headers["Location"]) == (307, "http://elsewhere.invalid/x")
        assert exchange.orders[moved].live
        assert [(e.outcome, e.applied) for e in exchange.journal] == [
            ("replied", True),
            ("replied", False),
            ("redirected", False),
        ]


async def test_a_200_html_page_or_empty_body_leaves_the_order_live(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.reply(..., apply=False) answers a 200 HTML page or an empty 200 and cancels nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        portal, empty = exchange.add_stop_orders(2)
        page = b"<!doctype html><html><body>Sign in to continue</body></html>"
        exchange.inject_for(
            portal, Fault.reply(200, page, {"Content-Type": "text/html"}, apply=False)
        )
        exchange.inject_for(empty, Fault.reply(200, b"", apply=False))
        status, headers, body = await raw_delete(session, exchange, portal)
        assert (status, headers["Content-Type"], body) == (200, "text/html", page)
        status, headers, body = await raw_delete(session, exchange, empty)
        assert (status, headers["Content-Length"], body) == (200, "0", b"")
        assert exchange.open_stop_orders() == {portal, empty}
        assert [(e.outcome, e.applied) for e in exchange.journal] == [("replied", False)] * 2


async def test_fault_other_order_answers_about_another_order(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.other_order answers a documented 200 about another order id; both orders stay live."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        asked, neighbour = exchange.add_stop_orders(2)
        exchange.inject_for(asked, Fault.other_order(), Fault.other_order(neighbour))
        status, _, body = await raw_delete(session, exchange, asked)
        order = json.loads(body)["order"]
        assert status == 200
        assert list(order) == DOCUMENTED_FIELDS
        assert order["orderId"] == "01K2MNGAWPMQJ7WGATFSCAS1G4"  # the documented example's id
        assert order["marketId"] == exchange.orders[asked].market_id
        status, _, body = await raw_delete(session, exchange, asked)
        assert json.loads(body)["order"]["orderId"] == neighbour
        assert exchange.open_stop_orders() == {asked, neighbour}
        assert [(e.status, e.outcome, e.applied) for e in exchange.journal] == [
            (200, "replied", False)
        ] * 2


async def test_fault_huge_body_streams_its_size(session: aiohttp.ClientSession) -> None:
    """Fault.huge_body(n) sends exactly n bytes of non-JSON filler with a Content-Length."""
    size = 3_000_001
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.huge_body(size))
        status, headers, body = await raw_delete(session, exchange, order_id)
        assert (status, headers["Content-Length"], len(body)) == (200, str(size), size)
        with pytest.raises(json.JSONDecodeError):
            json.loads(body)
        assert exchange.open_stop_orders() == {order_id}
        [entry] = exchange.journal
        assert (entry.status, entry.outcome, entry.applied) == (200, "replied", False)


async def test_fault_endless_body_streams_until_the_client_leaves(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.endless_body streams past any size and ends when its client closes the connection."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.endless_body(content_type="text/plain"))
        received = 0
        async with session.delete(
            exchange.base_url + PATH + order_id, headers=documented_headers()
        ) as response:
            assert response.status == 200
            assert "Content-Length" not in response.headers
            async for chunk in response.content.iter_chunked(1 << 16):
                received += len(chunk)
                if received > 8_000_000:
                    break
            assert exchange.in_flight == 1  # still streaming
            response.close()
        await wait_until(lambda: exchange.in_flight == 0, timeout=WAIT_LIMIT)
        [entry] = exchange.journal
        assert (entry.outcome, entry.applied) == ("replied", False)
        assert entry.done_time < float("inf")
        assert exchange.open_stop_orders() == {order_id}


async def test_fault_gzip_bomb_is_small_on_the_wire_and_large_inflated(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.gzip_bomb(n) sends a valid gzip body about n/1000 bytes long that inflates to n."""
    size = 48 * 1024 * 1024 + 5
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.gzip_bomb(size))
        status, headers, wire = await raw_delete(session, exchange, order_id, auto_decompress=False)
        assert (status, headers["Content-Encoding"]) == (200, "gzip")
        assert int(headers["Content-Length"]) == len(wire) < size // 500
        inflated = zlib.decompress(wire, wbits=31)  # checks the CRC and length too
        assert len(inflated) == size
        assert exchange.open_stop_orders() == {order_id}


async def test_fault_stale_reply_is_read_by_the_next_request_on_the_connection() -> None:
    """After Fault.stale_reply, the connection's next request reads a 200 about the first order."""
    async with (
        FakeExchange(tokens={TOKEN}) as exchange,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        first, second = exchange.add_stop_orders(2)
        exchange.inject_for(first, Fault.stale_reply())
        exchange.inject_for(second, Fault.error(503))
        status, _, body = await raw_delete(session, exchange, first)
        assert (status, json.loads(body)["order"]["orderId"]) == (200, first)
        status, _, body = await raw_delete(session, exchange, second)
        # The exchange answered 503 and cancelled nothing; the client read the stale 200.
        assert (status, json.loads(body)["order"]["orderId"]) == (200, first)
        assert exchange.stale_replies_sent == 1
        assert exchange.open_stop_orders() == {second}
        assert [(e.order_id, e.status) for e in exchange.journal] == [(first, 200), (second, 503)]


async def test_fault_stale_reply_with_idle_is_written_on_the_idle_connection() -> None:
    """Fault.stale_reply(idle=...) writes its extra 200 while the connection sits idle."""
    async with (
        FakeExchange(tokens={TOKEN}) as exchange,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        first, second = exchange.add_stop_orders(2)
        exchange.inject_for(first, Fault.stale_reply(idle=0.05))
        assert (await raw_delete(session, exchange, first))[0] == 200
        await wait_until(lambda: exchange.stale_replies_sent == 1, timeout=WAIT_LIMIT)
        assert [e.order_id for e in exchange.journal] == [first]  # written with no request
        status, _, body = await raw_delete(session, exchange, second)
        assert (status, json.loads(body)["order"]["orderId"]) == (200, first)


async def test_fault_stale_reply_404_is_the_documented_404_on_the_connection() -> None:
    """Fault.stale_reply(status=404): the next request on the connection reads a 404 not its own."""
    async with (
        FakeExchange(tokens={TOKEN}) as exchange,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
    ):
        first, second = exchange.add_stop_orders(2)
        exchange.inject_for(first, Fault.stale_reply(status=404))
        exchange.inject_for(second, Fault.error(503))
        assert (await raw_delete(session, exchange, first))[0] == 200
        stale = await raw_delete(session, exchange, second)
        assert exchange.open_stop_orders() == {second}  # the exchange answered 503
        assert [(e.order_id, e.status) for e in exchange.journal] == [(first, 200), (second, 503)]
        # The documented 404, as an unknown id gets it (on a connection of its own).
        async with aiohttp.ClientSession() as fresh:
            genuine = await raw_delete(fresh, exchange, "01K2MNGAWPMQJ7WGATFSCAS1G5")
        assert stale[0] == genuine[0] == 404
        assert stale[2] == genuine[2]


def test_odd_answer_faults_are_validated() -> None:
    """Impossible sizes, statuses and idle times are refused when the fault is built."""
    with pytest.raises(ValueError, match="size"):
        Fault.huge_body(-1)
    with pytest.raises(ValueError, match="size"):
        Fault.gzip_bomb(True)
    with pytest.raises(ValueError, match="status"):
        Fault.endless_body(status=700)
    with pytest.raises(ValueError, match="idle"):
        Fault.stale_reply(idle=float("nan"))
    with pytest.raises(ValueError, match="200 or a 404"):
        Fault.stale_reply(status=500)
    with pytest.raises(ValueError, match="order_id"):
        Fault.other_order("a/b")
