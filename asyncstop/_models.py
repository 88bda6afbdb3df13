"""Wire types of the Cancel Stop order reply, decoded with msgspec.

The reply is decoded in two steps. The fast path decodes straight into the
typed :class:`StopOrder`. If that fails on a field (a new timestamp format, a
number where a decimal string was documented), the lenient path decodes the
body as plain JSON and converts field by field, leaving a field it cannot read
as ``None``: a cancel that the exchange confirmed must never be reported as a
failure because of decoding strictness. What is required is the evidence: a
JSON object with an ``order`` object whose ``orderId`` is the id asked. Any
other body (HTML, empty, another order's reply) is :class:`UndecodableReply`.

Unknown fields are ignored everywhere: the exchange may add fields.
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

__all__ = [
    "OrderStatus",
    "OtherOrderReply",
    "StopOrder",
    "TradingAccount",
    "UndecodableReply",
    "decode_accounts",
    "decode_stop_order",
]


class OrderStatus(enum.StrEnum):
    """The order statuses the documentation lists.

    ``StopOrder.status`` is a plain ``str`` so that a status the docs do not list
    still decodes; it compares equal to these members (``order.status ==
    OrderStatus.ACTIVATED``).
    """

    WAITING_FOR_ACTIVATION = "WaitingForActivation"
    ACTIVATED = "Activated"
    REJECTED = "Rejected"


class StopOrder(msgspec.Struct, frozen=True, kw_only=True, rename="camel", gc=False):
    """The cancelled stop order, as the exchange returned it.

    Decimal strings are ``Decimal``, timestamps are timezone-aware ``datetime``
    (the exchange sends 7 fractional digits; they are rounded to microseconds).
    Every field except ``order_id`` may be ``None``: nullable in the docs, or
    missing or unreadable in a reply that nevertheless confirmed the cancel.
    """

    order_id: str
    market_id: str | None = None
    market_display_name: str | None = None
    order_type: str | None = None
    side: str | None = None
    requested_price: Decimal | None = None
    activation_price: Decimal | None = None
    requested_amount: Decimal | None = None
    time_in_force: str | None = None
    status: str | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None
    cancellation_date: datetime | None = None

    @property
    def activated(self) -> bool:
        """True when the stop had already triggered: it may have become a live order."""
        return self.status == OrderStatus.ACTIVATED.value


class TradingAccount(msgspec.Struct, frozen=True, kw_only=True, rename="camel"):
    """One trading account the token may use, from ``GET /frontoffice/api/v3/accounts``."""

    account_id: str
    account_name: str | None = None
    #: ``Hedging`` or ``Netting`` (a plain str, so that a new type still decodes).
    account_type: str | None = None
    total_balance_in_rat: Decimal | None = msgspec.field(default=None, name="totalBalanceInRAT")
    is_copy_trading_account: bool | None = None


class _Reply(msgspec.Struct):
    order: StopOrder


class _LenientReply(msgspec.Struct):
    order: dict[str, Any]


_reply_decoder = msgspec.json.Decoder(_Reply)
_accounts_decoder = msgspec.json.Decoder(list[TradingAccount])
_lenient_decoder = msgspec.json.Decoder(_LenientReply)
# (python name, wire name, type) of each StopOrder field, for the lenient path.
_FIELDS = [(f.name, f.encode_name, f.type) for f in msgspec.structs.fields(StopOrder)]


class UndecodableReply(Exception):
    """Raised for a body that is not the reply expected (no evidence of what was asked)."""


class OtherOrderReply(UndecodableReply):
    """A well-formed reply about another order: an answer meant for another request."""


def decode_stop_order(body: bytes, requested_order_id: str) -> StopOrder:
    """Decode a 2xx reply; raise :class:`UndecodableReply` unless it is this order's reply."""
    try:
        order = _reply_decoder.decode(body).order
    except msgspec.ValidationError:
        order = _decode_leniently(body)
    except msgspec.DecodeError as err:
        raise UndecodableReply(f"not JSON ({err})") from None
    if order.order_id != requested_order_id:
        raise OtherOrderReply(f"the reply is for order {order.order_id!r}")
    return order


def decode_accounts(body: bytes) -> list[TradingAccount]:
    """Decode the accounts list; raise :class:`UndecodableReply` if it is not one."""
    try:
        return _accounts_decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise UndecodableReply(f"not a JSON list of accounts ({err})") from None


def _decode_leniently(body: bytes) -> StopOrder:
    try:
        raw = _lenient_decoder.decode(body).order
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise UndecodableReply(f"no order object ({err})") from None
    if not isinstance(raw.get("orderId"), str):
        raise UndecodableReply("the order object has no orderId")
    fields: dict[str, Any] = {}
    for name, wire_name, field_type in _FIELDS:
        value = raw.get(wire_name)
        if value is None:
            continue
        try:
            fields[name] = msgspec.convert(value, field_type, strict=False)
        except msgspec.ValidationError:
            # Keep what could be read; this field stays None.
            continue
    return StopOrder(**fields)
