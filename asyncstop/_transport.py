"""The HTTP boundary: the connection pool, one request to one reply or one ``APIError``.

Everything aiohttp raises is mapped to the error tree here and nowhere else, as
httpx maps its transport's errors at one boundary. This module knows nothing of
retries, accounts or deadlines: it sends what it is given, within the time
limits it is given.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Final

import aiohttp
from yarl import URL

from ._constants import DEFAULT_CONNECT_TIMEOUT, DEFAULT_TIMEOUT, STOP_ORDERS_PATH
from ._errors import (
    APIConnectionError,
    APIStatusError,
    APITimeoutError,
    RateLimitError,
    ResponseValidationError,
    status_error,
)
from ._logging import logger
from ._models import StopOrder, UndecodableReply, decode_stop_order
from ._retry import parse_retry_after
from ._validation import check_count, check_seconds

__all__ = ["Timeout", "Transport"]


@dataclass(frozen=True, slots=True)
class Timeout:
    """Time limits of one attempt, in seconds.

    ``total`` bounds the whole attempt (connecting, sending, reading the reply);
    ``connect`` bounds getting a connection (from the pool or a new one) within it.
    A bulk call's deadline cuts both to the time left.
    """

    total: float = DEFAULT_TIMEOUT
    connect: float | None = DEFAULT_CONNECT_TIMEOUT

    def __post_init__(self) -> None:
        check_seconds("Timeout.total", self.total)
        if self.connect is not None:
            check_seconds("Timeout.connect", self.connect)

    def limits(self, time_left: float | None = None) -> aiohttp.ClientTimeout:
        """aiohttp's limits for one attempt, cut to ``time_left`` seconds when that is shorter."""
        total, connect = self.total, self.connect
        if time_left is not None and time_left < total:
            total = time_left
            connect = None if connect is None else min(connect, time_left)
        return aiohttp.ClientTimeout(total=total, connect=connect)


class Transport:
    """Owns (or borrows) the aiohttp session, and turns one request into a reply or an error."""

    def __init__(
        self,
        base_url: str,
        *,
        timeout: Timeout,
        max_connections: int,
        session: aiohttp.ClientSession | None,
    ) -> None:
        self.base_url: Final = base_url
        self.timeout: Final = timeout
        self.max_connections: Final = max_connections
        self.default_limits: Final = timeout.limits()
        self._url_prefix = base_url + STOP_ORDERS_PATH
        # Each request's URL is built from this parsed prefix with encoded=True:
        # order ids are checked to need no quoting, so aiohttp need not parse a
        # string per request (see benchmarks/README.md, "Profile").
        self._url_root = URL(self._url_prefix)
        self._url_path = self._url_root.raw_path
        self._user_session = session
        self._session: aiohttp.ClientSession | None = None

    @property
    def owns_session(self) -> bool:
        """True when asyncstop created the session (and so sizes and closes the pool)."""
        return self._user_session is None

    @property
    def is_open(self) -> bool:
        """True between :meth:`open` and :meth:`close`."""
        return self._session is not None

    def open(self) -> None:
        """Create the pool (or adopt the caller's session)."""
        if self._user_session is not None:
            self._session = self._user_session
            return
        connector = aiohttp.TCPConnector(
            limit=self.max_connections, limit_per_host=self.max_connections
        )
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.default_limits,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        # aiohttp re-sends an idempotent request once after a dropped
        # keep-alive connection, unseen by its caller; the attribute is
        # private, present in every aiohttp version pyproject allows.
        # Turning it off makes every attempt exactly one request on the
        # wire, and the retry policy owns every retry.
        session._retry_connection = False
        self._session = session

    async def close(self) -> None:
        """Close the pool if asyncstop created it; a caller's session is left open."""
        session, self._session = self._session, None
        if session is not None and session is not self._user_session:
            await session.close()

    def _require_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            raise RuntimeError("this AsyncStopClient was closed while a request was running")
        return session

    async def delete_stop_order(
        self, order_id: str, headers: dict[str, str], limits: aiohttp.ClientTimeout
    ) -> StopOrder:
        """Send one Cancel Stop order request; return the order or raise an ``APIError``."""
        session = self._require_session()
        try:
            async with session.request(
                "DELETE",
                self._url_root.with_path(self._url_path + order_id, encoded=True),
                headers=headers,
                allow_redirects=False,
                timeout=limits,
            ) as resp:
                body = await resp.read()
                status = resp.status
                if status < 300:
                    try:
                        return decode_stop_order(body, order_id)
                    except UndecodableReply as err:
                        raise ResponseValidationError(
                            f"HTTP {status} for order {order_id}, but the body is not a "
                            f"Cancel Stop order reply: {err}",
                            body=body,
                            status_code=status,
                            order_id=order_id,
                        ) from None
                raise _error_for(resp, body, order_id)
        except TimeoutError as err:
            raise APITimeoutError(
                f"no answer for order {order_id} within the attempt's time limit",
                order_id=order_id,
            ) from err
        except aiohttp.ClientError as err:
            raise APIConnectionError(
                f"connection failed for order {order_id}: {type(err).__name__}: {err}",
                order_id=order_id,
            ) from err

    async def warm_up(self, connections: int | None) -> int:
        """Open keep-alive connections with safe HEAD requests; return how many were answered."""
        session = self._require_session()
        count = self.max_connections if connections is None else connections
        check_count("connections", count, minimum=1)

        async def head() -> bool:
            try:
                async with session.head(
                    self._url_prefix, allow_redirects=False, timeout=self.default_limits
                ) as resp:
                    await resp.read()
            except (aiohttp.ClientError, TimeoutError) as err:
                logger.info("warm-up request failed: %s", err)
                return False
            return True

        answered = sum(await asyncio.gather(*(head() for _ in range(count))))
        logger.debug("warm-up: %d of %d requests answered", answered, count)
        if answered == 0:
            raise APIConnectionError(
                f"warm-up: none of {count} requests to {self.base_url} got an answer"
            )
        return answered


def _error_for(resp: aiohttp.ClientResponse, body: bytes, order_id: str) -> APIStatusError:
    status = resp.status
    if 300 <= status < 400:
        # Following would send the token to wherever Location points.
        return APIStatusError(
            f"HTTP {status} redirect for order {order_id} refused: asyncstop never "
            f"follows redirects with the token (Location: {resp.headers.get('Location')!r})",
            status_code=status,
            body=body,
            order_id=order_id,
        )
    err = status_error(
        status,
        body,
        reason=resp.reason,
        request_id=resp.headers.get("X-Request-Id"),
        order_id=order_id,
    )
    if isinstance(err, RateLimitError):
        err.retry_after = parse_retry_after(resp.headers.get("Retry-After"))
    return err
