"""The hand-written clients asyncstop is compared with.

Each sends the same request as asyncstop (same URL, same four headers) and
checks the status; they differ in what they do with the answer and how they
schedule requests:

(a) ``aiohttp_gather(decode=False)``: one task per order, a semaphore, read the body.
(b) ``aiohttp_gather(decode=True)``: the same, plus a msgspec decode of the body
    into a typed struct with the same field types as ``asyncstop.StopOrder``
    (``Decimal`` prices, ``datetime`` timestamps), so that (b) does the work
    asyncstop does, minus asyncstop's own bookkeeping.
(c) ``httpx_gather``: (a) with an ``httpx.AsyncClient``.
(d) ``aiohttp_sequential``: one request at a time on one connection.
``naive_gather``: what many bots do on a kill switch: ``asyncio.gather`` over
    every order at once, each retrying by itself after its own 429's
    ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import TYPE_CHECKING, Final

import aiohttp
import msgspec

import asyncstop

from .common import ACCOUNT_ID, TOKEN
from .servers import STOP_ORDERS_PATH

if TYPE_CHECKING:
    import httpx

__all__ = [
    "aiohttp_gather",
    "aiohttp_sequential",
    "headers_for",
    "httpx_gather",
    "naive_gather",
    "new_aiohttp_session",
]


class _Reply(msgspec.Struct, frozen=True):
    # asyncstop's own wire type, so that (b) decodes exactly what asyncstop decodes.
    order: asyncstop.StopOrder


_decoder: Final = msgspec.json.Decoder(_Reply)

#: The per-request timeout of the hand-written clients: a benchmark must not hang.
_TIMEOUT: Final = 30.0
#: The naive kill switch gives up on an order after this many 429s.
NAIVE_MAX_ATTEMPTS: Final = 30


def headers_for(account_id: str = ACCOUNT_ID) -> dict[str, str]:
    """The documented request headers (the same four asyncstop sends)."""
    return {
        "Authorization": f"Bearer {TOKEN}",
        "accountId": account_id,
        "Content-Type": "application/json; x-api-version=4.0",
        "Accept": "*/*",
    }


def new_aiohttp_session(
    concurrency: int, ssl_context: ssl.SSLContext | None = None
) -> aiohttp.ClientSession:
    """A session whose pool holds ``concurrency`` connections (TLS with ``ssl_context``)."""
    connector = aiohttp.TCPConnector(
        limit=concurrency,
        limit_per_host=concurrency,
        ssl=ssl_context if ssl_context is not None else True,
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=_TIMEOUT),
        cookie_jar=aiohttp.DummyCookieJar(),
    )


async def aiohttp_gather(
    session: aiohttp.ClientSession,
    base_url: str,
    ids: list[str],
    concurrency: int,
    *,
    decode: bool,
) -> int:
    """Baselines (a) and (b). Return how many orders did not get a 200."""
    prefix = base_url + STOP_ORDERS_PATH
    headers = headers_for()
    semaphore = asyncio.Semaphore(concurrency)

    async def cancel(order_id: str) -> bool:
        async with semaphore, session.delete(prefix + order_id, headers=headers) as resp:
            body = await resp.read()
            if resp.status != 200:
                return False
            if decode:
                _decoder.decode(body)
            return True

    results = await asyncio.gather(*(cancel(order_id) for order_id in ids))
    return len(results) - sum(results)


async def aiohttp_sequential(session: aiohttp.ClientSession, base_url: str, ids: list[str]) -> int:
    """Baseline (d): one order after the other. Return how many did not get a 200."""
    prefix = base_url + STOP_ORDERS_PATH
    headers = headers_for()
    failed = 0
    for order_id in ids:
        async with session.delete(prefix + order_id, headers=headers) as resp:
            await resp.read()
            failed += resp.status != 200
    return failed


async def httpx_gather(
    client: httpx.AsyncClient, base_url: str, ids: list[str], concurrency: int
) -> int:
    """Baseline (c). Return how many orders did not get a 200."""
    prefix = base_url + STOP_ORDERS_PATH
    headers = headers_for()
    semaphore = asyncio.Semaphore(concurrency)

    async def cancel(order_id: str) -> bool:
        async with semaphore:
            resp = await client.delete(prefix + order_id, headers=headers)
            return resp.status_code == 200

    results = await asyncio.gather(*(cancel(order_id) for order_id in ids))
    return len(results) - sum(results)


def new_httpx_client(concurrency: int) -> httpx.AsyncClient:
    """An httpx client whose pool holds ``concurrency`` connections."""
    import httpx  # noqa: PLC0415 - a bench-extra dependency, imported where it is used

    return httpx.AsyncClient(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        timeout=_TIMEOUT,
        trust_env=False,
    )


async def naive_gather(
    session: aiohttp.ClientSession, base_url: str, ids: list[str], account_id: str
) -> int:
    """Every order at once; each sleeps its own 429's Retry-After and tries again.

    Return how many orders were still not cancelled after ``NAIVE_MAX_ATTEMPTS``.
    The pool limits the requests in flight (aiohttp's default, 100 connections).
    """
    prefix = base_url + STOP_ORDERS_PATH
    headers = headers_for(account_id)

    async def cancel(order_id: str) -> bool:
        for _ in range(NAIVE_MAX_ATTEMPTS):
            async with session.delete(prefix + order_id, headers=headers) as resp:
                await resp.read()
                if resp.status == 200:
                    return True
                if resp.status != 429:
                    return False
                retry_after = float(resp.headers.get("Retry-After", "1"))
            await asyncio.sleep(retry_after)
        return False

    results = await asyncio.gather(*(cancel(order_id) for order_id in ids))
    return len(results) - sum(results)
