"""The fake exchange (asyncstop.testing) behaves as documented, driven by a real aiohttp client."""

from __future__ import annotations

import argparse
import asyncio
import email.utils
import gc
import json
import os
import random
import re
import signal
import socket
import sys
import time
import zlib
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import asyncstop.testing
from asyncstop.testing import (
    FakeExchange,
    Fault,
    Faults,
    JournalEntry,
    LongTailLatency,
    Outcome,
    parse_duration,
    spread_faults,
    wait_until,
)

TOKEN = "t1-very-secret-token"
PATH = "/frontoffice/api/v3/stop-orders/"
ACCOUNTS_PATH = "/frontoffice/api/v3/accounts"
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
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{7}Z")
ULID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")
DISCONNECTED = (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError)
NOT_FOUND_BODY = {
    "errorCode": 10002,
    "message": "Object not found",
    "errors": [{"key": "orderId", "code": "not_found", "message": "Stop order not found"}],
}
REPO_ROOT = Path(__file__).resolve().parent.parent
#: Seconds a test waits for the loop to make a condition true (generous for a loaded machine).
WAIT_LIMIT = 10.0


def documented_headers(account_id: str | None = "acc-1", token: str = TOKEN) -> dict[str, str]:
    """The request headers of the documented example."""
    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": "application/json; x-api-version=4.0",
        "Accept": "*/*",
    }
    if account_id is not None:
        headers["accountId"] = account_id
    return headers


async def delete(
    session: aiohttp.ClientSession,
    exchange: FakeExchange,
    order_id: str,
    headers: dict[str, str] | None = None,
    **kwargs: Any,
) -> tuple[int, dict[str, str], bytes]:
    """Send one cancel; return (status, response headers, body)."""
    async with session.delete(
        exchange.base_url + PATH + order_id,
        headers=documented_headers() if headers is None else headers,
        **kwargs,
    ) as response:
        return response.status, dict(response.headers), await response.read()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp session that sends each request exactly once."""
    async with aiohttp.ClientSession() as session:
        # aiohttp silently resends an idempotent request (DELETE is one) once when a
        # reused keep-alive connection turns out to be closed. The fake's dropped
        # connections must reach these tests as they happened: one request per attempt.
        session._retry_connection = False
        yield session


# -- the documented happy path ------------------------------------------------


async def test_cancel_returns_documented_body(session: aiohttp.ClientSession) -> None:
    """A cancel answers 200 with the 13 documented fields, 7-digit timestamps, decimal strings."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        exchange.add_stop_orders(40, activated_fraction=0.5)
        orders = list(exchange.orders.values())
        limit = next(o for o in orders if o.order_type == "Limit" and o.status == "Activated")
        market = next(o for o in orders if o.order_type == "Market")

        status, headers, body = await delete(session, exchange, limit.order_id)
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

        status, _, body = await delete(session, exchange, market.order_id)
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


# -- refusals -------------------------------------------------------------------


async def test_not_found_for_unknown_other_account_and_cancelled(
    session: aiohttp.ClientSession,
) -> None:
    """404 with the documented body for an unknown id, another account's order and a repeat."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        mine = exchange.add_stop_order("acc-1")
        theirs = exchange.add_stop_order("acc-2")

        assert (await delete(session, exchange, "01K2MNGAWPMQJ7WGATFSCAS1G4"))[0] == 404
        status, _, body = await delete(session, exchange, theirs)
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert exchange.orders[theirs].live
        assert (await delete(session, exchange, mine))[0] == 200
        status, _, body = await delete(session, exchange, mine)
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert exchange.orders[mine].cancel_count == 1

        assert [e.outcome for e in exchange.journal] == [
            "not_found",
            "not_found",
            "cancelled",
            "not_found",
        ]


async def test_unauthorized(session: aiohttp.ClientSession) -> None:
    """401 without an accepted exact-case Bearer token, including one removed to simulate expiry."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        no_auth = documented_headers()
        del no_auth["Authorization"]
        lowercase = documented_headers() | {"Authorization": f"bearer {TOKEN}"}
        for headers in (no_auth, documented_headers(token="wrong"), lowercase):
            status, response_headers, body = await delete(session, exchange, oid, headers)
            assert status == 401
            assert response_headers["WWW-Authenticate"] == "Bearer"
            assert json.loads(body) == {"errorCode": 10005, "message": "Unauthorized", "errors": []}

        exchange.tokens.discard(TOKEN)
        assert (await delete(session, exchange, oid))[0] == 401
        assert exchange.orders[oid].live
        exchange.tokens.add(TOKEN)
        assert (await delete(session, exchange, oid))[0] == 200
        assert [e.authorized for e in exchange.journal] == [False] * 4 + [True]


async def test_missing_account_id_is_400(session: aiohttp.ClientSession) -> None:
    """400 with errorCode 10001 naming accountId when the accountId header is missing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        status, _, body = await delete(session, exchange, oid, documented_headers(None))
        assert status == 400
        error = json.loads(body)
        assert error["errorCode"] == 10001
        assert error["message"] == "accountId header is required"
        assert error["errors"][0]["key"] == "accountId"
        assert error["errors"][0]["code"] == "required"
        assert exchange.orders[oid].live
        assert exchange.journal[0].outcome == "bad_request"


async def test_strict_headers(session: aiohttp.ClientSession) -> None:
    """strict_headers refuses a wrong Content-Type, no Accept and a body; off, it does not."""
    for strict in (True, False):
        async with FakeExchange(tokens={TOKEN}, strict_headers=strict) as exchange:
            ids = exchange.add_stop_orders(3)
            wrong_type = documented_headers() | {"Content-Type": "application/json"}
            no_accept = documented_headers()
            del no_accept["Accept"]
            statuses = [(await delete(session, exchange, ids[0], wrong_type))[0]]
            # aiohttp adds "Accept: */*" unless told not to.
            answer = await delete(
                session, exchange, ids[1], no_accept, skip_auto_headers=["Accept"]
            )
            statuses.append(answer[0])
            statuses.append((await delete(session, exchange, ids[2], data=b"{}"))[0])
            assert statuses == ([400, 400, 400] if strict else [200, 200, 200])


async def test_other_methods_are_405(session: aiohttp.ClientSession) -> None:
    """Methods other than DELETE and HEAD get 405 with an Allow header and change nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        for method in ("GET", "POST", "PUT"):
            async with session.request(
                method, exchange.base_url + PATH + oid, headers=documented_headers()
            ) as response:
                assert response.status == 405
                assert response.headers["Allow"] == "DELETE, HEAD"
        assert exchange.orders[oid].live
        assert {e.outcome for e in exchange.journal} == {"method_not_allowed"}


async def test_head_is_a_warm_up(session: aiohttp.ClientSession) -> None:
    """HEAD on any path answers 200, no body, connection kept alive; journaled as warm_up."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        async with session.head(exchange.base_url + PATH) as response:
            assert response.status == 200
            assert await response.read() == b""
            assert response.headers.get("Connection", "").lower() != "close"
        async with session.head(exchange.base_url + "/anything") as response:
            assert response.status == 200
        assert (await delete(session, exchange, oid))[0] == 200
        assert [e.outcome for e in exchange.journal] == ["warm_up", "warm_up", "cancelled"]
        assert exchange.max_in_flight == 1  # HEAD is not a DELETE in flight


# -- journal ----------------------------------------------------------------------


async def test_journal_records_requests_without_the_token(session: aiohttp.ClientSession) -> None:
    """Journal entries carry method, ids, loop times, status and headers, and never the token."""
    wrong_token = "another-secret-never-stored"
    async with FakeExchange(tokens={TOKEN}, rate_limit=1, pause_grace=0) as exchange:
        oid = exchange.add_stop_order()
        loop = asyncio.get_running_loop()
        before = loop.time()
        await delete(session, exchange, oid, documented_headers(token=wrong_token))
        await delete(session, exchange, oid)
        await delete(session, exchange, oid)  # 429: the bucket held one token
        await delete(session, exchange, oid)  # a pause violation
        after = loop.time()

        refused, cancelled, limited, violation = exchange.journal
        assert isinstance(cancelled, JournalEntry)
        assert (cancelled.method, cancelled.path) == ("DELETE", PATH + oid)
        assert (cancelled.order_id, cancelled.account_id) == (oid, "acc-1")
        assert (cancelled.status, cancelled.outcome) == (200, Outcome.CANCELLED)
        assert cancelled.authorized
        assert not refused.authorized
        assert before <= refused.time <= refused.done_time <= cancelled.time <= after
        assert cancelled.duration >= 0
        assert cancelled.headers["accountId"] == "acc-1"
        assert cancelled.headers["Content-Type"] == "application/json; x-api-version=4.0"
        assert not any(name.lower() == "authorization" for name in cancelled.headers)
        assert (limited.status, violation.status) == (429, 429)
        assert exchange.pause_violations == [violation]

        everything = repr((exchange, exchange.journal, exchange.pause_violations, exchange.orders))
        for secret in (TOKEN, wrong_token):
            assert secret not in everything

        exchange.reset_journal()
        assert exchange.journal == []
        assert exchange.pause_violations == []


async def test_keep_journal_false(session: aiohttp.ClientSession) -> None:
    """With keep_journal=False nothing is journaled, but pause violations are still recorded."""
    async with FakeExchange(
        tokens={TOKEN}, keep_journal=False, rate_limit=1, pause_grace=0
    ) as exchange:
        oid = exchange.add_stop_order()
        statuses = [(await delete(session, exchange, oid))[0] for _ in range(3)]
        assert statuses == [200, 429, 429]
        assert exchange.journal == []
        assert len(exchange.pause_violations) == 1


# -- determinism ------------------------------------------------------------------


async def test_same_seed_gives_same_ids_and_fault_sequence(session: aiohttp.ClientSession) -> None:
    """The same seed gives the same order ids and the same random faults; another seed does not."""

    async def run(seed: int) -> tuple[list[str], list[str]]:
        faults = Faults(error_before=0.3, error_after=0.2, latency=LongTailLatency(0.001, 0.002))
        async with FakeExchange(tokens={TOKEN}, seed=seed, faults=faults) as exchange:
            ids = exchange.add_stop_orders(30)
            for oid in ids:
                await delete(session, exchange, oid)
            return ids, [e.outcome for e in exchange.journal]

    ids, outcomes = await run(7)
    assert await run(7) == (ids, outcomes)
    assert {"cancelled", "error_before", "error_after"} <= set(outcomes)
    other_ids, other_outcomes = await run(8)
    assert set(other_ids).isdisjoint(ids)
    assert other_outcomes != outcomes


def test_long_tail_latency_is_seeded_and_bounded() -> None:
    """LongTailLatency draws match its median and p99, never exceed max, and repeat per seed."""
    latency = LongTailLatency(median=0.02, p99=0.2, max=1.0)
    rng = random.Random(3)
    draws = sorted(latency.sample(rng) for _ in range(20_000))
    assert 0.018 < draws[10_000] < 0.022
    assert 0.17 < draws[19_800] < 0.23
    assert draws[0] > 0
    assert draws[-1] <= 1.0
    rng_again = random.Random(3)
    assert sorted(latency.sample(rng_again) for _ in range(20_000)) == draws


# -- scripted and random faults ---------------------------------------------------


async def test_fault_error_before_and_after(session: aiohttp.ClientSession) -> None:
    """Fault.error answers its status (Retry-After, custom body) before or after cancelling."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        first, second, third = exchange.add_stop_orders(3)
        exchange.inject(
            Fault.error(503, retry_after="2"),
            Fault.error(500, after=True),
            Fault.error(502, body=b"<html>Bad gateway</html>"),
        )
        status, headers, body = await delete(session, exchange, first)
        assert (status, headers["Retry-After"]) == (503, "2")
        assert json.loads(body)["message"] == "Service Unavailable"
        assert exchange.orders[first].live
        assert (await delete(session, exchange, second))[0] == 500
        assert not exchange.orders[second].live
        assert (await delete(session, exchange, third))[2] == b"<html>Bad gateway</html>"
        assert [(e.outcome, e.applied) for e in exchange.journal] == [
            ("error_before", False),
            ("error_after", True),
            ("error_before", False),
        ]
        assert exchange.pending_faults == 0


async def test_fault_drop_before_leaves_the_order(session: aiohttp.ClientSession) -> None:
    """Fault.drop() closes the connection with no answer and cancels nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        exchange.inject(Fault.drop())
        with pytest.raises(DISCONNECTED):
            await delete(session, exchange, oid)
        assert exchange.orders[oid].live
        (entry,) = exchange.journal
        assert (entry.status, entry.outcome, entry.applied) == (None, "dropped_before", False)
        assert (await delete(session, exchange, oid))[0] == 200


async def test_drop_after_applies_and_client_sees_disconnect(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.drop(after=True) cancels, then the client sees its reused connection close."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        async with session.head(exchange.base_url + PATH) as response:
            assert response.status == 200  # the connection is now an idle keep-alive one
        exchange.inject(Fault.drop(after=True))
        with pytest.raises(DISCONNECTED):
            await delete(session, exchange, oid)
        assert not exchange.orders[oid].live
        deletes = [e for e in exchange.journal if e.method == "DELETE"]
        assert [(e.status, e.outcome, e.applied) for e in deletes] == [
            (None, "dropped_after", True)
        ]
        assert (await delete(session, exchange, oid))[0] == 404


async def test_random_drop_after(session: aiohttp.ClientSession) -> None:
    """Faults(drop_after=1.0) drops every answer after applying the cancel."""
    async with FakeExchange(tokens={TOKEN}, faults=Faults(drop_after=1.0)) as exchange:
        ids = exchange.add_stop_orders(3)
        for oid in ids:
            with pytest.raises(DISCONNECTED):
                await delete(session, exchange, oid)
        assert exchange.open_stop_orders() == set()
        assert {e.outcome for e in exchange.journal} == {"dropped_after"}


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
        status, _, body = await delete(session, exchange, garbage)
        assert (status, body) == (200, b"not json at all")
        assert not exchange.orders[garbage].live
        status, headers, body = await delete(session, exchange, odd)
        assert (status, body) == (200, odd_body)
        assert (headers["Content-Type"], headers["X-Test"]) == ("text/plain", "1")
        assert exchange.orders[odd].live
        status, headers, _ = await delete(session, exchange, moved, allow_redirects=False)
        assert (status, headers["Location"]) == (307, "http://elsewhere.invalid/x")
        assert exchange.orders[moved].live
        assert [(e.outcome, e.applied) for e in exchange.journal] == [
            ("replied", True),
            ("replied", False),
            ("redirected", False),
        ]


async def test_fault_unauthorized_with_a_valid_token(session: aiohttp.ClientSession) -> None:
    """Fault.unauthorized() answers 401 even to an accepted token, cancelling nothing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        exchange.inject(Fault.unauthorized())
        assert (await delete(session, exchange, oid))[0] == 401
        assert exchange.orders[oid].live
        assert exchange.journal[0].authorized
        assert (await delete(session, exchange, oid))[0] == 200


async def test_fault_rate_limited_starts_a_pause(session: aiohttp.ClientSession) -> None:
    """Fault.rate_limited answers 429 with its Retry-After and pauses the account if it can."""
    async with FakeExchange(tokens={TOKEN}, pause_grace=0) as exchange:
        oid = exchange.add_stop_order()
        other = exchange.add_stop_order("acc-2")
        exchange.inject(Fault.rate_limited(retry_after="30"))
        status, headers, body = await delete(session, exchange, oid)
        assert (status, headers["Retry-After"]) == (429, "30")
        assert json.loads(body)["errorCode"] == 10029
        status, headers, _ = await delete(session, exchange, oid)
        assert status == 429  # inside the pause: a violation
        assert 0 < int(headers["Retry-After"]) <= 30
        assert [e.order_id for e in exchange.pause_violations] == [oid]
        assert (await delete(session, exchange, other, documented_headers("acc-2")))[0] == 200

        # Without a Retry-After the client cannot know how long to wait: no pause.
        exchange.inject(Fault.rate_limited(retry_after=None))
        status, headers, _ = await delete(session, exchange, "unknown", documented_headers("acc-3"))
        assert status == 429
        assert "Retry-After" not in headers
        assert (await delete(session, exchange, "unknown", documented_headers("acc-3")))[0] == 404
        assert len(exchange.pause_violations) == 1

        # An HTTP-date pauses until then; a value no client can read pauses nothing.
        in_a_minute = email.utils.formatdate(time.time() + 60, usegmt=True)
        exchange.inject(Fault.rate_limited(in_a_minute), Fault.rate_limited("soon"))
        for account_id in ("acc-4", "acc-5"):
            assert (await delete(session, exchange, "x", documented_headers(account_id)))[0] == 429
            await delete(session, exchange, "x", documented_headers(account_id))
        assert [e.account_id for e in exchange.pause_violations] == ["acc-1", "acc-4"]


async def test_inject_for_comes_before_the_global_fifo(session: aiohttp.ClientSession) -> None:
    """Per-order faults are used only by that order and before the shared FIFO."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        first, second = exchange.add_stop_orders(2)
        exchange.inject(Fault.error(503))
        exchange.inject_for(second, Fault.error(502), Fault.error(504))
        assert exchange.pending_faults == 3
        assert (await delete(session, exchange, second))[0] == 502
        assert (await delete(session, exchange, second))[0] == 504
        assert (await delete(session, exchange, second))[0] == 503  # the FIFO's turn
        assert (await delete(session, exchange, first))[0] == 200
        assert exchange.pending_faults == 0


def test_faults_are_validated() -> None:
    """Impossible fault settings are refused when they are built."""
    with pytest.raises(ValueError, match="add up"):
        Faults(error_before=0.7, drop_after=0.5)
    with pytest.raises(ValueError, match="probability"):
        Faults(hang=-0.1)
    with pytest.raises(ValueError, match="latency"):
        Faults(latency=-1.0)
    with pytest.raises(ValueError, match="4xx or 5xx"):
        Fault.error(200)
    with pytest.raises(ValueError, match="CR, LF"):
        Fault.redirect("http://x\r\nSet-Cookie: a=b")
    with pytest.raises(ValueError, match="median"):
        LongTailLatency(median=0)
    with pytest.raises(TypeError, match="single str"):
        FakeExchange(tokens=TOKEN)
    exchange = FakeExchange(tokens={TOKEN})
    with pytest.raises(TypeError, match="Fault"):
        exchange.inject("drop")  # type: ignore[arg-type]


# -- rate limit -------------------------------------------------------------------


async def test_rate_limit_integer_retry_after_and_violations(
    session: aiohttp.ClientSession,
) -> None:
    """An empty bucket answers 429, integer Retry-After; requests in the pause are violations."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=1, rate_limit_burst=2, pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        other = exchange.add_stop_order("acc-2")
        answers = [await delete(session, exchange, oid) for oid in ids]
        assert [status for status, _, _ in answers] == [200, 200, 429, 429]
        _, headers, body = answers[2]
        assert headers["Retry-After"] == "1"
        assert json.loads(body) == {
            "errorCode": 10029,
            "message": "Too many requests",
            "errors": [],
        }
        assert [e.order_id for e in exchange.pause_violations] == [ids[3]]
        assert exchange.journal[2].outcome == exchange.journal[3].outcome == "rate_limited"
        assert exchange.open_stop_orders("acc-1") == set(ids[2:])
        # The limit and the pause are per account.
        assert (await delete(session, exchange, other, documented_headers("acc-2")))[0] == 200


async def test_rate_limit_float_retry_after_and_pause_end(session: aiohttp.ClientSession) -> None:
    """retry_after=0.07 sends exactly "0.07"; violators get the rest; after the pause, all fine."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=20, rate_limit_burst=1, retry_after=0.07, pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        assert (await delete(session, exchange, ids[0]))[0] == 200
        status, headers, _ = await delete(session, exchange, ids[1])
        assert (status, headers["Retry-After"]) == (429, "0.07")
        status, headers, _ = await delete(session, exchange, ids[2])
        assert status == 429
        assert 0 <= float(headers["Retry-After"]) <= 0.07
        assert len(exchange.pause_violations) == 1
        await asyncio.sleep(0.2)
        assert (await delete(session, exchange, ids[3]))[0] == 200
        assert len(exchange.pause_violations) == 1


async def test_rate_limit_http_date_retry_after(session: aiohttp.ClientSession) -> None:
    """retry_after="date" sends an HTTP-date one to two seconds ahead."""
    async with FakeExchange(
        tokens={TOKEN}, rate_limit=1, retry_after="date", pause_grace=0
    ) as exchange:
        ids = exchange.add_stop_orders(3)
        assert (await delete(session, exchange, ids[0]))[0] == 200
        status, headers, _ = await delete(session, exchange, ids[1])
        assert status == 429
        assert headers["Retry-After"].endswith(" GMT")
        ahead = email.utils.parsedate_to_datetime(headers["Retry-After"]).timestamp() - time.time()
        assert 0 < ahead <= 2.5
        status, violation_headers, _ = await delete(session, exchange, ids[2])
        assert (status, violation_headers["Retry-After"]) == (429, headers["Retry-After"])
        assert len(exchange.pause_violations) == 1


async def test_requests_within_the_grace_are_not_violations(
    session: aiohttp.ClientSession,
) -> None:
    """Requests early in a pause still get 429 from the empty bucket but are not violations."""
    async with FakeExchange(tokens={TOKEN}, rate_limit=1, pause_grace=60) as exchange:
        ids = exchange.add_stop_orders(4)
        statuses = [(await delete(session, exchange, oid))[0] for oid in ids]
        assert statuses == [200, 429, 429, 429]
        assert exchange.pause_violations == []


# -- concurrency, latency and the lifetime ------------------------------------------


async def test_max_in_flight_counts_concurrent_requests(session: aiohttp.ClientSession) -> None:
    """in_flight and max_in_flight count DELETEs inside the exchange, hung ones until close."""
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    try:
        ids = exchange.add_stop_orders(5)
        exchange.inject(*[Fault.hang() for _ in ids])
        requests = [asyncio.create_task(delete(session, exchange, oid)) for oid in ids]
        await wait_until(lambda: exchange.in_flight >= 5, timeout=WAIT_LIMIT)
        assert exchange.max_in_flight == 5
        assert [e.outcome for e in exchange.journal] == ["hung"] * 5
        assert all(e.done_time == float("inf") for e in exchange.journal)
    finally:
        await exchange.close()
    for request in requests:
        with pytest.raises(DISCONNECTED):
            await request
    assert exchange.in_flight == 0
    assert exchange.max_in_flight == 5
    assert all(e.status is None and e.done_time < float("inf") for e in exchange.journal)
    assert exchange.open_stop_orders() == set(ids)


async def test_close_releases_hung_and_slow_requests_cleanly(
    session: aiohttp.ClientSession,
) -> None:
    """close() drops a hung and a slow request and leaves no task or transport behind."""
    exchange = FakeExchange(tokens={TOKEN}, faults=Faults(latency=60.0))
    await exchange.start()
    hung, slow = exchange.add_stop_orders(2)
    exchange.inject_for(hung, Fault.hang())
    requests = [asyncio.create_task(delete(session, exchange, oid)) for oid in (hung, slow)]
    await wait_until(lambda: exchange.in_flight >= 2, timeout=WAIT_LIMIT)
    async with asyncio.timeout(10):
        await exchange.close()
        await exchange.close()  # idempotent
        for request in requests:
            with pytest.raises(DISCONNECTED):
                await request
    assert [e.outcome for e in exchange.journal] == ["hung", "dropped_before"]
    assert exchange.in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    gc.collect()  # an unclosed transport would warn here, and warnings are errors


async def test_latency_delays_the_answer(session: aiohttp.ClientSession) -> None:
    """A fixed latency holds each answer back at least that long, counted as in flight."""
    async with FakeExchange(tokens={TOKEN}, faults=Faults(latency=0.05)) as exchange:
        oid = exchange.add_stop_order()
        assert (await delete(session, exchange, oid))[0] == 200
        (entry,) = exchange.journal
        assert 0.049 <= entry.duration < 10


def test_constructor_needs_no_event_loop() -> None:
    """FakeExchange is built and filled outside any event loop; base_url needs start()."""
    exchange = FakeExchange(tokens={TOKEN})
    exchange.add_stop_orders(2)
    with pytest.raises(RuntimeError, match="not started"):
        _ = exchange.base_url
    assert "unopened" in repr(exchange)


async def test_lifetime() -> None:
    """start() binds an ephemeral loopback port once; close() is idempotent; no restart."""
    unused = FakeExchange(tokens={TOKEN})
    await unused.close()
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", exchange.base_url)
    assert exchange.port > 0
    with pytest.raises(RuntimeError, match="already started"):
        await exchange.start()
    await exchange.close()
    await exchange.close()
    with pytest.raises(RuntimeError, match="cannot be started again"):
        await exchange.start()
    assert "closed" in repr(exchange)


def test_public_names() -> None:
    """Every public name is in __all__, documented, and shows asyncstop.testing as its module."""
    public = {
        name
        for name, value in vars(asyncstop.testing).items()
        if not name.startswith("_") and not isinstance(value, type(asyncstop))
    }
    assert set(asyncstop.testing.__all__) == public
    for name in asyncstop.testing.__all__:
        value = getattr(asyncstop.testing, name)
        assert value.__doc__, name
        assert value.__module__ == "asyncstop.testing", name


# -- the command line -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("0.02", 0.02), ("0.02s", 0.02), ("1.5s", 1.5), (" 5MS ", 0.005), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """parse_duration reads milliseconds, seconds and bare seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "fast", "-1s", "inf", "nan", "1h"])
def test_parse_duration_refuses(text: str) -> None:
    """parse_duration refuses what is not a finite non-negative duration."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault-rate", "2"], "argument --fault-rate: must be between 0 and 1"),
        (["--port", "99999"], "argument --port: a port is from 0 to 65535"),
        (["--orders", "many"], "argument --orders: 'many' is not a whole number"),
        (["--latency", "fast"], "argument --latency: not a duration"),
    ],
)
def test_main_refuses_bad_arguments(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad argument exits 2 with an argparse message under the command's own name."""
    with pytest.raises(SystemExit) as exit_info:
        asyncstop.testing.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m asyncstop.testing: error: {message}" in err
    assert "Traceback" not in err


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """--help states each option's default, in words where there is no value."""
    with pytest.raises(SystemExit) as exit_info:
        asyncstop.testing.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for stated in (
        "(default: 8080)",
        "stop orders per account (default: 1000)",
        "(default: a random one, printed at start)",
        "(default: no limit)",
        "(default: standard output)",
        "(default: 0.0)",
    ):
        assert stated in text
    assert "(default: None)" not in text


def test_another_command_line_registers_the_same_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """add_fake_exchange_arguments + run_fake_exchange: a taken port is one error line, exit 2."""
    parser = argparse.ArgumentParser(prog="asyncstop fake-exchange")
    asyncstop.testing.add_fake_exchange_arguments(parser)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parser.parse_args(["--port", str(port), "--orders", "1", "--token", TOKEN])
        assert (args.port, args.orders, args.accounts, args.seed) == (port, 1, 1, 0)
        assert asyncstop.testing.run_fake_exchange(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("asyncstop fake-exchange: error: ")
    assert err.count("\n") == 1
    assert TOKEN not in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
async def test_cli_serves_and_exits_on_sigterm(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """python -m asyncstop.testing prints its URL, serves a cancel and exits 0 on SIGTERM."""
    ids_file = tmp_path / "ids.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "asyncstop.testing", "--port", "0", "--orders", "3", "--accounts", "2"),
        *("--token", TOKEN, "--seed", "5", "--ids-out", str(ids_file)),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        header: dict[str, str] = {}
        async with asyncio.timeout(20):
            while "orders" not in header:
                line = (await process.stdout.readline()).decode()
                assert line, "the fake exchange exited before it was ready"
                key, _, value = line.rstrip("\n").partition(": ")
                header[key] = value
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", header["base_url"])
        assert header["token"] == TOKEN
        assert header["accounts"] == "acc-1,acc-2"
        lines = ids_file.read_text().splitlines()
        assert len(lines) == 6
        account_id, order_id = lines[-1].split(",")
        assert account_id == "acc-2"

        async with session.delete(
            header["base_url"] + PATH + order_id, headers=documented_headers(account_id)
        ) as response:
            assert response.status == 200
            assert (await response.json())["order"]["orderId"] == order_id

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_a_hung_request_leaves_in_flight_when_its_client_gives_up(
    session: aiohttp.ClientSession,
) -> None:
    """A hung request stops counting in in_flight once its client has closed the connection."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.hang())
        with pytest.raises(TimeoutError):
            await session.delete(
                exchange.base_url + PATH + order_id,
                headers=documented_headers(),
                timeout=aiohttp.ClientTimeout(total=0.2),
            )
        await wait_until(lambda: exchange.in_flight == 0, timeout=WAIT_LIMIT)
        [entry] = exchange.journal
        assert entry.outcome == "hung"
        assert entry.status is None
        assert order_id in exchange.open_stop_orders()


# -- answers that are not the exchange's (knobs for the evidence rules) ---------------


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
        status, headers, body = await delete(session, exchange, portal)
        assert (status, headers["Content-Type"], body) == (200, "text/html", page)
        status, headers, body = await delete(session, exchange, empty)
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
        status, _, body = await delete(session, exchange, asked)
        order = json.loads(body)["order"]
        assert status == 200
        assert list(order) == DOCUMENTED_FIELDS
        assert order["orderId"] == "01K2MNGAWPMQJ7WGATFSCAS1G4"  # the documented example's id
        assert order["marketId"] == exchange.orders[asked].market_id
        status, _, body = await delete(session, exchange, asked)
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
        status, headers, body = await delete(session, exchange, order_id)
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


async def test_close_ends_an_endless_body_its_client_stopped_reading(
    session: aiohttp.ClientSession,
) -> None:
    """close() ends a stream blocked on a client that no longer reads, without waiting for it."""
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    order_id = exchange.add_stop_order()
    exchange.inject(Fault.endless_body())
    async with session.delete(
        exchange.base_url + PATH + order_id, headers=documented_headers()
    ) as response:
        assert response.status == 200
        loop = asyncio.get_running_loop()
        started = loop.time()
        await exchange.close()
        # The exchange's shutdown timeout is 5 s; a stream left to it would take that long.
        assert loop.time() - started < 4
    assert exchange.in_flight == 0


async def test_fault_gzip_bomb_is_small_on_the_wire_and_large_inflated(
    session: aiohttp.ClientSession,
) -> None:
    """Fault.gzip_bomb(n) sends a valid gzip body about n/1000 bytes long that inflates to n."""
    size = 48 * 1024 * 1024 + 5
    async with FakeExchange(tokens={TOKEN}) as exchange:
        order_id = exchange.add_stop_order()
        exchange.inject(Fault.gzip_bomb(size))
        status, headers, wire = await delete(session, exchange, order_id, auto_decompress=False)
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
        status, _, body = await delete(session, exchange, first)
        assert (status, json.loads(body)["order"]["orderId"]) == (200, first)
        status, _, body = await delete(session, exchange, second)
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
        assert (await delete(session, exchange, first))[0] == 200
        await wait_until(lambda: exchange.stale_replies_sent == 1, timeout=WAIT_LIMIT)
        assert [e.order_id for e in exchange.journal] == [first]  # written with no request
        status, _, body = await delete(session, exchange, second)
        assert (status, json.loads(body)["order"]["orderId"]) == (200, first)


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
    with pytest.raises(ValueError, match="order_id"):
        Fault.other_order("a/b")


# -- GET /accounts and the accounts a token may use --------------------------------------


async def accounts(
    session: aiohttp.ClientSession, exchange: FakeExchange, token: str = TOKEN
) -> tuple[int, Any]:
    """GET /frontoffice/api/v3/accounts as documented; return (status, decoded body)."""
    async with session.get(
        exchange.base_url + ACCOUNTS_PATH,
        headers={"Authorization": f"Bearer {token}", "Accept": "*/*"},
    ) as response:
        return response.status, await response.json(content_type=None)


async def test_get_accounts_lists_the_tokens_accounts(session: aiohttp.ClientSession) -> None:
    """GET /accounts answers the documented array of the token's accounts, in its order."""
    async with FakeExchange(tokens={TOKEN: ["acc-2", "acc-1"], "other": ["acc-3"]}) as exchange:
        exchange.add_account(
            "acc-2",
            account_name="Main",
            account_type="Netting",
            total_balance_in_rat="6020.12",
            is_copy_trading_account=True,
        )
        status, listed = await accounts(session, exchange)
        assert status == 200
        assert listed == [
            {
                "accountId": "acc-2",
                "accountName": "Main",
                "accountType": "Netting",
                "totalBalanceInRAT": "6020.12",
                "isCopyTradingAccount": True,
            },
            {
                "accountId": "acc-1",
                "accountName": "Fake Hedging account acc-1",
                "accountType": "Hedging",
                "totalBalanceInRAT": "10000.00",
                "isCopyTradingAccount": False,
            },
        ]
        assert [a["accountId"] for a in (await accounts(session, exchange, "other"))[1]] == [
            "acc-3"
        ]
        [entry, _] = exchange.journal
        assert (entry.method, entry.status, entry.outcome) == ("GET", 200, "accounts")
        assert entry.account_id is None
        assert exchange.max_in_flight == 0  # not a DELETE in flight


async def test_a_token_without_a_list_may_use_every_account(
    session: aiohttp.ClientSession,
) -> None:
    """A token given in a set lists every account the exchange knows and may cancel on any."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        theirs = exchange.add_stop_order("acc-9")
        exchange.add_stop_orders(2, account_id="acc-1")
        exchange.add_account("acc-empty")
        status, listed = await accounts(session, exchange)
        assert status == 200
        assert [a["accountId"] for a in listed] == ["acc-9", "acc-1", "acc-empty"]
        assert (await delete(session, exchange, theirs, documented_headers("acc-9")))[0] == 200


async def test_get_accounts_refuses_a_refused_token(session: aiohttp.ClientSession) -> None:
    """GET /accounts answers 401 with the error body to a token the exchange does not accept."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        exchange.add_stop_order()
        status, body = await accounts(session, exchange, token="not-accepted")
        assert (status, body["errorCode"]) == (401, 10005)
        assert [(e.method, e.outcome, e.authorized) for e in exchange.journal] == [
            ("GET", "unauthorized", False)
        ]


async def test_a_delete_on_an_account_the_token_may_not_use_is_not_found(
    session: aiohttp.ClientSession,
) -> None:
    """A DELETE on an account outside the token's list gets the not-found 404, cancels nothing."""
    async with FakeExchange(tokens={TOKEN: ["acc-1"]}) as exchange:
        mine = exchange.add_stop_order("acc-1")
        theirs = exchange.add_stop_order("acc-2")
        status, _, body = await delete(session, exchange, theirs, documented_headers("acc-2"))
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert (await delete(session, exchange, mine))[0] == 200
        assert exchange.open_stop_orders() == {theirs}
        assert [e.outcome for e in exchange.journal] == ["account_not_allowed", "cancelled"]
        exchange.token_accounts[TOKEN].append("acc-2")
        assert (await delete(session, exchange, theirs, documented_headers("acc-2")))[0] == 200


async def test_get_accounts_takes_its_own_faults(session: aiohttp.ClientSession) -> None:
    """inject_accounts gives GET /accounts a gateway's HTML page or a 404, then the real list."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        exchange.add_stop_order()
        page = b"<html>Welcome</html>"
        exchange.inject_accounts(
            Fault.reply(200, page, {"Content-Type": "text/html"}), Fault.error(404)
        )
        async with session.get(
            exchange.base_url + ACCOUNTS_PATH, headers=documented_headers()
        ) as response:
            assert (response.status, await response.read()) == (200, page)
        assert (await accounts(session, exchange))[0] == 404
        assert (await accounts(session, exchange))[0] == 200
        assert exchange.pending_faults == 0
        with pytest.raises(ValueError, match="order"):
            exchange.inject_accounts(Fault.other_order())


def test_accounts_are_validated() -> None:
    """Account types other than Hedging and Netting, bad balances and bare-str lists are refused."""
    exchange = FakeExchange(tokens={TOKEN})
    with pytest.raises(ValueError, match="Hedging"):
        exchange.add_account("acc-1", account_type="Cash")
    with pytest.raises(ValueError, match="decimal"):
        exchange.add_account("acc-1", total_balance_in_rat="lots")
    with pytest.raises(TypeError, match="account ids"):
        FakeExchange(tokens={TOKEN: "acc-1"})


# -- a schedule of certain faults ----------------------------------------------------


async def test_a_schedule_fires_by_request_number(session: aiohttp.ClientSession) -> None:
    """schedule={n: fault} gives the n-th request past the gate its fault, ahead of queued ones."""
    async with FakeExchange(
        tokens={TOKEN}, schedule={2: Fault.error(502), 4: Fault.error(504)}
    ) as exchange:
        ids = exchange.add_stop_orders(4)
        exchange.inject_for(ids[1], Fault.error(500))
        assert exchange.pending_faults == 3
        await delete(session, exchange, ids[0], documented_headers(token="refused"))  # gate: 401
        statuses = [(await delete(session, exchange, oid))[0] for oid in ids]
        # ids[1] was request 2: the schedule won, and its own fault waited for its next request.
        assert statuses == [200, 502, 200, 504]
        assert (await delete(session, exchange, ids[1]))[0] == 500
        assert exchange.pending_faults == 0
        assert exchange.requests_numbered == 5
        with pytest.raises(ValueError, match="after the 5 requests"):
            exchange.inject_at(5, Fault.drop())
        exchange.inject_at(6, Fault.drop())
        with pytest.raises(ValueError, match="already"):
            exchange.inject_at(6, Fault.hang())


def test_spread_faults_is_seeded_and_within_range() -> None:
    """spread_faults puts each fault at its own request number, the same for the same seed."""
    faults = [Fault.rate_limited("0.25")] * 5 + [Fault.hang()] * 3
    schedule = spread_faults(faults, within=40, seed=7)
    assert sorted(schedule.values(), key=repr) == sorted(faults, key=repr)
    assert all(1 <= number <= 40 for number in schedule)
    assert spread_faults(faults, within=40, seed=7) == schedule
    assert spread_faults(faults, within=40, seed=8) != schedule
    with pytest.raises(ValueError, match="within"):
        spread_faults(faults, within=7)


# -- judging 429 pauses ---------------------------------------------------------------


async def test_a_loop_stall_after_a_429_is_excused_but_not_a_later_request(
    session: aiohttp.ClientSession,
) -> None:
    """A request stamped late by a stall of the shared loop is excused; one sent later is not."""
    async with FakeExchange(tokens={TOKEN}, pause_grace=0.1) as exchange:
        ids = exchange.add_stop_orders(3)
        exchange.inject(Fault.rate_limited("30"))
        assert (await delete(session, exchange, ids[0]))[0] == 429
        # Stands for a garbage-collector pass or the OS descheduling the process:
        # everything on the loop, the exchange's stamping included, waits.
        time.sleep(0.3)  # noqa: ASYNC251 - the stall is the point
        # Excused like a request inside the grace: it passes, as there is no token bucket.
        assert (await delete(session, exchange, ids[1]))[0] == 200
        assert exchange.pause_violations == []
        await asyncio.sleep(0.6)  # no stall: the loop ran, the client could have read the 429
        assert (await delete(session, exchange, ids[2]))[0] == 429
        assert [e.order_id for e in exchange.pause_violations] == [ids[2]]


# -- wait_until -----------------------------------------------------------------------


async def test_wait_until_returns_once_the_loop_makes_it_true() -> None:
    """wait_until returns as soon as another callback on the loop makes the predicate true."""
    flag: list[bool] = []
    loop = asyncio.get_running_loop()
    loop.call_later(0.05, flag.append, True)
    await wait_until(lambda: flag, timeout=WAIT_LIMIT)
    assert flag == [True]


async def test_wait_until_fails_naming_the_timeout() -> None:
    """wait_until raises AssertionError naming the predicate and the timeout when it stays false."""
    with pytest.raises(AssertionError, match=r"still false after 0\.05 s") as failure:
        await wait_until(lambda: False, timeout=0.05)
    assert "test_fake_exchange.py" in str(failure.value)
    with pytest.raises(ValueError, match="timeout"):
        await wait_until(lambda: True, timeout=0)
