"""The fake exchange's stop orders (``_orders``): generated records, the documented cancel."""

from __future__ import annotations

import json
import re
from decimal import Decimal

import aiohttp
import pytest

from asyncstop.testing import (
    FakeExchange,
)

from .helpers import (
    DOCUMENTED_FIELDS,
    NOT_FOUND_BODY,
    TOKEN,
    raw_delete,
)

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z")
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


async def test_cancel_returns_documented_body(session: aiohttp.ClientSession) -> None:
    """A cancel answers 200 with the 13 documented fields, 7-digit timestamps, decimal strings."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        exchange.add_stop_orders(40, activated_fraction=0.5)
        orders = list(exchange.orders.values())
        limit = next(o for o in orders if o.order_type == "Limit" and o.status == "Activated")
        market = next(o for o in orders if o.order_type == "Market")

        status, headers, body = await raw_delete(session, exchange, limit.order_id)
        assert status == 200
        assert headers["Content-Type"].startswith("application/json")
        order = json.loads(body)["order"]
        assert list(json.loads(body)) == ["order"]
        assert list(order) == DOCUMENTED_FIELDS
        assert order["orderId"] == limit.order_id
        assert order["status"] == "Activated"  # the status is kept as it was
        for field in ("createdAt", "updatedAt", "cancellationDate"):
            assert TIMESTAMP.fullmatch(order[field]), order[field]
        for field in ("requestedPrice", "activationPrice", "requestedAmount"):
            assert isinstance(order[field], str)
            assert Decimal(order[field]) > 0
        assert order["timeInForce"] == "Gtc"
        assert not limit.live
        assert limit.cancel_count == 1
        assert limit.cancellation_date == order["cancellationDate"]

        status, _, body = await raw_delete(session, exchange, market.order_id)
        assert status == 200
        assert json.loads(body)["order"]["requestedPrice"] is None

        assert [e.outcome for e in exchange.journal] == ["cancelled", "cancelled"]
        assert all(e.applied for e in exchange.journal)
        assert exchange.cancelled_stop_orders() == {limit.order_id, market.order_id}


def test_generated_orders_are_realistic() -> None:
    """add_stop_orders makes unique ULIDs and plausible markets, types, prices and statuses."""
    exchange = FakeExchange(tokens={TOKEN})
    ids = exchange.add_stop_orders(200, account_id="acc-9", activated_fraction=0.2)
    assert len(set(ids)) == 200
    assert ids == sorted(ids)  # ULIDs of orders created one after another
    assert all(ULID.fullmatch(oid) for oid in ids)
    orders = [exchange.orders[oid] for oid in ids]
    assert sum(o.status == "Activated" for o in orders) == 40
    assert {o.status for o in orders} == {"Activated", "WaitingForActivation"}
    assert {o.market_id.split(".")[0] for o in orders} == {"perp", "spot", "cfd"}
    assert {o.order_type for o in orders} == {"Limit", "Market"}
    assert {o.side for o in orders} == {"Buy", "Sell"}
    for order in orders:
        assert order.account_id == "acc-9"
        assert order.live
        assert (order.requested_price is None) == (order.order_type == "Market")
        assert order.activation_price is not None
        assert Decimal(order.activation_price) > 0
        assert TIMESTAMP.fullmatch(order.created_at)
        assert order.updated_at > order.created_at
        assert order.cancellation_date is None
    btc = next(o for o in orders if o.market_id == "perp.btc_usdt")
    assert btc.market_display_name == "Perpetual BTC/USDT"
    assert exchange.open_stop_orders("acc-9") == set(ids)
    assert exchange.open_stop_orders("acc-1") == set()

    explicit = exchange.add_stop_order("acc-2", order_id="01K2MNGAWPMQJ7WGATFSCAS1G4")
    assert explicit == "01K2MNGAWPMQJ7WGATFSCAS1G4"
    assert exchange.open_stop_orders() == {*ids, explicit}
    with pytest.raises(ValueError, match="already exists"):
        exchange.add_stop_order("acc-2", order_id=explicit)


async def test_not_found_for_unknown_other_account_and_cancelled(
    session: aiohttp.ClientSession,
) -> None:
    """404 with the documented body for an unknown id, another account's order and a repeat."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        mine = exchange.add_stop_order("acc-1")
        theirs = exchange.add_stop_order("acc-2")

        assert (await raw_delete(session, exchange, "01K2MNGAWPMQJ7WGATFSCAS1G4"))[0] == 404
        status, _, body = await raw_delete(session, exchange, theirs)
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert exchange.orders[theirs].live
        assert (await raw_delete(session, exchange, mine))[0] == 200
        status, _, body = await raw_delete(session, exchange, mine)
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert exchange.orders[mine].cancel_count == 1

        assert [e.outcome for e in exchange.journal] == [
            "not_found",
            "not_found",
            "cancelled",
            "not_found",
        ]
