"""The fake exchange's stop orders: the mutable record, realistic seeded generation, the wire form.

Ids are ULIDs (26 Crockford base32 characters, like the documented example
``01K2MNGAWPMQJ7WGATFSCAS1G4``) whose time part matches the order's
``createdAt``. Generated orders start at a fixed instant (the documented
example's ``createdAt``, 2025-08-14T16:09:44Z) and move forward a few hundred
milliseconds per order, so that ids and timestamps depend on the seed only,
never on the wall clock.
"""

from __future__ import annotations

import dataclasses
import random
import time
from dataclasses import dataclass
from typing import Final

import msgspec

from ._accounts import FakeAccount

__all__ = [
    "FakeStopOrder",
    "OrderBook",
    "OrderFactory",
    "cancel",
    "encode_cancel_reply",
    "format_ticks",
    "now_timestamp",
    "other_order",
]

WAITING_FOR_ACTIVATION: Final = "WaitingForActivation"
ACTIVATED: Final = "Activated"

_CROCKFORD: Final = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
#: 100-nanosecond ticks per second: the exchange's timestamps have 7 fractional digits.
_TICKS_PER_SECOND: Final = 10_000_000
_TICKS_PER_MS: Final = 10_000
#: createdAt of the documented example, in milliseconds since the epoch.
_FIRST_ORDER_MS: Final = 1_755_187_784_598


@dataclass(slots=True)
class FakeStopOrder:
    """One stop order held by the fake exchange; tests may read and change any field.

    The wire fields (``market_id`` ... ``cancellation_date``) are sent as they
    are in the 200 reply: prices and amounts are decimal strings, timestamps are
    strings in the exchange's 7-fractional-digit form. ``live`` is whether a
    cancel can still apply; a successful cancel sets it to False, sets
    ``cancellation_date`` and ``updated_at`` to the time of the cancel, leaves
    ``status`` as it was, and adds 1 to ``cancel_count``. Setting ``live`` back to
    True re-arms the order.
    """

    order_id: str
    account_id: str
    market_id: str
    market_display_name: str
    order_type: str
    side: str
    requested_price: str | None
    activation_price: str | None
    requested_amount: str
    time_in_force: str
    status: str
    created_at: str
    updated_at: str
    cancellation_date: str | None = None
    live: bool = True
    cancel_count: int = 0


class _WireOrder(msgspec.Struct, rename="camel"):
    """The documented ``order`` object, fields in the documented order."""

    market_id: str
    market_display_name: str
    order_id: str
    order_type: str
    side: str
    requested_price: str | None
    activation_price: str | None
    requested_amount: str
    time_in_force: str
    status: str
    created_at: str
    updated_at: str
    cancellation_date: str | None


class _WireReply(msgspec.Struct):
    order: _WireOrder


_encoder: Final = msgspec.json.Encoder()


def encode_cancel_reply(order: FakeStopOrder) -> bytes:
    """Encode the documented 200 body ``{"order": {...}}`` for ``order``."""
    return _encoder.encode(
        _WireReply(
            _WireOrder(
                order.market_id,
                order.market_display_name,
                order.order_id,
                order.order_type,
                order.side,
                order.requested_price,
                order.activation_price,
                order.requested_amount,
                order.time_in_force,
                order.status,
                order.created_at,
                order.updated_at,
                order.cancellation_date,
            )
        )
    )


def format_ticks(ticks: int) -> str:
    """Format 100-ns ticks since the epoch as ``2025-08-14T16:09:44.5986099Z``."""
    seconds, fraction = divmod(ticks, _TICKS_PER_SECOND)
    return f"{time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(seconds))}.{fraction:07d}Z"


class _Clock:
    """Formats the current wall-clock time, reusing the date part within one second."""

    __slots__ = ("_prefix", "_second")

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        ticks = time.time_ns() // 100
        second, fraction = divmod(ticks, _TICKS_PER_SECOND)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._prefix}.{fraction:07d}Z"


#: The current time in the exchange's timestamp form; used for cancellationDate.
now_timestamp: Final = _Clock()


# Every pair of Crockford base32 digits, indexed by the 10 bits they encode.
_DIGIT_PAIRS: Final = [high + low for high in _CROCKFORD for low in _CROCKFORD]
_ULID_SHIFTS: Final = range(120, -10, -10)


def _ulid(ms: int, randomness: int) -> str:
    """48 bits of milliseconds and 80 random bits as 26 Crockford base32 characters."""
    value = (ms << 80) | randomness
    return "".join([_DIGIT_PAIRS[(value >> shift) & 0x3FF] for shift in _ULID_SHIFTS])


def _decimal(ticks: int, places: int) -> str:
    """Format an integer number of 10**-places units as a plain decimal string."""
    if places == 0:
        return str(ticks)
    whole, fraction = divmod(ticks, 10**places)
    digits = f"{fraction:0{places}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


@dataclass(frozen=True, slots=True)
class _Market:
    market_id: str
    display_name: str
    reference_price: float
    price_places: int
    amounts: tuple[str, ...]


_MARKETS: Final = (
    _Market("perp.btc_usdt", "Perpetual BTC/USDT", 115_000.0, 1, ("0.001", "0.01", "0.1", "1")),
    _Market("perp.eth_usdt", "Perpetual ETH/USDT", 4_600.0, 2, ("0.01", "0.1", "1", "2.5")),
    _Market("spot.btc_usdt", "Spot BTC/USDT", 115_000.0, 2, ("0.0005", "0.002", "0.05")),
    _Market("spot.eth_usdt", "Spot ETH/USDT", 4_600.0, 2, ("0.02", "0.5", "3")),
    _Market("spot.sol_usdt", "Spot SOL/USDT", 200.0, 3, ("1", "5", "12.5", "40")),
    _Market("cfd.xau_usd", "CFD XAU/USD", 3_350.0, 2, ("0.1", "1", "5")),
    _Market("cfd.eur_usd", "CFD EUR/USD", 1.17, 5, ("1000", "10000", "100000")),
)


class OrderFactory:
    """Makes realistic stop orders from one seeded RNG, in a reproducible sequence."""

    __slots__ = ("_clock_ms", "_rng")

    def __init__(self, seed: int) -> None:
        # A stream of its own, so that adding orders never shifts the fault or latency draws.
        self._rng = random.Random(f"asyncstop.testing orders {seed}")
        self._clock_ms = _FIRST_ORDER_MS

    def new_id(self) -> tuple[int, str]:
        """Advance the clock and return (createdAt ms, ULID) for the next order."""
        self._clock_ms += self._rng.randint(1, 400)
        return self._clock_ms, _ulid(self._clock_ms, self._rng.getrandbits(80))

    def make(self, order_id: str, created_ms: int, account_id: str, status: str) -> FakeStopOrder:
        """Make a live order with random market, type, side, prices and amount."""
        rng = self._rng
        market = rng.choice(_MARKETS)
        unit = 10**market.price_places
        activation = round(market.reference_price * rng.uniform(0.9, 1.1) * unit)
        order_type = "Limit" if rng.random() < 0.7 else "Market"
        side = "Buy" if rng.random() < 0.5 else "Sell"
        requested: str | None = None
        if order_type == "Limit":
            # A stop-limit's price sits a little beyond its trigger, like the documented example.
            offset = max(1, round(activation * rng.uniform(0.0005, 0.005)))
            requested = _decimal(
                activation + offset if side == "Sell" else activation - offset, market.price_places
            )
        created_ticks = created_ms * _TICKS_PER_MS + rng.randrange(_TICKS_PER_MS)
        if status == ACTIVATED:
            # The trigger fired some time after the order was placed.
            updated_ticks = created_ticks + rng.randint(1, 3_600) * _TICKS_PER_SECOND
        else:
            updated_ticks = created_ticks + rng.randint(1, 9)
        return FakeStopOrder(
            order_id=order_id,
            account_id=account_id,
            market_id=market.market_id,
            market_display_name=market.display_name,
            order_type=order_type,
            side=side,
            requested_price=requested,
            activation_price=_decimal(activation, market.price_places),
            requested_amount=rng.choice(market.amounts),
            time_in_force="Gtc",
            status=status,
            created_at=format_ticks(created_ticks),
            updated_at=format_ticks(updated_ticks),
        )

    def pick_activated(self, count: int, fraction: float) -> set[int]:
        """Choose which of ``count`` new orders are Activated: ``round(count * fraction)``."""
        return set(self._rng.sample(range(count), round(count * fraction)))


def cancel(
    orders: dict[str, FakeStopOrder], order_id: str | None, account_id: str
) -> FakeStopOrder | None:
    """Cancel the order if it exists, is live and is the account's; return it if so."""
    if order_id is None:
        return None
    order = orders.get(order_id)
    if order is None or not order.live or order.account_id != account_id:
        return None
    stamp = now_timestamp()
    order.live = False
    order.cancellation_date = stamp
    order.updated_at = stamp
    order.cancel_count += 1
    return order


#: The documented example's order (cancel-stop-order.txt), for answers about an order we lack.
_EXAMPLE: Final = FakeStopOrder(
    order_id="01K2MNGAWPMQJ7WGATFSCAS1G4",
    account_id="",
    market_id="perp.btc_usdt",
    market_display_name="Perpetual BTC/USDT",
    order_type="Limit",
    side="Sell",
    requested_price="115100",
    activation_price="115000",
    requested_amount="1",
    time_in_force="Gtc",
    status="Rejected",
    created_at="2025-08-14T16:09:44.5986099Z",
    updated_at="2025-08-14T16:09:44.5986103Z",
)
_EXAMPLE_NEIGHBOUR: Final = "01K2MNGAWPMQJ7WGATFSCAS1G5"


def other_order(
    orders: dict[str, FakeStopOrder], asked_id: str | None, other_id: str | None
) -> FakeStopOrder:
    """The order an answer about ``asked_id`` wrongly describes (see ``Fault.other_order``)."""
    if other_id is not None and other_id in orders and other_id != asked_id:
        return orders[other_id]
    if other_id is None or other_id == asked_id:
        other_id = _EXAMPLE.order_id if asked_id != _EXAMPLE.order_id else _EXAMPLE_NEIGHBOUR
    asked = orders.get(asked_id) if asked_id is not None else None
    return dataclasses.replace(asked if asked is not None else _EXAMPLE, order_id=other_id)


class OrderBook:
    """The exchange's orders and accounts, and how tests set them up and read them.

    Attributes:
        orders: every order by id; :class:`FakeStopOrder` records, mutable.
        accounts: every account the exchange knows, by id, as :class:`FakeAccount`.
    """

    def __init__(self, seed: int) -> None:
        self.orders: dict[str, FakeStopOrder] = {}
        self.accounts: dict[str, FakeAccount] = {}
        self._factory = OrderFactory(seed)

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
        self._known_account(account_id)
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
        self._known_account(account_id)
        if order_id is not None:
            if not isinstance(order_id, str) or not order_id or "/" in order_id:
                raise ValueError(f"order_id must be a non-empty str without '/', not {order_id!r}")
            if order_id in self.orders:
                raise ValueError(f"order {order_id!r} already exists")
        return self._add(account_id, order_id, status)

    def add_account(
        self,
        account_id: str,
        *,
        account_name: str | None = None,
        account_type: str = "Hedging",
        total_balance_in_rat: str = "10000.00",
        is_copy_trading_account: bool = False,
    ) -> FakeAccount:
        """Add (or replace) the account ``account_id`` as ``GET /accounts`` describes it.

        Accounts are otherwise made on first mention (an order, a token's list)
        with these defaults and the name ``"Fake <type> account <id>"``.
        """
        _check_account_id(account_id)
        account = FakeAccount(
            account_id,
            account_name or f"Fake {account_type} account {account_id}",
            account_type,
            total_balance_in_rat,
            is_copy_trading_account,
        )
        self.accounts[account_id] = account
        return account

    def _add(self, account_id: str, order_id: str | None, status: str) -> str:
        created_ms, new_id = self._factory.new_id()
        while order_id is None and new_id in self.orders:
            created_ms, new_id = self._factory.new_id()
        order = self._factory.make(order_id or new_id, created_ms, account_id, status)
        self.orders[order.order_id] = order
        return order.order_id

    def _known_account(self, account_id: str) -> FakeAccount:
        account = self.accounts.get(account_id)
        if account is None:
            account = self.add_account(account_id)
        return account


def _check_account_id(account_id: str) -> None:
    if not isinstance(account_id, str) or not account_id or account_id.strip() != account_id:
        raise ValueError(
            f"account_id must be a non-empty str without surrounding spaces: {account_id!r}"
        )
