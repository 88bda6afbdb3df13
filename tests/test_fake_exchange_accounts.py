"""GET /accounts on the fake exchange, and the accounts a token may use (``_accounts``)."""

from __future__ import annotations

import aiohttp
import pytest

from asyncstop.testing import (
    FakeExchange,
    Fault,
)

from .helpers import (
    ACCOUNTS_PATH,
    TOKEN,
    documented_headers,
    raw_delete,
    raw_get_accounts,
)


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
        status, listed = await raw_get_accounts(session, exchange)
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
        assert [
            a["accountId"] for a in (await raw_get_accounts(session, exchange, "other"))[1]
        ] == ["acc-3"]
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
        status, listed = await raw_get_accounts(session, exchange)
        assert status == 200
        assert [a["accountId"] for a in listed] == ["acc-9", "acc-1", "acc-empty"]
        assert (await raw_delete(session, exchange, theirs, documented_headers("acc-9")))[0] == 200


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
        assert (await raw_get_accounts(session, exchange))[0] == 404
        assert (await raw_get_accounts(session, exchange))[0] == 200
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
