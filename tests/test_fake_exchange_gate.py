"""What the fake exchange refuses at once (``_gate``): tokens, headers, accounts."""

from __future__ import annotations

import json

import aiohttp

from asyncstop.testing import (
    FakeExchange,
)

from .helpers import (
    NOT_FOUND_BODY,
    TOKEN,
    documented_headers,
    raw_delete,
    raw_get_accounts,
)


async def test_unauthorized(session: aiohttp.ClientSession) -> None:
    """401 without an accepted exact-case Bearer token, including one removed to simulate expiry."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        no_auth = documented_headers()
        del no_auth["Authorization"]
        lowercase = documented_headers() | {"Authorization": f"bearer {TOKEN}"}
        for headers in (no_auth, documented_headers(token="wrong"), lowercase):
            status, response_headers, body = await raw_delete(session, exchange, oid, headers)
            assert status == 401
            assert response_headers["WWW-Authenticate"] == "Bearer"
            assert json.loads(body) == {"errorCode": 10005, "message": "Unauthorized", "errors": []}

        exchange.tokens.discard(TOKEN)
        assert (await raw_delete(session, exchange, oid))[0] == 401
        assert exchange.orders[oid].live
        exchange.tokens.add(TOKEN)
        assert (await raw_delete(session, exchange, oid))[0] == 200
        assert [e.authorized for e in exchange.journal] == [False] * 4 + [True]


async def test_missing_account_id_is_400(session: aiohttp.ClientSession) -> None:
    """400 with errorCode 10001 naming accountId when the accountId header is missing."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        oid = exchange.add_stop_order()
        status, _, body = await raw_delete(session, exchange, oid, documented_headers(None))
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
            statuses = [(await raw_delete(session, exchange, ids[0], wrong_type))[0]]
            # aiohttp adds "Accept: */*" unless told not to.
            answer = await raw_delete(
                session, exchange, ids[1], no_accept, skip_auto_headers=["Accept"]
            )
            statuses.append(answer[0])
            statuses.append((await raw_delete(session, exchange, ids[2], data=b"{}"))[0])
            assert statuses == ([400, 400, 400] if strict else [200, 200, 200])


async def test_a_delete_on_an_account_the_token_may_not_use_is_not_found(
    session: aiohttp.ClientSession,
) -> None:
    """A DELETE on an account outside the token's list gets the not-found 404, cancels nothing."""
    async with FakeExchange(tokens={TOKEN: ["acc-1"]}) as exchange:
        mine = exchange.add_stop_order("acc-1")
        theirs = exchange.add_stop_order("acc-2")
        status, _, body = await raw_delete(session, exchange, theirs, documented_headers("acc-2"))
        assert (status, json.loads(body)) == (404, NOT_FOUND_BODY)
        assert (await raw_delete(session, exchange, mine))[0] == 200
        assert exchange.open_stop_orders() == {theirs}
        assert [e.outcome for e in exchange.journal] == ["account_not_allowed", "cancelled"]
        exchange.token_accounts[TOKEN].append("acc-2")
        assert (await raw_delete(session, exchange, theirs, documented_headers("acc-2")))[0] == 200


async def test_get_accounts_refuses_a_refused_token(session: aiohttp.ClientSession) -> None:
    """GET /accounts answers 401 with the error body to a token the exchange does not accept."""
    async with FakeExchange(tokens={TOKEN}) as exchange:
        exchange.add_stop_order()
        status, body = await raw_get_accounts(session, exchange, token="not-accepted")
        assert (status, body["errorCode"]) == (401, 10005)
        assert [(e.method, e.outcome, e.authorized) for e in exchange.journal] == [
            ("GET", "unauthorized", False)
        ]
