"""AsyncStopClient: settings, lifetime and wiring; its public calls delegate down.

::

    AsyncStopClient ── run_bulk_cancel (_bulk) ──┐
          │                                      ▼
          └──────────────────────────────▶ Canceller (_attempt): one order's attempts
                                                 │
                      Transport · Auth · AccountBook · RetryPolicy
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterable, Callable, Iterable
from types import TracebackType
from typing import Final, Literal, Self

import aiohttp
from aiohttp.abc import AbstractResolver

from ._account import AccountBook
from ._attempt import Canceller, OrderCancel
from ._auth import Auth, TokenProvider
from ._bulk import run_bulk_cancel
from ._constants import (
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
)
from ._errors import AccountNotFoundError, InvalidInputError
from ._hedge import reply_window
from ._logging import setup_logging_from_env
from ._models import StopOrder, TradingAccount
from ._report import CancelReport, CancelResult, OrderItem
from ._retry import RetryPolicy
from ._transport import Timeout, Transport
from ._validation import (
    check_account_id,
    check_base_url,
    check_count,
    check_order_id,
    check_seconds,
)

__all__ = ["AsyncStopClient", "Timeout", "TokenProvider"]


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
    a server's ``Retry-After`` is obeyed, and how long one 429 may pause an
    account. ``rate_limit``, in requests per second per account, paces every
    request proactively (``None``: no pacing; a 429 still pauses the account).
    ``max_body_size`` bounds how much of any reply is read (decompressed size
    included). ``resolver`` replaces the DNS resolver of the pool asyncstop
    creates (default: :class:`DaemonThreadResolver`-style lookups that cannot
    keep the process alive after a call).

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
        max_body_size: int = DEFAULT_MAX_BODY_SIZE,
        session: aiohttp.ClientSession | None = None,
        resolver: AbstractResolver | None = None,
    ) -> None:
        self.base_url: Final = check_base_url(base_url)
        self.account_id: Final = None if account_id is None else check_account_id(account_id)
        self.max_concurrency: Final = check_count("max_concurrency", max_concurrency, minimum=1)
        self.max_retries: Final = check_count("max_retries", max_retries, minimum=0)
        check_seconds("max_retry_after", max_retry_after, allow_zero=True)
        self.rate_limit: Final = (
            None if rate_limit is None else check_seconds("rate_limit (requests/s)", rate_limit)
        )
        if not isinstance(timeout, Timeout):
            timeout = Timeout(total=check_seconds("timeout", timeout))
        self.timeout: Final = timeout
        if session is not None and not isinstance(session, aiohttp.ClientSession):
            raise InvalidInputError(
                f"session must be an aiohttp.ClientSession, not {type(session).__name__}"
            )
        self._auth = Auth(token)
        self.max_body_size: Final = check_count("max_body_size", max_body_size, minimum=1024)
        self._transport = Transport(
            self.base_url,
            timeout=timeout,
            max_connections=max_concurrency,
            max_body_size=max_body_size,
            session=session,
            resolver=resolver,
        )
        self._accounts = AccountBook(self.rate_limit)
        self._canceller = Canceller(
            transport=self._transport,
            auth=self._auth,
            accounts=self._accounts,
            retry_policy=RetryPolicy(max_retries=max_retries, max_retry_after=max_retry_after),
            # What hedge="auto" learns from, across calls. A session of the
            # caller's has no hook that tells when a request reaches the wire.
            reply_times=reply_window() if session is None else None,
        )
        self._state = _State.UNOPENED
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
        await self._auth.start(self.timeout.total)
        self._transport.open()
        self._state = _State.OPENED

    async def aclose(self) -> None:
        """Close the connection pool if asyncstop created it; safe to call more than once."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        await self._transport.close()

    @property
    def is_closed(self) -> bool:
        """True once :meth:`aclose` has run."""
        return self._state is _State.CLOSED

    def _require_open(self) -> None:
        if self._state is _State.CLOSED:
            raise RuntimeError("this AsyncStopClient is closed; create a new client")
        if self._state is _State.UNOPENED:
            raise RuntimeError(
                "this AsyncStopClient is not open: use `async with AsyncStopClient(...) as "
                "client:` or `await client.open()` first"
            )

    def _account_id(self, account_id: str | None) -> str:
        if account_id is None:
            if self.account_id is None:
                raise InvalidInputError(
                    "no account id: pass account_id= to the call or to AsyncStopClient"
                )
            return self.account_id
        return check_account_id(account_id)

    # -- public calls ------------------------------------------------------------------------

    async def preflight(self, account_id: str | None = None) -> list[TradingAccount]:
        """Check the base URL, the token and the account before an emergency; return the accounts.

        Calls the documented ``GET /frontoffice/api/v3/accounts`` and returns
        the trading accounts the token may use. Raises
        :class:`AuthenticationError` for a refused token (after one refresh,
        with a provider), :class:`AccountNotFoundError` when ``account_id``
        (default: the client's) is not among them, and another
        :class:`APIError` when the base URL does not reach the API (a 404, an
        HTML page, anything but a JSON list of accounts). Bounded by the
        client's attempt timeout.
        """
        self._require_open()
        wanted = (
            None if account_id is None and self.account_id is None else self._account_id(account_id)
        )
        accounts = await self._auth.send_refreshing(
            self._transport.get_accounts, limit=self.timeout.total
        )
        if wanted is not None and all(a.account_id != wanted for a in accounts):
            ids = [a.account_id for a in accounts]
            raise AccountNotFoundError(
                f"account {wanted!r} is not among the {len(ids)} accounts this token may use "
                f"({', '.join(ids) or 'none'}): check the account id",
                account_id=wanted,
                available=ids,
            )
        return accounts

    async def cancel_stop_order(self, order_id: str, *, account_id: str | None = None) -> StopOrder:
        """Cancel one stop order and return it as the exchange reported it.

        Retries what is safe to retry (see docs/client.md). Raises
        :class:`OrderNotFoundError` if the exchange has no live stop order with
        this id; its ``after_unknown_attempt`` tells whether an earlier attempt
        of this call (which timed out or lost its connection) most likely
        cancelled it. Bad input raises :class:`InvalidInputError` (a
        ``ValueError``) before anything is sent. To bound the whole call, wrap it
        in ``asyncio.timeout()``.
        """
        account_id = self._account_id(account_id)
        call = OrderCancel(
            self._accounts.get(account_id),
            check_order_id(order_id),
            limiter=self._accounts.limiter(account_id),
        )
        self._require_open()
        return await self._canceller.cancel(call)

    async def cancel_stop_orders(
        self,
        orders: Iterable[OrderItem] | AsyncIterable[OrderItem],
        *,
        deadline: float | None = None,
        concurrency: int | None = None,
        rate_limit: float | None = None,
        on_result: Callable[[CancelResult], object] | None = None,
        hedge: float | Literal["auto"] | None = None,
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
        left (before ``CancelledError`` propagates); an exception it raises is
        logged and does not stop the call. ``hedge`` sends one backup request
        for an order whose request has had no answer for that many seconds
        (``"auto"``: the p95 reply time estimated from this client's recent
        requests, those still in flight included; None: never); see docs/bulk.md.

        It never raises for a single order's failure. A list input with an
        invalid item raises :class:`InvalidInputError` before anything is sent;
        an invalid item from an iterator is reported ``failed``.
        """
        self._require_open()
        return await run_bulk_cancel(
            self._canceller,
            orders,
            default_account_id=self.account_id,
            pool_size=self.max_concurrency,
            cap_at_pool=self._transport.owns_session,
            deadline=deadline,
            concurrency=concurrency,
            rate_limit=rate_limit,
            on_result=on_result,
            hedge=hedge,
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
        self._require_open()
        return await self._transport.warm_up(connections)
