"""What a watchdog process guards: a registry file, or an owner's stops in PostgreSQL.

Both give the watchdog the same five things: its lock (one watchdog per
registry file, or per owner of a database), a source for the ``Fire`` kill
switch, the fence it puts up when it fires by itself, the stops to count and
a :class:`~._firing.FiringStore` to fire at, and what is left at the end.

* :class:`GuardedFile`: a :class:`~asyncstop.StopOrderRegistry` file. The
  fence is a table in the file: ``add()`` raises ``WatchdogError`` until a
  new watchdog takes it down.
* :class:`GuardedOwner`: a :class:`~asyncstop.PostgresRegistry` owner, on
  connections of the watchdog's own (the DSN came over the private pipe). Its
  lock is an advisory lock (:func:`._lock.lock_owner`). Its fence raises the
  owner's epoch, as a new lease does: a lease the bot holds is then refused
  by the database, in the same transaction as its ``add()``
  (``LeaseLostError``) and at its next renewal (``lease.lost``). A bot without
  a lease is fenced in its own process only, once it reads the watchdog's
  ``Fired`` message. It fires with the off-host service's store
  (:class:`._service.OwnerStore`) over every stop of the owner.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from .._logging import logger
from ._firing import FiringStore, RegisteredStop, RegistryStore
from ._lock import RegistryLock, lock_owner
from ._protocol import RegistryFile, RegistryOwner

if TYPE_CHECKING:
    from .._postgres._db import Database
    from .._postgres._registry import PostgresRegistry
    from .._registry import StopOrderRegistry

__all__ = ["Guarded", "GuardedFile", "GuardedOwner", "open_guarded"]

#: Connections of a PostgreSQL watchdog: one holds the lock, the others fire.
_CONNECTIONS: Final = 3

_FENCE: Final = """
    UPDATE asyncstop_owners SET epoch = epoch + 1 WHERE owner = $1
    RETURNING epoch, expires_at IS NOT NULL AS leased
"""
_COUNT: Final = "SELECT count(*) FROM asyncstop_stop_orders WHERE owner = $1"


class Guarded(Protocol):
    """What the watchdog process guards (see the module docstring)."""

    #: How logs and the report name it (a path, or the owner; never a DSN).
    name: str

    async def open(self, resources: contextlib.AsyncExitStack, *, bot_pid: int) -> None:
        """Take the lock and open the store; what it opens is closed by ``resources``."""
        ...

    @property
    def registry(self) -> StopOrderRegistry | PostgresRegistry:
        """The kill switch's source for the bot's ``Fire`` requests."""
        ...

    async def fence(self, reason: str) -> None:
        """Refuse the bot's ``add()`` from now on; errors are logged, not raised."""
        ...

    async def stops(self) -> Sequence[RegisteredStop]:
        """Every registered stop, protective ones included."""
        ...

    def firing_store(self, default_account_id: str | None) -> FiringStore:
        """The store :func:`._firing.fire_until_settled` reads and prunes."""
        ...

    def checkpoint(self) -> None:
        """Keep the store's write-ahead log short while idle (never raises)."""
        ...

    async def left(self) -> int:
        """How many stops are still registered (-1 when it cannot tell)."""
        ...


class GuardedFile:
    """A :class:`~asyncstop.StopOrderRegistry` file."""

    def __init__(self, source: RegistryFile) -> None:
        self.name = source.path
        self._registry: StopOrderRegistry | None = None

    async def open(self, resources: contextlib.AsyncExitStack, *, bot_pid: int) -> None:
        from .._registry import StopOrderRegistry, unfence  # noqa: PLC0415 - the process only

        lock = RegistryLock.acquire(self.name, bot_pid=bot_pid)
        resources.callback(lock.release)
        self._registry = resources.enter_context(StopOrderRegistry.open(self.name))
        unfence(self._registry)  # this watchdog protects the registry's stops again

    @property
    def registry(self) -> StopOrderRegistry:
        assert self._registry is not None
        return self._registry

    async def fence(self, reason: str) -> None:
        from .._registry import fence  # noqa: PLC0415

        try:
            fence(self.registry, reason)
        except sqlite3.Error as err:
            logger.error("watchdog could not fence the registry: %s", err)

    async def stops(self) -> Sequence[RegisteredStop]:
        return [RegisteredStop(*entry) for entry in self.registry.stops()]

    def firing_store(self, default_account_id: str | None) -> FiringStore:
        return RegistryStore(self.registry, default_account_id=default_account_id)

    def checkpoint(self) -> None:
        try:
            self.registry.checkpoint()
        except sqlite3.Error as err:  # a busy or locked file: next time
            logger.debug("watchdog: registry checkpoint skipped: %s", err)

    async def left(self) -> int:
        try:
            return len(self.registry)
        except (sqlite3.Error, RuntimeError):
            return -1


class GuardedOwner:
    """An owner's stops in a :class:`~asyncstop.PostgresRegistry`."""

    def __init__(self, source: RegistryOwner) -> None:
        self.name = f"owner {source.owner!r}"
        self._source = source
        self._registry: PostgresRegistry | None = None
        self._db: Database | None = None

    async def open(self, resources: contextlib.AsyncExitStack, *, bot_pid: int) -> None:
        from .._postgres._db import Database  # noqa: PLC0415 - the process only
        from .._postgres._registry import PostgresRegistry  # noqa: PLC0415

        dsn, owner = self._source.dsn, self._source.owner
        self._registry = await PostgresRegistry.connect(dsn, owner=owner)
        resources.push_async_callback(self._registry.close)
        db = self._db = Database(dsn, max_connections=_CONNECTIONS)
        resources.push_async_callback(db.close)
        async with asyncio.timeout(db.command_timeout):
            # Held until the process exits: the server then releases the lock.
            conn = await resources.enter_async_context(db.connection())
            await lock_owner(conn, owner, bot_pid=bot_pid)

    @property
    def registry(self) -> PostgresRegistry:
        assert self._registry is not None
        return self._registry

    @property
    def db(self) -> Database:
        assert self._db is not None
        return self._db

    async def fence(self, reason: str) -> None:
        from .._postgres._db import db_errors  # noqa: PLC0415

        owner = self._source.owner
        try:
            row = await self.db.run(lambda conn: conn.fetchrow(_FENCE, owner))
        except db_errors() as err:
            logger.error(
                "watchdog could not fence %s (%s): a lease the bot holds is not refused",
                self.name,
                type(err).__name__,
            )
            return
        if row is not None and row["leased"]:
            logger.warning(
                "watchdog fenced %s: epoch raised to %d, so the bot's lease is refused by the "
                "database (%s)",
                self.name,
                row["epoch"],
                reason,
            )

    async def stops(self) -> Sequence[RegisteredStop]:
        return await self.firing_store(None).pending()

    def firing_store(self, default_account_id: str | None) -> FiringStore:
        from ._service import OwnerStore  # noqa: PLC0415 - the process only

        return OwnerStore(self.db, self._source.owner, None, default_account_id)

    def checkpoint(self) -> None:
        pass  # the server keeps its own log

    async def left(self) -> int:
        from .._postgres._db import db_errors  # noqa: PLC0415

        try:
            count = await self.db.run(lambda conn: conn.fetchval(_COUNT, self._source.owner))
        except db_errors():
            return -1
        return int(count)


def open_guarded(source: RegistryFile | RegistryOwner) -> GuardedFile | GuardedOwner:
    """The guarded registry of a ``Config`` (to ``open()`` in the watchdog process)."""
    if isinstance(source, RegistryFile):
        return GuardedFile(source)
    return GuardedOwner(source)
