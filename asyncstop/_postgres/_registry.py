"""PostgresRegistry: a bot's stop orders in PostgreSQL, seen by a service on another machine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Final, Self

from .._errors import InvalidInputError, WatchdogError
from .._validation import check_account_id, check_order_id
from ._db import DEFAULT_COMMAND_TIMEOUT, DEFAULT_CONNECT_TIMEOUT, Database, ensure_schema
from ._lease import DEFAULT_LEASE_TTL, Lease

if TYPE_CHECKING:
    from .._report import OrderItem

__all__ = ["PostgresRegistry", "fence", "registry_dsn", "unfence"]

_MAX_OWNER_LENGTH: Final = 200

# The lease's fence: the row goes in only while the owner's epoch is the lease's
# and its lease has not expired by the server's clock. FOR SHARE locks the
# owner's row, so a service's claim (which raises the epoch) waits for this
# insert to commit and then sees the order, or this insert waits for the claim
# and then finds the epoch changed and inserts nothing.
_ADD_FENCED: Final = """
    INSERT INTO asyncstop_stop_orders (owner, account_id, order_id, protective, epoch)
    SELECT owner, $2, $3, $4, epoch FROM asyncstop_owners
    WHERE owner = $1 AND epoch = $5 AND expires_at > clock_timestamp()
    FOR SHARE
    ON CONFLICT (owner, account_id, order_id)
    DO UPDATE SET protective = EXCLUDED.protective, epoch = EXCLUDED.epoch
    RETURNING 1
"""
_ADD: Final = """
    INSERT INTO asyncstop_stop_orders (owner, account_id, order_id, protective, epoch)
    VALUES ($1, $2, $3, $4,
            COALESCE((SELECT epoch FROM asyncstop_owners WHERE owner = $1), 0))
    ON CONFLICT (owner, account_id, order_id)
    DO UPDATE SET protective = EXCLUDED.protective, epoch = EXCLUDED.epoch
"""
_DISCARD: Final = """
    DELETE FROM asyncstop_stop_orders WHERE owner = $1 AND account_id = $2 AND order_id = $3
"""
_SNAPSHOT: Final = """
    SELECT account_id, order_id, protective FROM asyncstop_stop_orders
    WHERE owner = $1 ORDER BY seq
"""


def check_owner(owner: object) -> str:
    """An owner name: a non-empty str of at most 200 printable characters."""
    if not isinstance(owner, str) or not owner or len(owner) > _MAX_OWNER_LENGTH:
        raise InvalidInputError(
            f"owner must be a non-empty str of at most 200 characters: {owner!r}"
        )
    if not owner.isprintable():
        raise InvalidInputError(f"owner must be printable: {owner!r}")
    return owner


class PostgresRegistry:
    """The stop orders of one bot (``owner``) in PostgreSQL, guarded by a lease.

    ::

        registry = await asyncstop.PostgresRegistry.connect(dsn, owner="bot-eu-1")
        async with registry, registry.lease(ttl=10.0) as lease:
            await registry.add(order_id, account_id, protective=False)
            ...                         # lease.lost / await lease.wait_lost()

    The same item rules as :class:`~asyncstop.StopOrderRegistry`, with async
    methods. ``add()`` returns once the row is committed (and on a synchronous
    standby, when the server is set up so). Many bots share one database, each
    under its own ``owner``. The tables are created on first use, with a schema
    version. While a :meth:`lease` is held, ``add()`` raises
    :class:`~asyncstop.LeaseLostError` once it is lost, checked in the
    database's transaction. ``asyncstop watchdog --store DSN`` on another
    machine cancels an owner's stops when its lease expires.

    As a :class:`~asyncstop.KillSwitch` source it is an async iterable of the
    registered orders (``KillSwitch(client, registry)``). The DSN (and its
    password) is never logged or shown in a repr.
    """

    def __init__(self, dsn: str, *, owner: str, database: Database) -> None:
        # Use connect(): it checks the server and the schema.
        self.owner = check_owner(owner)
        self._dsn = dsn
        self._db = database
        self._lease: Lease | None = None
        #: Why add() is refused: the local Watchdog fired by itself (until its restart()).
        self._fence: str | None = None

    @classmethod
    async def connect(
        cls,
        dsn: str,
        *,
        owner: str,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_connections: int = 4,
    ) -> PostgresRegistry:
        """Connect to the database at ``dsn`` (asyncpg's DSN; libpq's PG* variables and
        ``.pgpass`` apply), create the tables on first use, and return the registry.

        Every operation, connecting included, raises ``TimeoutError`` after
        ``command_timeout`` seconds, or asyncpg's error when the server refuses.
        """
        check_owner(owner)
        database = Database(
            dsn,
            connect_timeout=connect_timeout,
            command_timeout=command_timeout,
            max_connections=max_connections,
        )
        try:
            await database.run(ensure_schema)
        except BaseException:
            await database.close()
            raise
        return cls(dsn, owner=owner, database=database)

    # -- the lease --------------------------------------------------------------------------

    def lease(self, ttl: float = DEFAULT_LEASE_TTL) -> Lease:
        """A lease on this owner, to enter with ``async with`` (see :class:`Lease`)."""
        return Lease(self, self._dsn, ttl=ttl)

    @property
    def current_lease(self) -> Lease | None:
        """The lease entered on this registry, or None."""
        return self._lease

    def _lease_entering(self, lease: Lease) -> None:
        if self._lease is not None and self._lease is not lease:
            raise RuntimeError(f"the registry of owner {self.owner!r} holds a lease already")
        self._lease = lease

    def _lease_left(self, lease: Lease) -> None:
        if self._lease is lease:
            self._lease = None

    # -- the interface ----------------------------------------------------------------------

    async def add(
        self, order_id: str, account_id: str | None = None, *, protective: bool = False
    ) -> None:
        """Record a live stop order; ``account_id`` None means the client's own account.

        ``protective`` marks a stop that protects an open position: an off-host
        service leaves it live unless told ``--cancel-protective``. Returns once
        committed. Raises :class:`~asyncstop.InvalidInputError` for an id that
        could never be cancelled, :class:`~asyncstop.LeaseLostError` while
        this registry's lease is lost, and :class:`~asyncstop.WatchdogError`
        once its local :class:`~asyncstop.Watchdog` fired by itself, until
        ``await watchdog.restart()``.
        """
        if self._fence is not None:
            raise WatchdogError(self._fence)
        check_order_id(order_id)
        if account_id is not None:
            check_account_id(account_id)
        protective = bool(protective)
        lease = self._lease
        if lease is None:
            await self._db.run(
                lambda conn: conn.execute(_ADD, self.owner, account_id or "", order_id, protective)
            )
            return
        lease.check()
        added = await self._db.run(
            lambda conn: conn.fetchval(
                _ADD_FENCED, self.owner, account_id or "", order_id, protective, lease.epoch
            )
        )
        if added is None:
            raise lease.refused()

    async def discard(self, order_id: str, account_id: str | None = None) -> None:
        """Forget a stop order (no error if unknown): the entry added with this ``account_id``."""
        await self._db.run(
            lambda conn: conn.execute(_DISCARD, self.owner, account_id or "", order_id)
        )

    async def discard_settled_many(
        self, settled: Iterable[tuple[str, str]], *, default_account_id: str | None
    ) -> None:
        """Forget orders a cancel run reported no longer live, as ``(order_id, account_id)``."""
        keys: list[tuple[str, str, str]] = []
        for order_id, account_id in settled:
            keys.append((self.owner, account_id, order_id))
            if account_id == default_account_id:
                keys.append((self.owner, "", order_id))
        if keys:
            await self._db.run(lambda conn: conn.executemany(_DISCARD, keys))

    async def snapshot(self) -> list[OrderItem]:
        """The registered orders as bulk-cancel items, in the order they were added."""
        return [item for item, _ in await self.entries()]

    async def entries(self) -> list[tuple[OrderItem, bool]]:
        """Each registered order as ``(item, protective)``, in the order added."""
        rows = await self._db.run(lambda conn: conn.fetch(_SNAPSHOT, self.owner))
        return [(_item(row["account_id"], row["order_id"]), row["protective"]) for row in rows]

    async def __aiter__(self) -> AsyncIterator[OrderItem]:
        for item in await self.snapshot():
            yield item

    async def close(self) -> None:
        """Close the connections. Idempotent."""
        await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = " closed" if self._db.closed else ""
        return f"<PostgresRegistry owner={self.owner!r}{state}>"


# -- for the local watchdog (asyncstop._watchdog) -----------------------------------------------


def registry_dsn(registry: PostgresRegistry) -> str:
    """The DSN, for the watchdog's private pipe only (never logged)."""
    return registry._dsn


def fence(registry: PostgresRegistry, reason: str) -> None:
    """Refuse ``add()`` in this process: its watchdog fired by itself (``reason`` says so)."""
    registry._fence = reason


def unfence(registry: PostgresRegistry) -> None:
    """Accept ``add()`` again: a new watchdog protects the owner's stops."""
    registry._fence = None


def _item(account_id: str, order_id: str) -> OrderItem:
    return order_id if not account_id else (account_id, order_id)
