"""The HTTP boundary: the connection pool, one request to one reply or one ``APIError``.

Everything aiohttp raises is mapped to the error tree here and nowhere else, as
httpx maps its transport's errors at one boundary. This module knows nothing of
retries, accounts or deadlines: it sends what it is given, within the time
limits it is given, reads at most ``max_body_size`` bytes of any reply, and
tells whether each request reached the wire.
"""

from __future__ import annotations

import asyncio
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Final

import aiohttp
from aiohttp.abc import AbstractResolver
from yarl import URL

from ._constants import (
    ACCOUNTS_PATH,
    API_ACCEPT,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TIMEOUT,
    MAX_ERROR_BODY_KEPT,
    STOP_ORDERS_PATH,
)
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    RateLimitError,
    ResponseValidationError,
    status_error,
)
from ._logging import logger
from ._models import (
    OtherOrderReply,
    StopOrder,
    TradingAccount,
    UndecodableReply,
    decode_accounts,
    decode_stop_order,
)
from ._pool import CleanConnector, DaemonThreadResolver
from ._retry import parse_retry_after
from ._validation import check_count, check_seconds

__all__ = ["Timeout", "Transport"]

#: Encodings the transport decompresses itself, with a bound on the output.
_ZLIB_WBITS: Final = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": 47}


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
        max_body_size: int,
        session: aiohttp.ClientSession | None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.base_url: Final = base_url
        self.timeout: Final = timeout
        self.max_connections: Final = max_connections
        self.max_body_size: Final = max_body_size
        self.default_limits: Final = timeout.limits()
        self._resolver = resolver
        self._accounts_url = URL(base_url + ACCOUNTS_PATH)
        self._url_prefix = base_url + STOP_ORDERS_PATH
        # Each request's URL is built from this parsed prefix with encoded=True:
        # order ids are checked to need no quoting, so aiohttp need not parse a
        # string per request (see benchmarks/README.md, "Profile").
        self._url_root = URL(self._url_prefix)
        self._url_path = self._url_root.raw_path
        self._user_session = session
        self._session: aiohttp.ClientSession | None = None
        #: The session of confirmations on new connections (see _fresh_session).
        self._fresh: aiohttp.ClientSession | None = None
        #: A stray answer has shown on this client's connections (see saw_stray).
        self.stray_seen = False
        self._shared_resolver: AbstractResolver | None = None

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
        self._shared_resolver = self._resolver or DaemonThreadResolver()
        connector = CleanConnector(
            limit=self.max_connections,
            limit_per_host=self.max_connections,
            resolver=self._shared_resolver,
        )
        connector.on_stray = self.saw_stray
        self._session = self._new_session(connector)

    def saw_stray(self) -> None:
        """A stray answer showed on a keep-alive connection: confirm 404s on new ones from now.

        A 404 read on a reused connection is confirmed by a second request
        (see :class:`~._attempt.Canceller`). On a pooled connection that costs
        one request; but where the path to the exchange writes stray answers,
        the second one may read a stray too. So once one has shown (a pooled
        connection set aside, a reply about another order, a 404 a second
        request overruled), confirmations go on new connections, closed after
        them: a connection's set-up each, and no earlier answer on them.
        """
        if not self.stray_seen:
            self.stray_seen = True
            logger.warning(
                "a stray answer showed on a keep-alive connection to %s: from now on a 404 "
                "read on a reused connection is confirmed on a new one",
                self.base_url,
            )

    def _new_session(self, connector: aiohttp.TCPConnector) -> aiohttp.ClientSession:
        trace = aiohttp.TraceConfig()
        trace.on_request_headers_sent.append(_mark_sent)
        trace.on_connection_reuseconn.append(_mark_reused)
        trace.on_connection_create_end.append(_mark_fresh)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self.default_limits,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
            # Decompressed here, with a bound on the output (see _read_body); asked
            # for only in the encodings that can be, whatever aiohttp would offer
            # (it adds br and zstd when their packages are installed).
            auto_decompress=False,
            headers={"Accept-Encoding": "gzip, deflate"},
            trace_configs=[trace],
        )
        # aiohttp re-sends an idempotent request once after a dropped
        # keep-alive connection, unseen by its caller; the attribute is
        # private, present in every aiohttp version pyproject allows.
        # Turning it off makes every attempt exactly one request on the
        # wire, and the retry policy owns every retry.
        session._retry_connection = False
        return session

    def _fresh_session(self) -> aiohttp.ClientSession:
        """A session whose every request opens a connection of its own and closes it.

        Once strays have shown (:meth:`saw_stray`), a 404 read on a reused
        connection is confirmed here, on a new connection, which carries no
        earlier answer. Created on first use, with its own bound on connections.
        """
        self._require_session()
        session = self._fresh
        if session is None:
            session = self._fresh = self._new_session(
                aiohttp.TCPConnector(
                    force_close=True,
                    limit=self.max_connections,
                    limit_per_host=self.max_connections,
                    resolver=self._shared_resolver,
                )
            )
        return session

    async def close(self) -> None:
        """Close the pool if asyncstop created it; a caller's session is left open."""
        session, self._session = self._session, None
        fresh, self._fresh = self._fresh, None
        if fresh is not None:
            await fresh.close()
        if session is not None and session is not self._user_session:
            await session.close()

    def _require_session(self) -> aiohttp.ClientSession:
        session = self._session
        if session is None:
            raise RuntimeError("this AsyncStopClient was closed while a request was running")
        return session

    async def delete_stop_order(
        self,
        order_id: str,
        headers: dict[str, str],
        limits: aiohttp.ClientTimeout,
        on_sent: Callable[[], object] | None = None,
        on_answer: Callable[[bool], object] | None = None,
        *,
        fresh: bool = False,
    ) -> StopOrder:
        """Send one Cancel Stop order request; return the order or raise an ``APIError``.

        ``on_sent()`` is called the moment the request reaches the wire (its
        headers are sent), so that a caller interrupted mid-request still knows
        whether the exchange may have seen it. ``on_answer(reused)`` is called
        when an answer arrives, with True if it came on a keep-alive connection
        used before (or on a caller's session, where that is not known): only
        such an answer can be a stray one meant for an earlier request. ``fresh``
        sends it on a new connection, closed after it (on asyncstop's own pool). Only
        this order's own reply is a success: any other 2xx raises
        ``ResponseValidationError`` and the connection it came on is closed,
        since a stray reply on it would be read as the next request's answer.
        """
        url = self._url_root.with_path(self._url_path + order_id, encoded=True)
        sent = SimpleNamespace(sent=False, on_sent=on_sent, reused=not self.owns_session)
        session = self._fresh_session() if fresh and self.owns_session else self._require_session()
        try:
            async with session.request(
                "DELETE",
                url,
                headers=headers,
                allow_redirects=False,
                timeout=limits,
                trace_request_ctx=sent,
            ) as resp:
                if not self.owns_session:
                    _mark(sent)
                if on_answer is not None:
                    on_answer(sent.reused)
                body, complete = await self._read_body(
                    resp, self.max_body_size, f"for order {order_id}", order_id
                )
                status = resp.status
                if status >= 300:
                    if not complete:
                        resp.close()
                    raise _error_for(resp, body, f"order {order_id}", order_id)
                try:
                    if not complete:
                        raise UndecodableReply(f"a body over {self.max_body_size} bytes")
                    return decode_stop_order(body, order_id)
                except UndecodableReply as err:
                    resp.close()
                    if isinstance(err, OtherOrderReply):
                        self.saw_stray()
                    raise _not_evidence(
                        resp, body, f"for order {order_id}", err, order_id
                    ) from None
        except APIError:
            raise
        except (TimeoutError, aiohttp.ClientError) as err:
            sent_it = self._sent(sent, err)
            raise _connection_error(err, f"order {order_id}", sent_it, order_id) from err

    async def get_accounts(self, authorization: str) -> list[TradingAccount]:
        """``GET /frontoffice/api/v3/accounts``: the accounts the token may use."""
        what = "the accounts list"
        sent = SimpleNamespace(sent=False, on_sent=None, reused=not self.owns_session)
        session = self._require_session()
        try:
            async with session.get(
                self._accounts_url,
                headers={"Authorization": authorization, "Accept": API_ACCEPT},
                allow_redirects=False,
                timeout=self.default_limits,
                trace_request_ctx=sent,
            ) as resp:
                # Many accounts make a longer list than any cancel reply.
                body, complete = await self._read_body(
                    resp, 16 * self.max_body_size, f"for {what}", None
                )
                if resp.status >= 300:
                    raise _error_for(resp, body, what, None)
                try:
                    if not complete:
                        raise UndecodableReply("a body over the size limit")
                    return decode_accounts(body)
                except UndecodableReply as err:
                    raise _not_evidence(resp, body, f"for {what}", err, None) from None
        except APIError:
            raise
        except (TimeoutError, aiohttp.ClientError) as err:
            raise _connection_error(err, what, self._sent(sent, err), None) from err

    def _sent(self, trace: SimpleNamespace, err: BaseException) -> bool:
        """Whether the failed request reached the wire."""
        if not self.owns_session and not trace.sent:
            # A caller's session has no trace hook of ours: judge by the error.
            if isinstance(err, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError):
                return False
            _mark(trace)
        return bool(trace.sent)

    async def _read_body(
        self, resp: aiohttp.ClientResponse, limit: int, what: str, order_id: str | None
    ) -> tuple[bytes, bool]:
        """Up to ``limit`` bytes of the (decompressed) body, and whether that was all of it.

        A body in an encoding we cannot decode (br, zstd, a broken gzip) is no
        evidence of anything, whatever its status: ResponseValidationError,
        retried like a 5xx, then ``unknown``.
        """
        content = resp.content
        length = resp.content_length
        if length is not None and length > limit:
            return await content.read(MAX_ERROR_BODY_KEPT), False
        if length is not None:
            # The usual reply: its length is known and within the limit, so one
            # read takes it whole, without the chunked loop's copies.
            body = await resp.read()
            complete = True
        else:
            chunks = bytearray()
            while len(chunks) <= limit:
                chunk = await content.read(limit + 1 - len(chunks))
                if not chunk:
                    break
                chunks += chunk
            complete = len(chunks) <= limit
            body = bytes(chunks[:limit]) if complete else bytes(chunks[:MAX_ERROR_BODY_KEPT])
        encoding = resp.headers.get("Content-Encoding")
        if encoding is not None and self.owns_session:
            encoding = encoding.strip().lower()
            if encoding != "identity":
                if not complete:
                    return body[:MAX_ERROR_BODY_KEPT], False
                try:
                    return _decompress(body, encoding, limit)
                except UndecodableReply as err:
                    resp.close()
                    raise _not_evidence(
                        resp, body[:MAX_ERROR_BODY_KEPT], what, err, order_id
                    ) from None
        return body, complete

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


async def _mark_sent(
    _session: aiohttp.ClientSession, context: SimpleNamespace, _params: object
) -> None:
    """aiohttp's signal that the request headers went out: the request reached the wire."""
    _mark(context.trace_request_ctx)


async def _mark_reused(
    _session: aiohttp.ClientSession, context: SimpleNamespace, _params: object
) -> None:
    """aiohttp's signal that the request takes a pooled keep-alive connection."""
    if context.trace_request_ctx is not None:
        context.trace_request_ctx.reused = True


async def _mark_fresh(
    _session: aiohttp.ClientSession, context: SimpleNamespace, _params: object
) -> None:
    """aiohttp's signal that the request opened a new connection (after any set aside)."""
    if context.trace_request_ctx is not None:
        context.trace_request_ctx.reused = False


def _mark(request: SimpleNamespace | None) -> None:
    if request is not None and not request.sent:
        request.sent = True
        if request.on_sent is not None:
            request.on_sent()


def _decompress(body: bytes, encoding: str, limit: int) -> tuple[bytes, bool]:
    """Decompress at most ``limit`` bytes: a gzip bomb costs no more than a plain body."""
    wbits = _ZLIB_WBITS.get(encoding)
    if wbits is None:
        raise UndecodableReply(f"an unsupported Content-Encoding {encoding!r}")
    decompressor = zlib.decompressobj(wbits)
    try:
        out = decompressor.decompress(body, limit + 1)
    except zlib.error as err:
        raise UndecodableReply(f"a broken {encoding} body ({err})") from None
    if len(out) > limit or decompressor.unconsumed_tail:
        return out[:MAX_ERROR_BODY_KEPT], False
    return out, True


def _connection_error(
    err: BaseException, what: str, sent: bool, order_id: str | None
) -> APIConnectionError:
    if isinstance(err, TimeoutError):
        where = "within the attempt's time limit" if sent else "before the request could be sent"
        return APITimeoutError(
            f"no answer for {what} {where}", order_id=order_id, request_sent=sent
        )
    return APIConnectionError(
        f"connection failed for {what}{'' if sent else ' (nothing was sent)'}: "
        f"{type(err).__name__}: {err}",
        order_id=order_id,
        request_sent=sent,
    )


def _not_evidence(
    resp: aiohttp.ClientResponse,
    body: bytes,
    what: str,
    reason: UndecodableReply,
    order_id: str | None,
) -> ResponseValidationError:
    content_type = resp.headers.get("Content-Type")
    return ResponseValidationError(
        f"HTTP {resp.status} {what}, but the body is not the expected reply: {reason}; "
        f"Content-Type {content_type!r}, body starts {body[:80]!r}",
        body=body,
        status_code=resp.status,
        order_id=order_id,
        content_type=content_type,
    )


def _error_for(
    resp: aiohttp.ClientResponse, body: bytes, what: str, order_id: str | None
) -> APIError:
    status = resp.status
    if status == 404 and "json" not in resp.headers.get("Content-Type", "").lower():
        # A 404 is the evidence that an order is not live, so it must be the API's:
        # an HTML or empty 404 comes from a proxy, a gateway or a wrong path, and
        # says nothing about the order (retried like a 5xx, then unknown).
        return _not_evidence(
            resp,
            body,
            f"for {what}",
            UndecodableReply("a 404 that is not the API's JSON answer"),
            order_id,
        )
    if 300 <= status < 400:
        # Following would send the token to wherever Location points.
        return APIStatusError(
            f"HTTP {status} redirect for {what} refused: asyncstop never "
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
