"""Every public entry point refuses bad input with InvalidInputError before anything is sent."""

from __future__ import annotations

import math

import pytest

import asyncstop
from asyncstop.testing import FakeExchange

from .helpers import ACCOUNT, TOKEN, ClientFactory

BASE = "http://127.0.0.1:9"


def make(**overrides: object) -> asyncstop.AsyncStopClient:
    """A client built with good settings except ``overrides``."""
    settings: dict[str, object] = {"base_url": BASE, "token": TOKEN, "account_id": ACCOUNT}
    settings.update(overrides)
    return asyncstop.AsyncStopClient(**settings)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("max_concurrency", True),
        ("max_concurrency", 0),
        ("max_concurrency", 2.0),
        ("max_retries", False),
        ("max_retries", -1),
        ("rate_limit", math.inf),
        ("rate_limit", math.nan),
        ("rate_limit", 0),
        ("rate_limit", True),
        ("timeout", math.inf),
        ("timeout", 0),
        ("max_retry_after", math.nan),
        ("max_retry_after", -1),
    ],
)
def test_client_settings_are_refused_when_built(setting: str, value: object) -> None:
    """A bool where an int is meant, or a non-finite or non-positive time or rate, is refused."""
    with pytest.raises(asyncstop.InvalidInputError, match=setting.split("_", maxsplit=1)[0]):
        make(**{setting: value})


@pytest.mark.parametrize(
    ("base_url", "fix"),
    [
        ("https://host.example/frontoffice/api/v3/", "API path"),
        ("https://host.example/frontoffice/api/v3/stop-orders", "API path"),
        ("https://host.example?", "query or fragment"),
        ("https://host.example/?", "query or fragment"),
        ("https://host.example#", "query or fragment"),
        ("https://host.example/?a=1", "query or fragment"),
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:0", "port"),
        ("http://127.0.0.1:http", "port"),
        ("https://user:pw@host.example", "credentials"),
        ("ftp://host.example", "https://"),
        (" http://host.example", "whitespace"),
    ],
)
def test_base_urls_that_would_build_the_wrong_url_are_refused(base_url: str, fix: str) -> None:
    """A base URL with the API prefix, a query, a fragment, a bad port or userinfo is refused."""
    with pytest.raises(asyncstop.InvalidInputError, match=fix):
        make(base_url=base_url)


def test_a_base_url_with_a_path_prefix_and_trailing_slash_is_kept() -> None:
    """A gateway prefix such as /api is allowed, and the trailing slash is dropped."""
    assert make(base_url="https://host.example/gateway/").base_url == "https://host.example/gateway"


def test_a_bearer_prefixed_token_names_the_actual_mistake() -> None:
    """``Bearer abc`` is refused for its prefix, not for its whitespace, and is not echoed."""
    with pytest.raises(asyncstop.InvalidInputError, match='without the "Bearer " prefix') as info:
        make(token="Bearer abc123secret")
    assert "abc123secret" not in str(info.value)


@pytest.mark.parametrize(
    ("settings", "name"),
    [
        ({"concurrency": True}, "concurrency"),
        ({"concurrency": 0}, "concurrency"),
        ({"rate_limit": math.inf}, "rate_limit"),
        ({"deadline": math.inf}, "deadline"),
        ({"deadline": -1.0}, "deadline"),
    ],
)
async def test_bulk_settings_are_refused_before_anything_is_sent(
    make_client: ClientFactory, exchange: FakeExchange, settings: dict[str, object], name: str
) -> None:
    """``rate_limit=inf`` (which used to hang forever) and a bool concurrency are refused."""
    client = await make_client()
    with pytest.raises(asyncstop.InvalidInputError, match=name):
        await client.cancel_stop_orders(["o-1"], **settings)  # type: ignore[arg-type]
    assert exchange.journal == []


@pytest.mark.parametrize("item", [("acc", "o-1", "extra"), 42, ("acc",), None, b"o-1", ("acc", 7)])
async def test_malformed_order_items_are_refused_with_their_position(
    make_client: ClientFactory, exchange: FakeExchange, item: object
) -> None:
    """A 3-tuple, an int or bytes among the orders is refused, naming its index."""
    client = await make_client()
    with pytest.raises(asyncstop.InvalidInputError, match=r"orders\[1\]"):
        await client.cancel_stop_orders(["o-1", item])  # type: ignore[list-item]
    assert exchange.journal == []


@pytest.mark.parametrize("item", [("acc", "o-1", "extra"), 42, ("acc", 7), ("", "o-1"), "a/b"])
async def test_the_registry_and_the_bulk_call_refuse_an_item_with_one_message(
    make_client: ClientFactory, item: object
) -> None:
    """StopOrderRegistry and cancel_stop_orders apply the same item rule, word for word."""
    client = await make_client()
    with pytest.raises(asyncstop.InvalidInputError) as bulk:
        await client.cancel_stop_orders([item])  # type: ignore[list-item]
    with pytest.raises(asyncstop.InvalidInputError) as registry:
        asyncstop.StopOrderRegistry([item])  # type: ignore[list-item]
    assert str(bulk.value).endswith(str(registry.value))
