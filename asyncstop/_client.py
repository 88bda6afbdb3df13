"""AsyncStopClient: the HTTP layer for Cancel Stop order, one request per attempt.

The bulk engine (``_bulk.py``) and the single call share one attempt function,
:meth:`AsyncStopClient._attempt`, so both honour the same account-wide 429
pause, rate limit, token refresh and error mapping.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterable, Awaitable, Callable, Iterable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

import aiohttp
from aiolimiter import AsyncLimiter
from yarl import URL

from ._bulk import run_bulk_cancel
from ._call import Account, CancelCall, DeadlinePassed
from ._constants import (
    API_ACCEPT,
    API_CONTENT_TYPE,
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_RATE_LIMIT_PAUSE,
    DEFAULT_TIMEOUT,
    MIN_ATTEMPT_BUDGET,
    RATE_LIMIT_TOLERANCE,
    STOP_ORDERS_PATH,
)
from ._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AuthenticationError,
    InvalidInputError,
    OrderNotFoundError,
    RateLimitError,
    ResponseValidationError,
    status_error,
)
from ._logging import logger, setup_logging_from_env
from ._models import StopOrder, UndecodableReply, decode_stop_order
from ._retry import RetryPolicy, is_retryable, outcome_unknown, parse_retry_after
from ._validation import check_account_id, check_base_url, check_order_id, check_token

if TYPE_CHECKING:
    from ._bulk import CancelReport, CancelResult, OrderItem

__all__ = ["AsyncStopClient", "Timeout", "TokenProvider"]

#: An async callable that returns a fresh bearer token (the bare JWT).
TokenProvider = Callable[[], Awaitable[str]]


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
        if not self.total > 0:
            raise InvalidInputError(f"Timeout.total must be > 0 seconds, not {self.total!r}")
        if self.connect is not None and not self.connect > 0:
            raise InvalidInputError(f"Timeout.connect must be > 0 seconds, not {self.connect!r}")


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class AsyncStopClient:
    """A client for Cancel Stop order (``DELETE /frontoffice/api/v3/stop-orders/{orderId}``).

    Use it as an async context manager inside a running event loop::

        async with AsyncStopClient(base_url=..., token=..., account_id=...) as client:
            order = await client.cancel_stop_order("01K2MNGAWPMQJ7WGATFSCAS1G4")
            report = await client.cancel_stop_orders(order_ids, deadline=5.0)

    ``token`` is the bare JWT, or an async callable returning one: it is called
    when the client opens and again after a 401, and the refused request is then
    sent once more with the new token. ``max_concurrency`` sizes the keep-alive
    connection pool and is the default bulk concurrency. ``timeout`` applies to
    each attempt (seconds or a :class:`Timeout`). ``max_retries`` counts retries
    after the first attempt (0 disables them). ``max_retry_after`` caps how long
    a server's ``Retry-After`` is obeyed within one call. ``rate_limit``, in
    requests per second per account, paces every request proactively (``None``:
    no pacing; a 429 still pauses the account).

    A ``session`` of your own is used as it is and never closed by asyncstop. Its
    connector then sets the pool, and aiohttp may silently re-send a request
    once after a dropped keep-alive connection (asyncstop turns that off only on
    the session it creates, so that every attempt is exactly one request).
    """

    def __init__(
        self,
        *,
        base_url: str,
        token: str | TokenProvider,
        account_id: str | None = None,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        timeout: float | Timeout = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_retry_after: float = DEFAULT_MAX_RETRY_AFTER,
        rate_limit: float | None = None,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.base_url: Final = check_base_url(base_url)
        self.account_id: Final = None if account_id is None else check_account_id(account_id)
        if isinstance(token, str):
            self._token: str | None = check_token(token)
            self._token_provider: TokenProvider | None = None
        elif callable(token):
            self._token, self._token_provider = None, token
        else:
            raise InvalidInputError("token must be a str or an async callable returning a str")
        if not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise InvalidInputError(f"max_concurrency must be an int >= 1, not {max_concurrency!r}")
        if not isinstance(max_retries, int) or max_retries < 0:
            raise InvalidInputError(f"max_retries must be an int >= 0, not {max_retries!r}")
        if not max_retry_after >= 0:
            raise InvalidInputError(f"max_retry_after must be >= 0, not {max_retry_after!r}")
        if rate_limit is not None and not rate_limit > 0:
            raise InvalidInputError(
                f"rate_limit must be > 0 requests/s or None, not {rate_limit!r}"
            )
        self.max_concurrency: Final = max_concurrency
        self.timeout: Final = timeout if isinstance(timeout, Timeout) else Timeout(total=timeout)
        self.max_retries: Final = max_retries
        self.rate_limit: Final = rate_limit
        self._retry_policy = RetryPolicy(max_retries=max_retries, max_retry_after=max_retry_after)
        self._client_timeout = aiohttp.ClientTimeout(
            total=self.timeout.total, connect=self.timeout.connect
        )
        self._url_prefix = self.base_url + STOP_ORDERS_PATH
        # Each request's URL is built from this parsed prefix with encoded=True:
        # order ids are checked to need no quoting, and aiohttp then skips
        # parsing a string per request (about 2.4 us of a 72 us cancel).
        self._url_root = URL(self._url_prefix)
        self._url_path = self._url_root.raw_path
        self._user_session = session
        self._session: aiohttp.ClientSession | None = None
        self._state = _State.UNOPENED
        self._accounts: dict[str, Account] = {}
        self._limiters: dict[str, AsyncLimiter] = {}
        self._token_generation = 0
        self._token_lock: asyncio.Lock | None = None
        setup_logging_from_env()

    def __repr__(self) -> str:
        return (
            f"<AsyncStopClient base_url={self.base_url!r} account_id={self.account_id!r} "
            f"state={self._state.value}>"
        )

    # -- lifetime ----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def open(self) -> None:
        """Open the connection pool (and fetch a token from the provider, if one was given)."""
        if self._state is _State.OPENED:
            return
        if self._state is _State.CLOSED:
            raise RuntimeError(
                "this AsyncStopClient is closed and cannot be reopened: "
                "its connection pool is gone; create a new client"
            )
        self._token_lock = asyncio.Lock()
        if self._token_provider is not None:
            self._token = check_token(await self._token_provider())
        if self._user_session is not None:
            self._session = self._user_session
        else:
            connector = aiohttp.TCPConnector(
                limit=self.max_concurrency, limit_per_host=self.max_concurrency
            )
            session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._client_timeout,
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
            # aiohttp re-sends an idempotent request once after a dropped
            # keep-alive connection, unseen by its caller; the attribute is
            # private, present in every aiohttp version pyproject allows.
            # Turning it off makes every attempt exactly one request on the
            # wire, and tenacity owns every retry.
            session._retry_connection = False
            self._session = session
        self._state = _State.OPENED

    async def aclose(self) -> None:
        """Close the connection pool if asyncstop created it; safe to call more than once."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        session, self._session = self._session, None
        if session is not None and session is not self._user_session:
            await session.close()

    @property
    def _owns_session(self) -> bool:
        return self._user_session is None

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._state is _State.CLOSED

    def _require_open(self) -> aiohttp.ClientSession:
        if self._session is None:
            if self._state is _State.CLOSED:
                raise RuntimeError("this AsyncStopClient is closed; create a new client")
            raise RuntimeError(
                "this AsyncStopClient is not open: use `async with AsyncStopClient(...) as "
                "client:` or `await client.open()` first"
            )
        return self._session

    # -- public calls ------------------------------------------------------------------------

    async def cancel_stop_order(self, order_id: str, *, account_id: str | None = None) -> StopOrder:
        """Cancel one stop order and return it as the exchange reported it.

        Retries what is safe to retry (see the README). Raises
        :class:`OrderNotFoundError` if the exchange has no live stop order with
        this id; its ``after_unknown_attempt`` tells whether an earlier attempt
        of this call (which timed out or lost its connection) most likely
        cancelled it. Bad input raises :class:`InvalidInputError` (a
        ``ValueError``) before anything is sent. To bound the whole call, wrap it
        in ``asyncio.timeout()``.
        """
        call = CancelCall(
            self._account(account_id),
            check_order_id(order_id),
            limiter=self._limiter_for(account_id or self.account_id),
        )
        self._require_open()
        try:
            return await self._cancel(call)
        except DeadlinePassed:  # pragma: no cover - the single call has no deadline
            raise AssertionError("no deadline was set") from None

    async def cancel_stop_orders(
        self,
        orders: Iterable[OrderItem] | AsyncIterable[OrderItem],
        *,
        deadline: float | None = None,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        on_result: Callable[[CancelResult], object] | None = None,
    ) -> CancelReport:
        """Cancel many stop orders at once and report the outcome of each.

        ``orders`` holds order ids (for the client's account) or ``(account_id,
        order_id)`` pairs; an async iterable is consumed as it yields, so
        cancelling starts with the first ids. ``deadline`` is in seconds for the
        whole call (None: none); the call returns by then, with orders still in
        flight reported ``unknown`` and orders never sent ``not_sent``.
        ``concurrency`` bounds the requests in flight (default: the client's
        ``max_concurrency``, which also caps it unless you passed your own
        session), shared fairly between accounts. ``rate_limit``
        overrides the client's per-account pacing for this call.
        ``on_result`` is called once per input item as soon as its result is
        final, including, when the caller cancels the call, for every item
        left (before ``CancelledError`` propagates).

        It never raises for a single order's failure. A list input with an
        invalid item raises :class:`InvalidInputError` before anything is sent;
        an invalid item from an iterator is reported ``failed``.
        """
        self._require_open()
        return await run_bulk_cancel(
            self,
            orders,
            deadline=deadline,
            concurrency=concurrency,
            rate_limit=rate_limit,
            on_result=on_result,
        )

    async def warm_up(self, connections: int | None = None) -> int:
        """Open keep-alive connections ahead of time; return how many requests got an answer.

        Sends ``connections`` (default: ``max_concurrency``) concurrent
        ``HEAD {base_url}/frontoffice/api/v3/stop-orders/`` requests, without the
        token or the account header. HEAD is a safe method: it changes nothing on
        the exchange, and any answer (even 404 or 405) leaves an open connection
        in the pool, so a kill switch that fires later skips the TCP and TLS
        handshakes, provided the exchange keeps the connection open after its
        answer (a HEAD answered without ``Content-Length`` or with
        ``Connection: close`` ends it). The server's keep-alive timeout still
        applies: warm up again if the client idles longer than that.
        """
        session = self._require_open()
        count = self.max_concurrency if connections is None else connections
        if not isinstance(count, int) or count < 1:
            raise InvalidInputError(f"connections must be an int >= 1, not {connections!r}")

        async def head() -> bool:
            try:
                async with session.head(
                    self._url_prefix, allow_redirects=False, timeout=self._client_timeout
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

    # -- shared machinery --------------------------------------------------------------------

    def _account(self, account_id: str | None) -> Account:
        if account_id is None:
            if self.account_id is None:
                raise InvalidInputError(
                    "no account id: pass account_id= to the call or to AsyncStopClient"
                )
            account_id = self.account_id
        account = self._accounts.get(account_id) if isinstance(account_id, str) else None
        if account is None:
            account = self._accounts[check_account_id(account_id)] = Account(account_id)
        return account

    def _limiter_for(
        self, account_id: str | None, rate: float | None = None
    ) -> AsyncLimiter | None:
        """The client's shared pacing limiter for an account, or None without a rate limit."""
        rate = self.rate_limit if rate is None else rate
        if rate is None or account_id is None:
            return None
        limiter = self._limiters.get(account_id)
        if limiter is None or limiter.max_rate / limiter.time_period != rate:
            limiter = self._limiters[account_id] = new_limiter(rate)
        return limiter

    async def _cancel(self, call: CancelCall) -> StopOrder:
        """Cancel with retries: the first attempt directly, the rest under tenacity."""
        try:
            return await self._attempt(call)
        except APIError as err:
            if self.max_retries == 0 or not is_retryable(err):
                raise
            first_error = err
        return await self._retry_policy.call(
            lambda: self._attempt(call), first_error=first_error, deadline_at=call.deadline_at
        )

    async def _attempt(self, call: CancelCall) -> StopOrder:
        """Send one request for ``call`` (two if a 401 is cured by a fresh token)."""
        account = call.account
        loop = asyncio.get_running_loop()
        semaphore = call.semaphore
        while True:
            if account.paused_until or account.window or call.limiter is not None:
                await self._wait_for_turn(call, loop)
            if semaphore is None:
                break
            await semaphore.acquire()
            # A 429 may have paused the account while this task waited for a slot.
            if account.paused_until <= loop.time() and not (
                account.window and account.active >= account.window
            ):
                break
            semaphore.release()
        try:
            return await self._attempt_now(call, loop)
        finally:
            if semaphore is not None:
                semaphore.release()

    async def _attempt_now(self, call: CancelCall, loop: asyncio.AbstractEventLoop) -> StopOrder:
        """Send one request for ``call`` now that it may go."""
        account = call.account
        timeout = self._client_timeout
        if call.deadline_at is not None:
            time_left = call.deadline_at - loop.time()
            if time_left < MIN_ATTEMPT_BUDGET:
                raise DeadlinePassed
            if time_left < self.timeout.total:
                connect = self.timeout.connect
                timeout = aiohttp.ClientTimeout(
                    total=time_left, connect=None if connect is None else min(connect, time_left)
                )
        if account.token_generation != self._token_generation:
            self._build_headers(account)
        generation = account.token_generation
        call.attempts += 1
        account.active += 1
        try:
            order = await self._send(call, timeout)
        except APIError as err:
            account.released()
            call.last_error = err
            if outcome_unknown(err):
                call.unknown_seen = True
            elif isinstance(err, OrderNotFoundError):
                err.after_unknown_attempt = call.unknown_seen
                account.succeeded()
            elif isinstance(err, RateLimitError):
                pause = DEFAULT_RATE_LIMIT_PAUSE if err.retry_after is None else err.retry_after
                account.rate_limited(loop.time() + pause)
                logger.info("HTTP 429 for %s: pausing the account %.3fs", account.account_id, pause)
            elif (
                isinstance(err, AuthenticationError)
                and self._token_provider is not None
                and not call.auth_refreshed
            ):
                call.auth_refreshed = True
                await self._refresh_token(generation)
                return await self._attempt_now(call, loop)
            raise
        except BaseException:
            account.released()
            raise
        account.released()
        account.succeeded()
        return order

    async def _wait_for_turn(self, call: CancelCall, loop: asyncio.AbstractEventLoop) -> None:
        """Wait out the account's 429 pause, the rate limiter and the slow start, in time."""
        account = call.account
        while True:
            wait = account.paused_until - loop.time()
            if wait > 0:
                if call.deadline_at is not None and loop.time() + wait >= call.deadline_at:
                    raise DeadlinePassed
                await asyncio.sleep(wait)
                continue
            if call.limiter is not None:
                await call.limiter.acquire()
            if account.window and account.active >= account.window:
                await account.wait_for_window()
            if account.paused_until <= loop.time():
                return

    async def _send(self, call: CancelCall, limits: aiohttp.ClientTimeout) -> StopOrder:
        session = self._session
        if session is None:
            raise RuntimeError("this AsyncStopClient was closed while a cancel was running")
        order_id = call.order_id
        try:
            async with session.request(
                "DELETE",
                self._url_root.with_path(self._url_path + order_id, encoded=True),
                headers=call.account.headers,
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
                raise self._error_for(resp, body, order_id)
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

    def _error_for(
        self, resp: aiohttp.ClientResponse, body: bytes, order_id: str
    ) -> APIStatusError:
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

    def _build_headers(self, account: Account) -> None:
        token = self._token
        assert token is not None, "the client is open, so it has a token"
        account.headers = {
            "Authorization": "Bearer " + token,
            "accountId": account.account_id,
            "Content-Type": API_CONTENT_TYPE,
            "Accept": API_ACCEPT,
        }
        account.token_generation = self._token_generation

    async def _refresh_token(self, seen_generation: int) -> None:
        """Get a new token after a 401, once for all the requests that saw the old one."""
        assert self._token_provider is not None
        assert self._token_lock is not None
        async with self._token_lock:
            if self._token_generation != seen_generation:
                return  # another request refreshed it meanwhile
            logger.info("HTTP 401: asking the token provider for a fresh token")
            self._token = check_token(await self._token_provider())
            self._token_generation += 1


def new_limiter(rate: float) -> AsyncLimiter:
    """A leaky bucket that lets ``rate`` requests per second through, evenly.

    Its capacity is one request plus ``RATE_LIMIT_TOLERANCE`` seconds' worth:
    enough to absorb an event loop that wakes a waiter a little late (with a
    capacity of exactly 1 every late wake-up is time lost for good, and the
    call falls behind the rate), yet no real burst. The default aiolimiter
    bucket, a whole second's worth, would open with a burst of ``rate``
    requests that a server counting in a sliding window would refuse.
    """
    capacity = 1 + rate * RATE_LIMIT_TOLERANCE
    return AsyncLimiter(capacity, capacity / rate)
