"""The fake exchange: the two documented endpoints on loopback, with faults and a rate limit.

It is written from the API documentation (``cancel-stop-order.txt``,
``get-accounts.txt`` and the contract in ``openapi.yaml``), not from the client,
so it does not share the client's constants: a client that drifts from the
documented request fails against it.

A DELETE is journaled on arrival (``outcome="in_flight"``), counted in
``in_flight``, and handled in four steps:

1. the gate (``_gate``) refuses at once what a gateway would: a refused token,
   a missing ``accountId``, broken headers, an account the token may not use,
   the rate limit (``_ratelimit``);
2. the faults are drawn (``_faults.FaultDraw``): the request is numbered and
   takes its scheduled, scripted or random fault and its latency;
3. the wait: a hang waits for the exchange to close or the client to go;
   otherwise the latency is waited out;
4. the answer (``_replies``): the cancel is applied now (processing done,
   answer ready) unless a fault says otherwise, and the answer or fault is sent.

An outage (``FakeExchange.outage``, from ``_faultbook``) takes the place of
steps 1 and 2 for every DELETE and ``GET /accounts``. Requests under
``/_fake/`` never get here: the control surface (``_control``) answers them.
Requests still waiting (latency or hang) when the exchange closes are dropped
without an answer. Nothing here logs, prints, or keeps the Authorization header.
"""

from __future__ import annotations

import asyncio
import enum
import math
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Final, Literal, Self

import msgspec
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from . import _replies
from ._accounts import FakeAccount, encode_accounts
from ._control import CONTROL_PREFIX, ControlSurface
from ._faultbook import FaultBook
from ._faults import Fault, Faults
from ._gate import Gate, Refusal
from ._journal import JournalEntry, Outcome, PendingEntry
from ._orders import FakeStopOrder, OrderBook, cancel, encode_cancel_reply, other_order
from ._ratelimit import RateLimiter, StallMeter, pause_seconds

__all__ = ["FakeExchange"]

#: The documented endpoints; the order id is the one path segment after the prefix.
_PREFIX: Final = "/frontoffice/api/v3/stop-orders/"
_PREFIX_LEN: Final = len(_PREFIX)
_ACCOUNTS_PATH: Final = "/frontoffice/api/v3/accounts"
#: Seconds aiohttp may take to finish handlers at close; they are all woken first,
#: so this only bounds a client that stops reading its answer.
_SHUTDOWN_TIMEOUT: Final = 5.0
#: How often a hung request checks whether its client has gone, in seconds.
_HANG_POLL: Final = 0.01


def _wake(waiter: asyncio.Future[bool], closing: bool) -> None:
    if not waiter.done():
        waiter.set_result(closing)


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class FakeExchange(OrderBook, FaultBook):
    """A fake B2TRADER exchange on loopback: Cancel Stop order and Get accounts.

    It serves ``DELETE /frontoffice/api/v3/stop-orders/{orderId}`` and
    ``GET /frontoffice/api/v3/accounts``. Use it as ``async with
    FakeExchange(tokens={"t1"}) as exchange:``, or call :meth:`start` and
    :meth:`close`. The constructor needs no event loop; the server binds in
    :meth:`start`. Orders and accounts can be added before or after starting.

    Args:
        tokens: the accepted bearer tokens, or a mapping from each token to the
            account ids it may use, e.g. ``{"t1": ["acc-1"], "t2": ["acc-2"]}``.
            A token given without a list (in a set, or added to :attr:`tokens`
            later) may use every account. A DELETE with an ``accountId`` its
            token may not use gets the same 404 as an unknown order (an exchange
            that scopes orders by account cannot find the order there),
            journaled as ``account_not_allowed``. Tokens are never journaled.
        host, port: where to listen; port 0 picks a free port (see :attr:`base_url`).
        seed: seeds every random choice (order ids and fields, fault draws,
            latency draws), each from its own stream.
        faults: the random fault mix (default: none); ``exchange.faults`` may be
            reassigned at any time.
        schedule: faults by request number: ``{n: fault}`` gives the n-th DELETE
            request past the gate (counting from 1, the same requests that take
            a random draw) that fault, whatever the timing (see
            :func:`~asyncstop.testing.spread_faults`, :meth:`inject_at`).
        rate_limit: cancels per second per account (a token bucket refilled
            continuously), or None for no limit.
        rate_limit_burst: the bucket's capacity; default ``max(1, rate_limit)``.
        retry_after: how a 429 states its pause. None: integer seconds (rounded
            up, at least 1) until the bucket has a token again, which is also the
            pause. A float: that value, sent like ``"0.2"`` (not RFC 9110, but
            lenient clients take it; keeps tests fast), is the pause. ``"date"``:
            an HTTP-date at least the integer seconds ahead; the pause lasts until then.
        pause_grace: a 429 starts a pause for its account. Requests that arrive
            in its first ``pause_grace`` seconds, plus every stall of the event
            loop measured since the 429 (a garbage-collector pass or the OS
            descheduling the process delays the client's reading of the 429 and
            the exchange's stamping of requests alike), were sent before the
            client could know, so they are not violations (they still get 429 if
            the bucket is empty); later ones in the pause are appended to
            :attr:`pause_violations` and get 429 with the remaining time,
            without extending the pause.
        strict_headers: answer 400 unless Content-Type is exactly
            ``application/json; x-api-version=4.0`` and Accept is present, and to
            any request with a body (GET /accounts: Accept and no body).
        keep_journal: record every request in :attr:`journal`; turn off for long
            benchmarks (pause violations are recorded either way).
        control: serve the control surface under ``/_fake/`` to loopback clients
            (counts, new orders, faults; see ``docs/fake-exchange.md``).

    Attributes:
        tokens: accepted bearer tokens (mutable: remove one to simulate its expiry).
        token_accounts: the account ids each listed token may use (mutable).
        accounts: every account the exchange knows, by id, as :class:`FakeAccount`
            (those named in ``tokens``, given orders, or added by :meth:`add_account`).
        faults: the random fault mix (reassignable).
        outage: a fault every cancel and ``GET /accounts`` meets first (reassignable).
        orders: every order by id; :class:`FakeStopOrder` records, mutable.
        journal: every request in arrival order, as :class:`JournalEntry`.
        pause_violations: requests that arrived during a 429 pause, after the grace.
        in_flight: DELETE requests inside the exchange now (including latency and hangs).
        max_in_flight: the most DELETE requests ever inside the exchange at once.
        stale_replies_sent: extra answers written by ``Fault.stale_reply``.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str] | Mapping[str, Iterable[str]],
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        faults: Faults | None = None,
        schedule: Mapping[int, Fault] | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: float | None = None,
        retry_after: float | Literal["date"] | None = None,
        pause_grace: float = 0.02,
        strict_headers: bool = True,
        keep_journal: bool = True,
        control: bool = True,
    ) -> None:
        self._stalls = StallMeter()
        limiter = RateLimiter(
            rate_limit,
            burst=rate_limit_burst,
            retry_after=retry_after,
            grace=pause_grace,
            stalls=self._stalls,
        )
        self._gate = Gate(tokens, strict_headers=strict_headers, limiter=limiter)
        OrderBook.__init__(self, seed)
        FaultBook.__init__(self, seed, schedule, faults)
        self._control = ControlSurface(self) if control else None
        for account_ids in self._gate.token_accounts.values():
            for account_id in account_ids:
                self._known_account(account_id)
        self.journal: list[JournalEntry] = []
        self.pause_violations: list[JournalEntry] = []
        self.in_flight = 0
        self.max_in_flight = 0
        # Keyed by id(): a request is a mutable mapping, so it is not hashable.
        self._in_flight_requests: dict[int, web.BaseRequest] = {}
        self.stale_replies_sent = 0

        self._host = host
        self._port = port
        self._keep_journal = keep_journal

        self._state = _State.UNOPENED
        self._runner: web.ServerRunner | None = None
        self._bound_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # One future per waiting request (never shared: cancelling a task that
        # awaits a future cancels the future, which must not release the others).
        self._waiters: set[asyncio.Future[bool]] = set()
        # Connections owing a stale answer, and requests whose answer is streaming.
        self._stale: dict[RequestHandler, tuple[bytes, asyncio.TimerHandle | None]] = {}
        self._streaming: dict[RequestHandler, web.BaseRequest] = {}

    # -- lifetime ------------------------------------------------------------

    async def start(self) -> None:
        """Bind the server and start serving; an exchange starts at most once."""
        if self._state is _State.OPENED:
            raise RuntimeError("this FakeExchange is already started")
        if self._state is _State.CLOSED:
            raise RuntimeError("a closed FakeExchange cannot be started again; make a new one")
        loop = asyncio.get_running_loop()
        self._loop = loop
        server = web.Server(self._serve, loop=loop, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        self._stalls.start(loop)
        self._state = _State.OPENED

    async def close(self) -> None:
        """Stop serving: drop hung and waiting requests, close every connection. Idempotent.

        On return no task, timer, transport or socket of the exchange is left.
        The work runs in a task that finishes even if the caller is cancelled.
        """
        if self._close_task is None:
            if self._state is not _State.OPENED:
                self._state = _State.CLOSED
                return
            self._state = _State.CLOSED
            self._close_task = asyncio.get_running_loop().create_task(self._shutdown())
        await asyncio.shield(self._close_task)

    async def _shutdown(self) -> None:
        self._closing = True
        self._stalls.stop()
        for waiter in list(self._waiters):
            _wake(waiter, True)
        for request in list(self._streaming.values()):
            # A stream blocked on a client that stopped reading would hold
            # the shutdown for its whole timeout.
            if request.transport is not None:
                request.transport.abort()
        for _, timer in self._stale.values():
            if timer is not None:
                timer.cancel()
        self._stale.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        # Closed transports report connection_lost on the next loop iteration;
        # let that happen before the caller (or the event loop) moves on.
        await asyncio.sleep(0)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # -- what tests read -----------------------------------------------------

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``, the URL to give the client; only once started."""
        if self._bound_port is None:
            raise RuntimeError("the FakeExchange is not started yet; no base_url")
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._bound_port}"

    @property
    def port(self) -> int:
        """The bound port (the real one when constructed with port 0); only once started."""
        if self._bound_port is None:
            raise RuntimeError("the FakeExchange is not started yet; no port")
        return self._bound_port

    @property
    def tokens(self) -> set[str]:
        """The accepted bearer tokens (mutable: remove one to simulate its expiry)."""
        return self._gate.tokens

    @tokens.setter
    def tokens(self, tokens: set[str]) -> None:
        self._gate.tokens = tokens

    @property
    def token_accounts(self) -> dict[str, list[str]]:
        """The account ids each listed token may use (mutable); other tokens may use any."""
        return self._gate.token_accounts

    def accounts_for(self, token: str) -> list[FakeAccount]:
        """The accounts ``GET /accounts`` lists for an accepted ``token``, in order."""
        allowed = self._gate.token_accounts.get(token)
        if allowed is None:
            return list(self.accounts.values())
        return [self._known_account(account_id) for account_id in allowed]

    def reset_journal(self) -> None:
        """Start a new :attr:`journal` and :attr:`pause_violations`; ``max_in_flight`` restarts too.

        Requests in flight at the reset are left out of the new journal. Orders,
        faults and rate-limit state are untouched.
        """
        self.journal = []
        self.pause_violations = []
        self.max_in_flight = self.in_flight

    def requests(self, method: str | None = None) -> list[JournalEntry]:
        """The journaled requests in arrival order; with ``method``, only that method's.

        ``exchange.requests("DELETE")`` are the cancels the exchange received,
        refused ones included, as :class:`JournalEntry` records.
        """
        if method is None:
            return list(self.journal)
        wanted = method.upper()
        return [entry for entry in self.journal if entry.method == wanted]

    def __repr__(self) -> str:
        where = self.base_url if self._bound_port is not None else self._state.value
        if self._state is _State.CLOSED:
            where = "closed"
        live = sum(1 for order in self.orders.values() if order.live)
        return (
            f"<FakeExchange {where} orders={len(self.orders)} live={live} "
            f"requests={len(self.journal)} tokens={len(self.tokens)}>"
        )

    # -- the server ----------------------------------------------------------

    async def _serve(self, request: web.BaseRequest) -> web.StreamResponse:
        if self._control is not None and request.path.startswith(CONTROL_PREFIX):
            return await self._control.handle(request)
        return await self._handle(request)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        protocol = request.protocol
        if protocol in self._stale:
            self._write_stale(request)
        entry = self._arrival(request)
        # A method a documented path does not declare gets its 405 before any
        # header check, as the contract says (DELETE /accounts is not a cancel).
        if entry.method == "DELETE" and entry.path.startswith(_PREFIX):
            pending = self._pending(entry)
            # A request whose client closed its connection (a timeout, an abandoned
            # hedge) is in flight for nobody: aiohttp keeps its handler running, but
            # the client's concurrency bound no longer covers it. Its connection_lost
            # has run by the time a request the client sent later gets here.
            self._in_flight_requests = {
                key: r for key, r in self._in_flight_requests.items() if r.transport is not None
            }
            self._in_flight_requests[id(request)] = request
            self.in_flight = len(self._in_flight_requests)
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                return await self._delete(request, pending)
            finally:
                self._in_flight_requests.pop(id(request), None)
                self.in_flight = len(self._in_flight_requests)
        if entry.method == "GET" and entry.path == _ACCOUNTS_PATH:
            return await self._get_accounts(request, self._pending(entry))
        return self._other_method(entry)

    def _arrival(self, request: web.BaseRequest) -> JournalEntry:
        assert self._loop is not None
        headers = request.headers
        path = request.path
        order_id: str | None = None
        if path.startswith(_PREFIX):
            order_id = path[_PREFIX_LEN:]
            if not order_id or "/" in order_id:
                order_id = None
        return JournalEntry(
            method=request.method,
            path=path,
            order_id=order_id,
            account_id=headers.get("accountId") or None,
            time=self._loop.time(),
            done_time=math.inf,
            status=None,
            outcome=Outcome.IN_FLIGHT,
            headers={k: v for k, v in headers.items() if k.lower() != "authorization"},
            authorized=self._gate.token(headers) is not None,
        )

    def _pending(self, entry: JournalEntry) -> PendingEntry:
        assert self._loop is not None
        return PendingEntry(entry, self.journal if self._keep_journal else None, self._loop)

    def _other_method(self, entry: JournalEntry) -> web.StreamResponse:
        if entry.method == "HEAD":
            # The client's warm_up(): an answer that opens and keeps the connection.
            # An explicit Content-Length: without it aiohttp's server closes
            # the connection after a HEAD, and warm-up would keep nothing open.
            status, outcome = 200, Outcome.WARM_UP
            response = web.Response(headers={"Content-Length": "0"})
        else:
            status, outcome = 405, Outcome.METHOD_NOT_ALLOWED
            allow = "GET, HEAD" if entry.path == _ACCOUNTS_PATH else "DELETE, HEAD"
            response = web.Response(status=405, headers={"Allow": allow})
        if self._keep_journal:
            self.journal.append(
                msgspec.structs.replace(entry, done_time=entry.time, status=status, outcome=outcome)
            )
        return response

    async def _delete(self, request: web.BaseRequest, pending: PendingEntry) -> web.StreamResponse:
        """The four steps of the module docstring: gate, draw the faults, wait, answer."""
        fault, delay = self._outage, 0.0
        if fault is None:
            refusal = self._gate.check_delete(request, pending.entry)
            if refusal is not None:
                return self._refuse(pending, refusal)
            fault, delay = self._draw.draw(self.faults, pending.entry.order_id)
        if not await self._wait_out(request, pending, fault, delay):
            return _replies.drop(request)
        return await self._answer(request, pending, fault)

    async def _get_accounts(
        self, request: web.BaseRequest, pending: PendingEntry
    ) -> web.StreamResponse:
        fault = self._outage
        if fault is None:
            refusal = self._gate.check_accounts(request, pending.entry)
            if refusal is not None:
                return self._refuse(pending, refusal)
            fault = self._accounts_script.pop(0) if self._accounts_script else None
        if fault is not None:
            if not await self._wait_out(request, pending, fault, 0.0):
                return _replies.drop(request)
            return await self._answer(request, pending, fault)
        token = self._gate.token(request.headers)
        assert token is not None  # the gate let it through
        pending.settle(200, Outcome.ACCOUNTS)
        return _replies.json_response(200, encode_accounts(self.accounts_for(token)))

    def _refuse(self, pending: PendingEntry, refusal: Refusal) -> web.StreamResponse:
        final = pending.settle(refusal.status, refusal.outcome)
        if refusal.violation:
            self.pause_violations.append(final)
        return refusal.response

    async def _wait_out(
        self, request: web.BaseRequest, pending: PendingEntry, fault: Fault | None, delay: float
    ) -> bool:
        """Wait out a hang or the latency; False (journaled) if the request goes unanswered."""
        if fault is not None and fault.kind == "hang":
            pending.mark(Outcome.HUNG)
            try:
                # Until the exchange closes, or the client gives up and closes the
                # connection: from then on the request is in flight for nobody, so
                # it must not count in in_flight (aiohttp keeps the handler running).
                while request.transport is not None and not await self._sleep(_HANG_POLL):
                    pass
            finally:
                # The connection goes without an answer.
                pending.settle(None, Outcome.HUNG)
            return False
        if delay > 0.0:
            assert self._loop is not None
            end = self._loop.time() + delay
            try:
                # In slices, so that a request whose client has given up (a timeout,
                # an abandoned hedge) is dropped unanswered, as a hung one is.
                while (left := end - self._loop.time()) > 0:
                    if await self._sleep(min(left, _HANG_POLL)) or request.transport is None:
                        pending.settle(None, Outcome.DROPPED_BEFORE)
                        return False
            except asyncio.CancelledError:
                pending.settle(None, Outcome.DROPPED_BEFORE)
                raise
        return True

    async def _answer(
        self, request: web.BaseRequest, pending: PendingEntry, fault: Fault | None
    ) -> web.StreamResponse:
        entry = pending.entry
        account_id = entry.account_id
        if fault is None or fault.kind == "stale_reply":
            order = self._cancel(entry.order_id, account_id)
            if fault is not None:
                self._owe_stale(request, fault, entry.order_id)
            if order is None:
                pending.settle(404, Outcome.NOT_FOUND)
                return _replies.not_found()
            pending.settle(200, Outcome.CANCELLED, applied=True)
            return _replies.json_response(200, encode_cancel_reply(order))
        applied = fault.apply and self._cancel(entry.order_id, account_id) is not None
        kind = fault.kind
        if kind == "drop":
            outcome = Outcome.DROPPED_AFTER if fault.apply else Outcome.DROPPED_BEFORE
            pending.settle(None, outcome, applied)
            return _replies.drop(request)
        if kind == "error":
            assert fault.status is not None
            outcome = Outcome.ERROR_AFTER if fault.apply else Outcome.ERROR_BEFORE
            pending.settle(fault.status, outcome, applied)
            return _replies.error(fault)
        if kind == "reply":
            assert fault.status is not None
            pending.settle(fault.status, Outcome.REPLIED, applied)
            return _replies.reply(fault)
        if kind == "other_order":
            pending.settle(200, Outcome.REPLIED, applied)
            other = other_order(self.orders, entry.order_id, fault.order_id)
            return _replies.reply(fault, encode_cancel_reply(other))
        if kind in ("huge_body", "endless_body", "gzip_bomb"):
            return await self._stream(request, pending, fault, applied)
        if kind == "redirect":
            assert fault.location is not None
            pending.settle(307, Outcome.REDIRECTED)
            return web.Response(status=307, headers={"Location": fault.location})
        if kind == "rate_limited":
            pending.settle(429, Outcome.RATE_LIMITED)
            pause = pause_seconds(fault.retry_after)
            if pause is not None and account_id is not None:
                assert self._loop is not None
                self._gate.limiter.pause(account_id, self._loop.time(), pause)
            return _replies.too_many(fault.retry_after)
        # "unauthorized"
        pending.settle(401, Outcome.UNAUTHORIZED)
        return _replies.unauthorized()

    def _cancel(self, order_id: str | None, account_id: str | None) -> FakeStopOrder | None:
        return None if account_id is None else cancel(self.orders, order_id, account_id)

    async def _stream(
        self, request: web.BaseRequest, pending: PendingEntry, fault: Fault, applied: bool
    ) -> web.StreamResponse:
        assert fault.status is not None
        pending.mark(Outcome.REPLIED)
        self._streaming[request.protocol] = request
        try:
            response, _ = await _replies.stream(request, fault, lambda: self._closing)
        finally:
            del self._streaming[request.protocol]
            pending.settle(fault.status, Outcome.REPLIED, applied)
        return response

    def _owe_stale(self, request: web.BaseRequest, fault: Fault, order_id: str | None) -> None:
        """Arrange the unsolicited second answer of ``Fault.stale_reply`` on this connection."""
        body = (
            _replies.raw_not_found()
            if fault.status == 404
            else _replies.raw_ok(encode_cancel_reply(other_order(self.orders, None, order_id)))
        )
        timer = None
        if fault.idle is not None:
            assert self._loop is not None
            timer = self._loop.call_later(fault.idle, self._stale_when_idle, request)
        self._stale[request.protocol] = (body, timer)

    def _stale_when_idle(self, request: web.BaseRequest) -> None:
        protocol = request.protocol
        if protocol in self._stale:
            if protocol in self._streaming:
                # Not into the middle of an answer: the next request writes it first.
                body, _ = self._stale[protocol]
                self._stale[protocol] = (body, None)
            else:
                self._write_stale(request)

    def _write_stale(self, request: web.BaseRequest) -> None:
        body, timer = self._stale.pop(request.protocol)
        if timer is not None:
            timer.cancel()
        transport = request.transport
        if transport is not None and not transport.is_closing():
            transport.write(body)
            self.stale_replies_sent += 1

    async def _sleep(self, delay: float | None) -> bool:
        """Sleep ``delay`` seconds (None: until close); True if the exchange is closing."""
        if self._closing:
            return True
        assert self._loop is not None
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiters.add(waiter)
        timer = self._loop.call_later(delay, _wake, waiter, False) if delay is not None else None
        try:
            return await waiter
        finally:
            self._waiters.discard(waiter)
            if timer is not None:
                timer.cancel()
