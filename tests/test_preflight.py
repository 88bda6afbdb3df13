"""preflight(): the base URL, the token and the account are checked before an emergency."""

from __future__ import annotations

from decimal import Decimal

import pytest

import asyncstop
from asyncstop.testing import FakeExchange, Fault

from .helpers import ACCOUNT, TOKEN, ClientFactory


async def test_preflight_returns_the_tokens_accounts_typed(make_client: ClientFactory) -> None:
    """The accounts come back as TradingAccount with a Decimal balance, and nothing is cancelled."""
    client = await make_client()
    accounts = await client.preflight()
    assert [a.account_id for a in accounts] == [ACCOUNT]
    (account,) = accounts
    assert isinstance(account, asyncstop.TradingAccount)
    assert isinstance(account.total_balance_in_rat, Decimal)
    assert account.account_type in ("Hedging", "Netting")


async def test_an_account_the_token_may_not_use_is_named(make_client: ClientFactory) -> None:
    """The client's account missing from the list raises AccountNotFoundError naming it."""
    client = await make_client(account_id="acc-other")
    with pytest.raises(asyncstop.AccountNotFoundError, match="acc-other") as caught:
        await client.preflight()
    assert caught.value.available == [ACCOUNT]


async def test_a_refused_token_fails_the_preflight(make_client: ClientFactory) -> None:
    """A token the exchange refuses raises AuthenticationError."""
    client = await make_client(token="NOT-THE-TOKEN")
    with pytest.raises(asyncstop.AuthenticationError):
        await client.preflight()


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (Fault.error(404), asyncstop.OrderNotFoundError),
        (
            Fault.reply(200, b"<html>portal</html>", {"Content-Type": "text/html"}),
            asyncstop.ResponseValidationError,
        ),
        (Fault.reply(200, b'{"accounts": []}'), asyncstop.ResponseValidationError),
    ],
)
async def test_a_base_url_that_does_not_reach_the_api_fails_the_preflight(
    exchange: FakeExchange,
    make_client: ClientFactory,
    fault: Fault,
    error: type[asyncstop.APIError],
) -> None:
    """A 404, an HTML page or anything but a JSON list of accounts raises an APIError."""
    exchange.inject_accounts(fault)
    client = await make_client()
    with pytest.raises(error):
        await client.preflight()


async def test_a_provider_is_asked_once_more_after_a_401(
    exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """With a token provider, a 401 on the preflight is cured by one fresh token."""
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        return TOKEN

    exchange.inject_accounts(Fault.unauthorized())
    client = await make_client(token=provider)
    assert [a.account_id for a in await client.preflight()] == [ACCOUNT]
    assert calls == 2
