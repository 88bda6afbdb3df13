"""Wire types of the Cancel Stop order reply, decoded with msgspec.

The reply is decoded in two steps. The fast path decodes straight into the
typed :class:`StopOrder`. If that fails on a field (a new timestamp format, a
number where a decimal string was documented), the lenient path decodes the
body as plain JSON and converts field by field, leaving a field it cannot read
as ``None``: a cancel that the exchange confirmed must never be reported as a
failure because of decoding strictness. Only a body that is not a JSON object
with an ``order`` object at all is an error (``ResponseValidationError``).
"""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

import msgspec

__all__ = ["OrderStatus", "StopOrder", "decode_stop_order"]


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
    Holding only scalars, it is not tracked by the garbage collector.
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


class _Reply(msgspec.Struct):
    order: StopOrder


class _LenientReply(msgspec.Struct):
    order: dict[str, Any]


_reply_decoder = msgspec.json.Decoder(_Reply)
_lenient_decoder = msgspec.json.Decoder(_LenientReply)
# (python name, wire name, type) of each StopOrder field, for the lenient path.
_FIELDS = [(f.name, f.encode_name, f.type) for f in msgspec.structs.fields(StopOrder)]


class UndecodableReply(Exception):
    """Raised by :func:`decode_stop_order` for a body with no ``order`` object."""


def decode_stop_order(body: bytes, requested_order_id: str) -> StopOrder:
    """Decode a 2xx reply; raise :class:`UndecodableReply` if it has no ``order`` object."""
    try:
        return _reply_decoder.decode(body).order
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as err:
        raise UndecodableReply(str(err)) from err
    return _decode_leniently(body, requested_order_id)


def _decode_leniently(body: bytes, requested_order_id: str) -> StopOrder:
    try:
        raw = _lenient_decoder.decode(body).order
    except (msgspec.ValidationError, msgspec.DecodeError) as err:
        raise UndecodableReply(str(err)) from err
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
    fields.setdefault("order_id", requested_order_id)
    return StopOrder(**fields)
