"""The fake exchange: the Cancel Stop order endpoint on loopback, with faults and a rate limit.

It is written from the API documentation (``cancel-stop-order.txt`` and the
contract in ``openapi.yaml``), not from the client, so it does not share the
client's constants: a client that drifts from the documented request fails
against it.

How a DELETE is handled, in order:

1. It is journaled on arrival (``outcome="in_flight"``) and counted in ``in_flight``.
2. The gate answers at once, with no latency, as a real API gateway would:
   401 without an accepted bearer token, 400 without ``accountId``, 400 on a
   header/body violation (``strict_headers``), 429 from the account's token
   bucket or pause.
3. One number is drawn from the fault RNG (always exactly one, so the random
   fault sequence depends only on the seed and the order of requests), one from
   the latency RNG if the latency is a distribution, and a scripted fault is
   taken if one is queued (per order first, then the global FIFO); it wins over
   the random draw.
4. ``hang`` waits here for the exchange to close. Otherwise the latency is
   waited out; the cancel is applied now (processing done, answer ready), and
   the answer or fault is sent.

Requests still waiting (latency or hang) when the exchange closes are dropped
without an answer. Nothing here logs, prints, or keeps the Authorization header.
"""

from __future__ import annotations

import asyncio
import collections
import email.utils
import enum
import math
import random
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from http import HTTPStatus
from types import TracebackType
from typing import Final, Literal, Self

import msgspec
from aiohttp import web

from ._faults import Fault, Faults
from ._journal import JournalEntry, Outcome
from ._orders import (
    ACTIVATED,
    WAITING_FOR_ACTIVATION,
    FakeStopOrder,
    OrderFactory,
    encode_cancel_reply,
    now_timestamp,
)

__all__ = ["FakeExchange"]

#: The documented endpoint; the order id is the one path segment after it.
_PREFIX: Final = "/frontoffice/api/v3/stop-orders/"
_PREFIX_LEN: Final = len(_PREFIX)
#: The documented request's Content-Type (the API version rides on it), checked exactly.
_API_CONTENT_TYPE: Final = "application/json; x-api-version=4.0"
_JSON: Final = "application/json; charset=utf-8"
_JSON_HEADERS: Final = {"Content-Type": _JSON}
#: Seconds aiohttp may take to finish handlers at close; they are all woken first,
#: so this only bounds a client that stops reading its answer.
_SHUTDOWN_TIMEOUT: Final = 5.0


def _error_body(error_code: int, message: str, errors: list[dict[str, str]] | None = None) -> bytes:
    """The error body of the older B2Trader API (assumed: the docs list no errors)."""
    return msgspec.json.encode(
        {"errorCode": error_code, "message": message, "errors": errors or []}
    )


def _field_error(key: str, code: str, message: str) -> list[dict[str, str]]:
    return [{"key": key, "code": code, "message": message}]


_BODY_UNAUTHORIZED: Final = _error_body(10005, "Unauthorized")
_BODY_NO_ACCOUNT: Final = _error_body(
    10001,
    "accountId header is required",
    _field_error("accountId", "required", "The accountId header is required."),
)
_BODY_BAD_CONTENT_TYPE: Final = _error_body(
    10001,
    "Invalid request headers",
    _field_error("Content-Type", "invalid", f"Content-Type must be '{_API_CONTENT_TYPE}'."),
)
_BODY_NO_ACCEPT: Final = _error_body(
    10001,
    "Invalid request headers",
    _field_error("Accept", "required", "The Accept header is required."),
)
_BODY_HAS_BODY: Final = _error_body(
    10001,
    "Invalid request body",
    _field_error("body", "not_allowed", "This request takes no body."),
)
_BODY_NOT_FOUND: Final = _error_body(
    10002, "Object not found", _field_error("orderId", "not_found", "Stop order not found")
)
_BODY_TOO_MANY: Final = _error_body(10029, "Too many requests")


def _json_response(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)


def _default_error_body(status: int) -> bytes:
    # errorCode 10000 ("internal error") is invented: the docs list no errors.
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _error_body(10000, phrase)


def _drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection so the client sees it end with no answer at all.

    aiohttp then tries to write the returned response, finds the transport
    gone and gives up quietly; nothing reaches the client.
    """
    request.protocol.force_close()
    return web.Response()


def _wake(waiter: asyncio.Future[bool], closing: bool) -> None:
    if not waiter.done():
        waiter.set_result(closing)


def _format_seconds(seconds: float) -> str:
    """``0.2`` -> ``"0.2"``, ``1.0`` -> ``"1"``: the shortest text that reads back as the value."""
    if seconds.is_integer():
        return str(int(seconds))
    text = repr(seconds)
    if "e" in text:  # 1e-05: spell it out, a header is no place for exponents
        text = f"{seconds:.12f}".rstrip("0")
    return text


def _format_remaining(seconds: float) -> str:
    """The rest of a pause, rounded up to the millisecond so a client that obeys is never early."""
    # The tolerance keeps float noise (0.07 * 1000 = 70.00000000000001) from adding a millisecond.
    return _format_seconds(math.ceil(seconds * 1000 - 1e-6) / 1000)


def _http_date(timestamp: float) -> str:
    return email.utils.format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def _pause_seconds(retry_after: str | None) -> float | None:
    """How long a client obeying this Retry-After value waits; None if it cannot tell."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


class _Account:
    """Rate-limit state of one account: its token bucket and its current 429 pause."""

    __slots__ = ("date_header", "pause_end", "pause_start", "refilled_at", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.refilled_at = now
        self.pause_start = -math.inf
        self.pause_end = -math.inf
        #: The HTTP-date sent with the 429 that started the pause (retry_after="date").
        self.date_header: str | None = None


class _Pending:
    """A DELETE request's place in the journal while it is inside the exchange."""

    __slots__ = ("entry", "index", "journal", "loop")

    def __init__(
        self,
        entry: JournalEntry,
        journal: list[JournalEntry] | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.entry = entry
        self.journal = journal
        self.loop = loop
        self.index = 0
        if journal is not None:
            self.index = len(journal)
            journal.append(entry)

    def mark(self, outcome: Outcome) -> None:
        """Show a not yet answered request's outcome (a hang) in the journal."""
        self.entry = msgspec.structs.replace(self.entry, outcome=outcome)
        if self.journal is not None:
            self.journal[self.index] = self.entry

    def settle(self, status: int | None, outcome: Outcome, applied: bool = False) -> JournalEntry:
        """Record the answer (or its absence) now; return the final entry."""
        final = msgspec.structs.replace(
            self.entry,
            done_time=self.loop.time(),
            status=status,
            outcome=outcome,
            applied=applied,
        )
        if self.journal is not None:
            self.journal[self.index] = final
        return final


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPENED = "opened"
    CLOSED = "closed"


class FakeExchange:
    """A fake B2TRADER exchange: ``DELETE /frontoffice/api/v3/stop-orders/{orderId}`` on loopback.

    Use it as ``async with FakeExchange(tokens={"t1"}) as exchange:``, or call
    :meth:`start` and :meth:`close`. The constructor needs no event loop; the
    server binds in :meth:`start`. Orders can be added before or after starting.

    Args:
        tokens: the accepted bearer tokens. ``exchange.tokens`` is a mutable set:
            remove a token to simulate its expiry. Tokens are never journaled.
        host, port: where to listen; port 0 picks a free port (see :attr:`base_url`).
        seed: seeds every random choice (order ids and fields, fault draws,
            latency draws), each from its own stream.
        faults: the random fault mix (default: none); ``exchange.faults`` may be
            reassigned at any time.
        rate_limit: cancels per second per account (a token bucket refilled
            continuously), or None for no limit.
        rate_limit_burst: the bucket's capacity; default ``max(1, rate_limit)``.
        retry_after: how a 429 states its pause. None: integer seconds (rounded
            up, at least 1) until the bucket has a token again, which is also the
            pause. A float: that value, sent like ``"0.2"`` (not RFC 9110, but
            lenient clients take it; keeps tests fast), is the pause. ``"date"``:
            an HTTP-date at least the integer seconds ahead; the pause lasts until then.
        pause_grace: a 429 starts a pause for its account. Requests that arrive
            in its first ``pause_grace`` seconds were sent before the client could
            know, so they are not violations (they still get 429 if the bucket is
            empty); later ones in the pause are appended to :attr:`pause_violations`
            and get 429 with the remaining time, without extending the pause.
        strict_headers: answer 400 unless Content-Type is exactly
            ``application/json; x-api-version=4.0`` and Accept is present, and to
            any request with a body.
        keep_journal: record every request in :attr:`journal`; turn off for long
            benchmarks (pause violations are recorded either way).

    Attributes:
        tokens: accepted bearer tokens (mutable).
        faults: the random fault mix (reassignable).
        orders: every order by id; :class:`FakeStopOrder` records, mutable.
        journal: every request in arrival order, as :class:`JournalEntry`.
        pause_violations: requests that arrived during a 429 pause, after the grace.
        in_flight: DELETE requests inside the exchange now (including latency and hangs).
        max_in_flight: the most DELETE requests ever inside the exchange at once.
    """

    def __init__(
        self,
        *,
        tokens: Iterable[str],
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        faults: Faults | None = None,
        rate_limit: float | None = None,
        rate_limit_burst: float | None = None,
        retry_after: float | Literal["date"] | None = None,
        pause_grace: float = 0.02,
        strict_headers: bool = True,
        keep_journal: bool = True,
    ) -> None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a collection of tokens, not a single str")
        if rate_limit is not None and not (math.isfinite(rate_limit) and rate_limit > 0):
            raise ValueError(f"rate_limit must be a positive number or None, not {rate_limit!r}")
        if rate_limit_burst is not None and not (
            math.isfinite(rate_limit_burst) and rate_limit_burst >= 1
        ):
            raise ValueError(f"rate_limit_burst must be at least 1, not {rate_limit_burst!r}")
        if (
            retry_after is not None
            and retry_after != "date"
            and (
                isinstance(retry_after, str)
                or not (math.isfinite(retry_after) and retry_after >= 0)
            )
        ):
            raise ValueError(
                f'retry_after must be None, a non-negative float or "date", not {retry_after!r}'
            )
        if not (math.isfinite(pause_grace) and pause_grace >= 0):
            raise ValueError(f"pause_grace must be a non-negative number, not {pause_grace!r}")

        self.tokens: set[str] = set(tokens)
        self.faults: Faults = faults if faults is not None else Faults()
        self.orders: dict[str, FakeStopOrder] = {}
        self.journal: list[JournalEntry] = []
        self.pause_violations: list[JournalEntry] = []
        self.in_flight = 0
        self.max_in_flight = 0

        self._host = host
        self._port = port
        self._seed = seed
        self._rate_limit = rate_limit
        self._burst = (
            rate_limit_burst
            if rate_limit_burst is not None
            else (max(1.0, rate_limit) if rate_limit is not None else 1.0)
        )
        self._retry_after = retry_after
        self._pause_grace = pause_grace
        self._strict_headers = strict_headers
        self._keep_journal = keep_journal

        self._factory = OrderFactory(seed)
        self._fault_rng = random.Random(f"asyncstop.testing faults {seed}")
        self._latency_rng = random.Random(f"asyncstop.testing latency {seed}")
        self._script: collections.deque[Fault] = collections.deque()
        self._script_by_order: dict[str, collections.deque[Fault]] = {}
        self._accounts: dict[str, _Account] = {}

        self._state = _State.UNOPENED
        self._runner: web.ServerRunner | None = None
        self._bound_port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing = False
        self._close_task: asyncio.Task[None] | None = None
        # One future per waiting request (never shared: cancelling a task that
        # awaits a future cancels the future, which must not release the others).
        self._waiters: set[asyncio.Future[bool]] = set()

    # -- lifetime ------------------------------------------------------------

    async def start(self) -> None:
        """Bind the server and start serving; an exchange starts at most once."""
        if self._state is _State.OPENED:
            raise RuntimeError("this FakeExchange is already started")
        if self._state is _State.CLOSED:
            raise RuntimeError("a closed FakeExchange cannot be started again; make a new one")
        loop = asyncio.get_running_loop()
        self._loop = loop
        server = web.Server(self._handle, loop=loop, access_log=None)
        runner = web.ServerRunner(server, shutdown_timeout=_SHUTDOWN_TIMEOUT)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._bound_port = int(runner.addresses[0][1])
        self._state = _State.OPENED

    async def close(self) -> None:
        """Stop serving: drop hung and waiting requests, close every connection. Idempotent.

        On return no task, transport or socket of the exchange is left. The work
        runs in a task that finishes even if the caller is cancelled.
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
        for waiter in list(self._waiters):
            _wake(waiter, True)
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
    def pending_faults(self) -> int:
        """Scripted faults not consumed yet (global and per order)."""
        return len(self._script) + sum(len(q) for q in self._script_by_order.values())

    def open_stop_orders(self, account_id: str | None = None) -> set[str]:
        """Ids of the still-live orders of ``account_id``, or of every account."""
        return {
            oid
            for oid, order in self.orders.items()
            if order.live and (account_id is None or order.account_id == account_id)
        }

    def cancelled_stop_orders(self, account_id: str | None = None) -> set[str]:
        """Ids of the orders no longer live (cancelled) of ``account_id``, or of every account."""
        return {
            oid
            for oid, order in self.orders.items()
            if not order.live and (account_id is None or order.account_id == account_id)
        }

    def reset_journal(self) -> None:
        """Start a new :attr:`journal` and :attr:`pause_violations`; ``max_in_flight`` restarts too.

        Requests in flight at the reset are left out of the new journal. Orders,
        faults and rate-limit state are untouched.
        """
        self.journal = []
        self.pause_violations = []
        self.max_in_flight = self.in_flight

    def __repr__(self) -> str:
        where = self.base_url if self._bound_port is not None else self._state.value
        if self._state is _State.CLOSED:
            where = "closed"
        live = sum(1 for order in self.orders.values() if order.live)
        return (
            f"<FakeExchange {where} orders={len(self.orders)} live={live} "
            f"requests={len(self.journal)} tokens={len(self.tokens)}>"
        )

    # -- what tests set up ---------------------------------------------------

    def add_stop_orders(
        self, count: int, account_id: str = "acc-1", activated_fraction: float = 0.0
    ) -> list[str]:
        """Add ``count`` realistic live stop orders to ``account_id``; return their ids in order.

        Ids are unique seeded ULIDs. ``round(count * activated_fraction)`` of the
        orders, chosen at random, have status ``Activated`` (the stop triggered);
        the rest ``WaitingForActivation``.
        """
        if count < 0:
            raise ValueError(f"count must not be negative, not {count!r}")
        if not 0.0 <= activated_fraction <= 1.0:
            raise ValueError(
                f"activated_fraction must be between 0 and 1, not {activated_fraction!r}"
            )
        _check_account_id(account_id)
        activated = self._factory.pick_activated(count, activated_fraction)
        return [
            self._add(account_id, None, ACTIVATED if i in activated else WAITING_FOR_ACTIVATION)
            for i in range(count)
        ]

    def add_stop_order(
        self,
        account_id: str = "acc-1",
        order_id: str | None = None,
        status: str = WAITING_FOR_ACTIVATION,
    ) -> str:
        """Add one live stop order (random realistic fields) and return its id.

        ``order_id`` defaults to a new seeded ULID; an explicit one must be new and
        must not contain ``/``. Change any other field through ``exchange.orders[id]``.
        """
        _check_account_id(account_id)
        if order_id is not None:
            if not isinstance(order_id, str) or not order_id or "/" in order_id:
                raise ValueError(f"order_id must be a non-empty str without '/', not {order_id!r}")
            if order_id in self.orders:
                raise ValueError(f"order {order_id!r} already exists")
        return self._add(account_id, order_id, status)

    def _add(self, account_id: str, order_id: str | None, status: str) -> str:
        created_ms, new_id = self._factory.new_id()
        while order_id is None and new_id in self.orders:
            created_ms, new_id = self._factory.new_id()
        order = self._factory.make(order_id or new_id, created_ms, account_id, status)
        self.orders[order.order_id] = order
        return order.order_id

    def inject(self, *faults: Fault) -> None:
        """Queue scripted faults; each is consumed by one later DELETE request, in order."""
        self._script.extend(_checked_faults(faults))

    def inject_for(self, order_id: str, *faults: Fault) -> None:
        """Queue scripted faults for requests about ``order_id`` only; they go before the FIFO's."""
        self._script_by_order.setdefault(order_id, collections.deque()).extend(
            _checked_faults(faults)
        )

    # -- the server ----------------------------------------------------------

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        headers = request.headers
        path = request.path
        authorization = headers.get("Authorization")
        order_id: str | None = None
        if path.startswith(_PREFIX):
            order_id = path[_PREFIX_LEN:]
            if not order_id or "/" in order_id:
                order_id = None
        entry = JournalEntry(
            method=request.method,
            path=path,
            order_id=order_id,
            account_id=headers.get("accountId") or None,
            time=now,
            done_time=math.inf,
            status=None,
            outcome=Outcome.IN_FLIGHT,
            headers={k: v for k, v in headers.items() if k.lower() != "authorization"},
            authorized=(
                authorization is not None
                and authorization.startswith("Bearer ")
                and authorization[7:] in self.tokens
            ),
        )
        if entry.method != "DELETE":
            return self._other_method(entry)

        journal = self.journal if self._keep_journal else None
        pending = _Pending(entry, journal, loop)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            return await self._delete(request, pending)
        finally:
            self.in_flight -= 1

    def _other_method(self, entry: JournalEntry) -> web.StreamResponse:
        if entry.method == "HEAD":
            # The client's warm_up(): an answer that opens and keeps the connection.
            # An explicit Content-Length: without it aiohttp's server closes
            # the connection after a HEAD, and warm-up would keep nothing open.
            status, outcome = 200, Outcome.WARM_UP
            response = web.Response(headers={"Content-Length": "0"})
        else:
            status, outcome = 405, Outcome.METHOD_NOT_ALLOWED
            response = web.Response(status=405, headers={"Allow": "DELETE, HEAD"})
        if self._keep_journal:
            self.journal.append(
                msgspec.structs.replace(entry, done_time=entry.time, status=status, outcome=outcome)
            )
        return response

    async def _delete(self, request: web.BaseRequest, pending: _Pending) -> web.StreamResponse:
        entry = pending.entry
        order_id, account_id = entry.order_id, entry.account_id
        # The gate: answered at once, before any latency or fault.
        if not entry.authorized:
            pending.settle(401, Outcome.UNAUTHORIZED)
            return _unauthorized()
        if account_id is None:
            pending.settle(400, Outcome.BAD_REQUEST)
            return _json_response(400, _BODY_NO_ACCOUNT)
        if self._strict_headers:
            problem = _header_problem(request)
            if problem is not None:
                pending.settle(400, Outcome.BAD_REQUEST)
                return _json_response(400, problem)
        if self._rate_limit is not None or account_id in self._accounts:
            refusal = self._check_rate(account_id, entry.time)
            if refusal is not None:
                retry_after, violation = refusal
                final = pending.settle(429, Outcome.RATE_LIMITED)
                if violation:
                    self.pause_violations.append(final)
                return _too_many(retry_after)

        # Past the gate: draw the fault and the latency, in arrival order.
        faults = self.faults
        fault = self._random_fault(faults, self._fault_rng.random())
        if order_id is not None and order_id in self._script_by_order:
            queue = self._script_by_order[order_id]
            fault = queue.popleft()
            if not queue:
                del self._script_by_order[order_id]
        elif self._script:
            fault = self._script.popleft()
        latency = faults.latency
        delay = (
            float(latency)
            if isinstance(latency, int | float)
            else latency.sample(self._latency_rng)
        )

        if fault is not None and fault.kind == "hang":
            pending.mark(Outcome.HUNG)
            try:
                # Until the exchange closes, or the client gives up and closes the
                # connection: from then on the request is in flight for nobody, so
                # it must not count in in_flight (aiohttp keeps the handler running).
                while request.transport is not None and not await self._wait(_HANG_POLL):
                    pass
            finally:
                # The connection goes without an answer.
                pending.settle(None, Outcome.HUNG)
            return _drop(request)
        if delay > 0.0:
            try:
                closing = await self._wait(delay)
            except asyncio.CancelledError:
                pending.settle(None, Outcome.DROPPED_BEFORE)
                raise
            if closing:
                pending.settle(None, Outcome.DROPPED_BEFORE)
                return _drop(request)

        if fault is None:
            order = self._apply(order_id, account_id)
            if order is None:
                pending.settle(404, Outcome.NOT_FOUND)
                return _json_response(404, _BODY_NOT_FOUND)
            pending.settle(200, Outcome.CANCELLED, applied=True)
            return _json_response(200, encode_cancel_reply(order))
        return self._answer_fault(request, fault, pending, account_id)

    def _answer_fault(
        self, request: web.BaseRequest, fault: Fault, pending: _Pending, account_id: str
    ) -> web.StreamResponse:
        applied = fault.apply and self._apply(pending.entry.order_id, account_id) is not None
        kind = fault.kind
        if kind == "drop":
            pending.settle(
                None, Outcome.DROPPED_AFTER if fault.apply else Outcome.DROPPED_BEFORE, applied
            )
            return _drop(request)
        if kind == "error":
            assert fault.status is not None
            pending.settle(
                fault.status, Outcome.ERROR_AFTER if fault.apply else Outcome.ERROR_BEFORE, applied
            )
            response = _json_response(
                fault.status,
                fault.body if fault.body is not None else _default_error_body(fault.status),
            )
            if fault.retry_after is not None:
                response.headers["Retry-After"] = fault.retry_after
            return response
        if kind == "reply":
            assert fault.status is not None
            pending.settle(fault.status, Outcome.REPLIED, applied)
            reply_headers = dict(fault.headers)
            if not any(name.lower() == "content-type" for name in reply_headers):
                reply_headers.update(_JSON_HEADERS)
            return web.Response(status=fault.status, body=fault.body, headers=reply_headers)
        if kind == "redirect":
            assert fault.location is not None
            pending.settle(307, Outcome.REDIRECTED)
            return web.Response(status=307, headers={"Location": fault.location})
        if kind == "rate_limited":
            pending.settle(429, Outcome.RATE_LIMITED)
            pause = _pause_seconds(fault.retry_after)
            if pause is not None:
                self._start_pause(self._account(account_id, self._loop_time()), pause, None)
            return _too_many(fault.retry_after)
        # "unauthorized"
        pending.settle(401, Outcome.UNAUTHORIZED)
        return _unauthorized()

    def _loop_time(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def _random_fault(self, faults: Faults, draw: float) -> Fault | None:
        threshold = faults.error_before
        if draw < threshold:
            return Fault.error(faults.error_status)
        threshold += faults.error_after
        if draw < threshold:
            return Fault.error(faults.error_status, after=True)
        threshold += faults.drop_before
        if draw < threshold:
            return _DROP_BEFORE
        threshold += faults.drop_after
        if draw < threshold:
            return _DROP_AFTER
        threshold += faults.hang
        if draw < threshold:
            return _HANG
        return None

    def _apply(self, order_id: str | None, account_id: str) -> FakeStopOrder | None:
        """Cancel the order if it exists, is live and is the account's; return it if so."""
        if order_id is None:
            return None
        order = self.orders.get(order_id)
        if order is None or not order.live or order.account_id != account_id:
            return None
        stamp = now_timestamp()
        order.live = False
        order.cancellation_date = stamp
        order.updated_at = stamp
        order.cancel_count += 1
        return order

    async def _wait(self, delay: float | None) -> bool:
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

    # -- rate limit ----------------------------------------------------------

    def _account(self, account_id: str, now: float) -> _Account:
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account(self._burst, now)
        return account

    def _take_token(self, account: _Account, now: float) -> bool:
        rate = self._rate_limit
        if rate is None:
            return True
        account.tokens = min(self._burst, account.tokens + (now - account.refilled_at) * rate)
        account.refilled_at = now
        if account.tokens >= 1.0:
            account.tokens -= 1.0
            return True
        return False

    def _check_rate(self, account_id: str, now: float) -> tuple[str | None, bool] | None:
        """None to let the request through, else (Retry-After value, is it a pause violation)."""
        account = self._account(account_id, now)
        if now < account.pause_end:
            if now >= account.pause_start + self._pause_grace:
                return self._remaining_header(account, now), True
            if self._take_token(account, now):
                return None
            return self._remaining_header(account, now), False
        if self._take_token(account, now):
            return None
        assert self._rate_limit is not None
        refill = (1.0 - account.tokens) / self._rate_limit
        if isinstance(self._retry_after, float | int):
            pause = float(self._retry_after)
            header = _format_seconds(pause)
            self._start_pause(account, pause, None)
            return header, False
        seconds = max(1, math.ceil(refill))
        if self._retry_after is None:
            self._start_pause(account, seconds, None)
            return str(seconds), False
        # "date": the date has whole seconds, so round it up and pause until then.
        wall = time.time()
        until = math.ceil(wall + seconds)
        header = _http_date(until)
        self._start_pause(account, until - wall, header)
        return header, False

    def _start_pause(self, account: _Account, seconds: float, date_header: str | None) -> None:
        now = self._loop_time()
        account.pause_start = now
        account.pause_end = now + seconds
        account.date_header = date_header

    def _remaining_header(self, account: _Account, now: float) -> str:
        remaining = account.pause_end - now
        if isinstance(self._retry_after, float | int):
            return _format_remaining(remaining)
        if self._retry_after is None:
            return str(max(1, math.ceil(remaining)))
        if account.date_header is None:
            account.date_header = _http_date(math.ceil(time.time() + remaining))
        return account.date_header


_DROP_BEFORE: Final = Fault.drop()
_DROP_AFTER: Final = Fault.drop(after=True)
_HANG: Final = Fault.hang()
#: How often a hung request checks whether its client has gone, in seconds.
_HANG_POLL: Final = 0.01


def _unauthorized() -> web.Response:
    return web.Response(
        status=401,
        body=_BODY_UNAUTHORIZED,
        headers={"Content-Type": _JSON, "WWW-Authenticate": "Bearer"},
    )


def _too_many(retry_after: str | None) -> web.Response:
    response = _json_response(429, _BODY_TOO_MANY)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


def _header_problem(request: web.BaseRequest) -> bytes | None:
    """The 400 body for a request that breaks the documented form, or None."""
    headers = request.headers
    if headers.get("Content-Type") != _API_CONTENT_TYPE:
        return _BODY_BAD_CONTENT_TYPE
    if "Accept" not in headers:
        return _BODY_NO_ACCEPT
    if request.body_exists:
        return _BODY_HAS_BODY
    return None


def _check_account_id(account_id: str) -> None:
    if not isinstance(account_id, str) or not account_id or account_id.strip() != account_id:
        raise ValueError(
            f"account_id must be a non-empty str without surrounding spaces: {account_id!r}"
        )


def _checked_faults(faults: tuple[Fault, ...]) -> tuple[Fault, ...]:
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(
                f"expected Fault objects (Fault.error(), Fault.drop(), ...), got {fault!r}"
            )
    return faults
