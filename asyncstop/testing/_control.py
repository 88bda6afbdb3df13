"""The fake exchange's control surface: loopback-only JSON endpoints under ``/_fake/``.

They let a shell drive a running fake exchange (``asyncstop fake-exchange``,
``python -m asyncstop.testing``) while a bot talks to it, on the same port as
the API. Every path of the API contract starts with ``/frontoffice/``, so none
of these can shadow one, and none is in ``api/openapi.yaml``. Control requests
are not journaled, take no faults and need no token; only a loopback peer that
names the exchange by a loopback host (``127.0.0.1``, ``[::1]``, ``localhost``)
is answered, so neither another machine nor a web page in a local browser (by
DNS rebinding) can reach them: the rest get 403. ``docs/fake-exchange.md``
describes them for users::

    GET    /_fake/accounts                      live and cancelled stop orders per account
    GET    /_fake/accounts/{account_id}         one account's counts (404: unknown account)
    POST   /_fake/accounts/{account_id}/orders  add live stop orders: {"count": 3} or
                                                {"order_ids": ["A1", "A2"]}; answers their ids
    GET    /_fake/faults                        the faults in force
    PUT    /_fake/faults                        replace them: what the body leaves out is off
    DELETE /_fake/faults                        switch every fault off

Answers are JSON; a refusal is ``{"error": "<why>"}`` with 400, 403, 404 or 405.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Final, Literal, TypeVar

import msgspec
from aiohttp import web

from ._faults import Fault, Faults, LongTailLatency

if TYPE_CHECKING:
    from ._exchange import FakeExchange

__all__ = [
    "CONTROL_PREFIX",
    "ControlSurface",
    "FaultSettings",
    "is_loopback_address",
    "is_loopback_host",
]

#: Every control path starts with this; no path of the API contract does.
CONTROL_PREFIX: Final = "/_fake/"
#: The most orders one POST may add: a typo must not fill the memory of the machine.
_MAX_NEW_ORDERS: Final = 1_000_000
_ENDPOINTS: Final = (
    "GET /_fake/accounts",
    "GET /_fake/accounts/{account_id}",
    "POST /_fake/accounts/{account_id}/orders",
    "GET, PUT, DELETE /_fake/faults",
)


class _LongTail(msgspec.Struct, forbid_unknown_fields=True):
    """A :class:`LongTailLatency` on the wire."""

    median: float
    p99: float
    max: float = 1.0


class FaultSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """The faults of a running exchange as ``GET``/``PUT /_fake/faults`` carry them.

    ``outage`` is :attr:`FakeExchange.outage`: a status (``503``) for an error
    answer, ``"drop"`` for a connection closed without an answer, ``"hang"``
    for no answer ever, or null. The rest are the fields of :class:`Faults`,
    the random mix, with ``latency`` in seconds or as ``{"median": 0.02,
    "p99": 0.2, "max": 1.0}``.
    """

    outage: int | Literal["drop", "hang"] | None = None
    latency: float | _LongTail = 0.0
    rate_limited: float = 0.0
    retry_after: float | None = 1.0
    error_before: float = 0.0
    error_after: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    hang: float = 0.0
    error_status: int = 503

    @classmethod
    def of(cls, faults: Faults, outage: Fault | None) -> FaultSettings:
        """The settings that describe ``faults`` and ``outage``."""
        latency = faults.latency
        return cls(
            outage=_outage_setting(outage),
            latency=(
                _LongTail(latency.median, latency.p99, latency.max)
                if isinstance(latency, LongTailLatency)
                else float(latency)
            ),
            rate_limited=faults.rate_limited,
            retry_after=faults.retry_after,
            error_before=faults.error_before,
            error_after=faults.error_after,
            drop_before=faults.drop_before,
            drop_after=faults.drop_after,
            hang=faults.hang,
            error_status=faults.error_status,
        )

    def faults(self) -> Faults:
        """The random mix these settings describe; ValueError if it is impossible."""
        latency = self.latency
        return Faults(
            error_before=self.error_before,
            error_after=self.error_after,
            drop_before=self.drop_before,
            drop_after=self.drop_after,
            hang=self.hang,
            rate_limited=self.rate_limited,
            error_status=self.error_status,
            retry_after=self.retry_after,
            latency=(
                LongTailLatency(latency.median, latency.p99, latency.max)
                if isinstance(latency, _LongTail)
                else latency
            ),
        )

    def outage_fault(self) -> Fault | None:
        """The outage these settings describe; ValueError for a status that is no error."""
        if self.outage is None:
            return None
        if self.outage == "drop":
            return Fault.drop()
        if self.outage == "hang":
            return Fault.hang()
        return Fault.error(self.outage)


def _outage_setting(outage: Fault | None) -> int | Literal["drop", "hang"] | None:
    if outage is None:
        return None
    if outage.kind == "drop":
        return "drop"
    if outage.kind == "hang":
        return "hang"
    assert outage.status is not None  # an error: the only other kind an outage may be
    return outage.status


class _Counts(msgspec.Struct):
    account_id: str
    live: int
    cancelled: int


class _Accounts(msgspec.Struct):
    accounts: list[_Counts]


class _NewOrders(msgspec.Struct, forbid_unknown_fields=True):
    count: int | None = None
    order_ids: list[str] | None = None


class _Added(msgspec.Struct):
    account_id: str
    order_ids: list[str]


_encoder: Final = msgspec.json.Encoder()
_Body = TypeVar("_Body", "_NewOrders", "FaultSettings")


class _Refused(Exception):
    """A control request answered with ``{"error": ...}``."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


def _json(status: int, value: object) -> web.Response:
    return web.Response(
        status=status,
        body=_encoder.encode(value) + b"\n",
        content_type="application/json",
    )


def is_loopback_address(host: str | None) -> bool:
    """Whether ``host`` is a loopback IP address (``::ffff:127.0.0.1`` included)."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_loopback_host(header: str | None) -> bool:
    """Whether a Host header names a loopback host; no header at all passes (no browser)."""
    if header is None:
        return True
    host = header.strip()
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.lower() == "localhost" or is_loopback_address(host)


class ControlSurface:
    """Answers the control requests of one :class:`FakeExchange` (see the module docstring)."""

    __slots__ = ("_exchange",)

    def __init__(self, exchange: FakeExchange) -> None:
        self._exchange = exchange

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Answer one request whose path starts with :data:`CONTROL_PREFIX`."""
        if not is_loopback_address(request.remote) or not is_loopback_host(
            request.headers.get("Host")
        ):
            return _json(403, {"error": "the control surface answers loopback clients only"})
        try:
            return await self._route(request)
        except _Refused as refusal:
            response = _json(refusal.status, {"error": str(refusal)})
            response.headers.update(refusal.headers)
            return response

    async def _route(self, request: web.BaseRequest) -> web.StreamResponse:
        parts = request.path[len(CONTROL_PREFIX) :].strip("/").split("/")
        method = request.method
        if parts == ["accounts"]:
            _allow(method, "GET")
            return _json(200, _Accounts(self._counts()))
        if len(parts) == 2 and parts[0] == "accounts":
            _allow(method, "GET")
            account_id = parts[1]
            if account_id not in self._exchange.accounts:
                raise _Refused(404, f"the fake exchange has no account {account_id!r}")
            return _json(200, self._counts(account_id)[0])
        if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "orders":
            _allow(method, "POST")
            return _json(201, self._add_orders(parts[1], await _decode(request, _NewOrders)))
        if parts == ["faults"]:
            _allow(method, "GET, PUT, DELETE")
            if method == "PUT":
                self._set_faults(await _decode(request, FaultSettings))
            elif method == "DELETE":
                self._set_faults(FaultSettings())
            exchange = self._exchange
            return _json(200, FaultSettings.of(exchange.faults, exchange.outage))
        raise _Refused(404, f"no control endpoint here; there are: {'; '.join(_ENDPOINTS)}")

    def _counts(self, account_id: str | None = None) -> list[_Counts]:
        """Live and cancelled orders of ``account_id``, or of every account, in one pass."""
        exchange = self._exchange
        wanted = [account_id] if account_id is not None else list(exchange.accounts)
        counts = {name: _Counts(name, 0, 0) for name in wanted}
        for order in exchange.orders.values():
            count = counts.get(order.account_id)
            if count is not None:
                if order.live:
                    count.live += 1
                else:
                    count.cancelled += 1
        return list(counts.values())

    def _add_orders(self, account_id: str, new: _NewOrders) -> _Added:
        exchange = self._exchange
        try:
            if new.order_ids is not None:
                if new.count is not None:
                    raise ValueError("give either count or order_ids, not both")
                if len(set(new.order_ids)) != len(new.order_ids):
                    raise ValueError("order_ids repeats an id")
                for order_id in new.order_ids:  # all checked before any is added
                    if not order_id or "/" in order_id:
                        raise ValueError(f"an order id is non-empty, without '/': {order_id!r}")
                    if order_id in exchange.orders:
                        raise ValueError(f"order {order_id!r} already exists")
                ids = [exchange.add_stop_order(account_id, order_id) for order_id in new.order_ids]
            else:
                count = 1 if new.count is None else new.count
                if not 0 <= count <= _MAX_NEW_ORDERS:
                    raise ValueError(f"count must be from 0 to {_MAX_NEW_ORDERS}, not {count}")
                ids = exchange.add_stop_orders(count, account_id=account_id)
        except ValueError as err:
            raise _Refused(400, str(err)) from None
        return _Added(account_id, ids)

    def _set_faults(self, settings: FaultSettings) -> None:
        try:
            faults, outage = settings.faults(), settings.outage_fault()
        except ValueError as err:
            raise _Refused(400, str(err)) from None
        self._exchange.faults = faults
        self._exchange.outage = outage


def _allow(method: str, allowed: str) -> None:
    if method not in allowed.split(", "):
        raise _Refused(405, f"{method} is not allowed here", {"Allow": allowed})


async def _decode(request: web.BaseRequest, kind: type[_Body]) -> _Body:
    """The request's JSON body as ``kind``; an empty body is ``{}``."""
    body = await request.read()
    try:
        return msgspec.json.decode(body or b"{}", type=kind)
    except msgspec.DecodeError as err:
        raise _Refused(400, f"the body is not what this endpoint takes: {err}") from None
