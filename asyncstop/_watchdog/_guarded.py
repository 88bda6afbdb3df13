"""What a watchdog process guards: a registry file, or an owner's stops in PostgreSQL.

Both give the watchdog the same six things: its lock (one watchdog per
registry file, or per owner of a database), a source for the ``Fire`` kill
switch, the fence it puts up when it fires by itself, the stops to count and
a :class:`~._firing.FiringStore` to fire at, a record of that firing (the
report file's, or a row in ``asyncstop_fires``), and what is left at the end.

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
import json
import sqlite3
from collections.abc import Sequence
from typing import TYPE_CHECKING, Final, Protocol

from .._logging import logger
from ._firing import FiringOutcome, FiringRound, FiringStore, RegisteredStop, RegistryStore
from ._lock import RegistryLock, lock_owner
from ._protocol import RegistryFile, RegistryOwner

if TYPE_CHECKING:
    import asyncpg

    from .._postgres._db import Database
    from .._postgres._registry import PostgresRegistry
    from .._registry import StopOrderRegistry

__all__ = ["Guarded", "GuardedFile", "GuardedOwner", "open_guarded"]

#: Connections of a PostgreSQL watchdog: one holds the lock, the others fire.
_CONNECTIONS: Final = 3
#: Seconds between two looks at the connection that holds the owner's lock.
LOCK_CHECK_EVERY: Final = 2.0

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

    async def fire_started(self) -> None:
        """Note in the store that the watchdog fires by itself (errors logged, not raised)."""
        ...

    async def fire_ended(self, outcome: FiringOutcome, last_round: FiringRound | None) -> None:
        """Record in the store how that firing ended (errors logged, not raised)."""
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

    async def fire_started(self) -> None:
        pass  # the report file beside the registry records it

    async def fire_ended(self, outcome: FiringOutcome, last_round: FiringRound | None) -> None:
        pass


class GuardedOwner:
    """An owner's stops in a :class:`~asyncstop.PostgresRegistry`."""

    def __init__(self, source: RegistryOwner) -> None:
        self.name = f"owner {source.owner!r}"
        self._source = source
        self._registry: PostgresRegistry | None = None
        self._db: Database | None = None
        #: The owner's epoch before this watchdog's fence raised it (its lease's, if any).
        self._fired_epoch = 0
        #: The row of this watchdog's fire in asyncstop_fires, once written.
        self._fire_id: int | None = None
        self._fire_name = ""
        #: The connection holding the owner's lock (the pool's first, or a later one).
        self._lock_conn: asyncpg.Connection | None = None
        self._pool_lock_conn: asyncpg.Connection | None = None

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
        self._lock_conn = self._pool_lock_conn = conn
        keeper = asyncio.get_running_loop().create_task(self._keep_lock(bot_pid))
        resources.push_async_callback(self._stop_keeping, keeper)

    async def _keep_lock(self, bot_pid: int) -> None:
        """Take the owner's lock again when its connection ends (a restart, a cut).

        The server releases an advisory lock with its session: without this, a
        database restart would leave the owner guarded by nobody's lock, and a
        second watchdog of the same owner would be let in.
        """
        from .._errors import WatchdogError  # noqa: PLC0415
        from .._postgres._db import db_errors  # noqa: PLC0415

        lost = False
        refusal = ""
        while True:
            await asyncio.sleep(LOCK_CHECK_EVERY)
            if not lost and await self._lock_alive():
                continue
            if not lost:
                lost = True
                logger.error(
                    "watchdog lost its lock on %s: its connection to the database ended (a "
                    "restart, a cut); until it takes the lock again, a second watchdog of this "
                    "owner is not refused",
                    self.name,
                )
            try:
                conn = await self.db.connect()
            except db_errors():
                continue  # the server is not back yet
            try:
                async with asyncio.timeout(self.db.command_timeout):
                    await lock_owner(conn, self._source.owner, bot_pid=bot_pid)
            except WatchdogError as err:
                conn.terminate()
                if str(err) != refusal:
                    refusal = str(err)
                    logger.error("watchdog could not take its lock on %s again: %s", self.name, err)
                continue
            except asyncio.CancelledError:
                conn.terminate()
                raise
            except db_errors():
                conn.terminate()
                continue  # the server went again: next time
            old, self._lock_conn = self._lock_conn, conn
            if old is not None and old is not self._pool_lock_conn:
                old.terminate()
            lost, refusal = False, ""
            logger.warning("watchdog took its lock on %s again", self.name)

    async def _lock_alive(self) -> bool:
        """False once the lock's connection has ended; a slow answer is not an end."""
        from .._postgres._db import db_errors, import_asyncpg  # noqa: PLC0415

        conn = self._lock_conn
        if conn is None or conn.is_closed():
            return False
        gone: type[BaseException] = import_asyncpg().ConnectionDoesNotExistError
        try:
            await conn.fetchval("SELECT 1", timeout=self.db.command_timeout)
        except (OSError, gone):
            return False
        except db_errors():
            return not conn.is_closed()
        return True

    async def _stop_keeping(self, keeper: asyncio.Task[None]) -> None:
        keeper.cancel()
        await asyncio.gather(keeper, return_exceptions=True)
        conn = self._lock_conn
        if conn is not None and conn is not self._pool_lock_conn:
            conn.terminate()

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
        if row is not None:
            self._fired_epoch = int(row["epoch"]) - 1
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

    async def fire_started(self) -> None:
        """A row in asyncstop_fires, as the service writes one: the next lease lists it."""
        from .._postgres._db import db_errors  # noqa: PLC0415
        from ._service import RECORD_START, default_service_name  # noqa: PLC0415

        owner = self._source.owner
        name = self._fire_name = f"watchdog {default_service_name()}"
        try:
            fire_id = await self.db.run(
                lambda conn: conn.fetchval(RECORD_START, owner, self._fired_epoch, name)
            )
        except db_errors() as err:
            logger.error(
                "watchdog could not record its fire for %s (%s): the bot's next lease will "
                "not list it",
                self.name,
                type(err).__name__,
            )
            return
        self._fire_id = int(fire_id)

    async def fire_ended(self, outcome: FiringOutcome, last_round: FiringRound | None) -> None:
        from .._postgres._db import db_errors  # noqa: PLC0415
        from ._service import RECORD_END, fire_record  # noqa: PLC0415

        fire_id = self._fire_id
        if fire_id is None:
            return
        record = fire_record(
            self._source.owner,
            self._fired_epoch,
            self._fire_name,
            outcome,
            [] if last_round is None else [last_round],
        )
        try:
            await self.db.run(lambda conn: conn.execute(RECORD_END, fire_id, json.dumps(record)))
        except db_errors() as err:
            logger.error(
                "watchdog could not record how its fire for %s ended (%s)",
                self.name,
                type(err).__name__,
            )


def open_guarded(source: RegistryFile | RegistryOwner) -> GuardedFile | GuardedOwner:
    """The guarded registry of a ``Config`` (to ``open()`` in the watchdog process)."""
    if isinstance(source, RegistryFile):
        return GuardedFile(source)
    return GuardedOwner(source)
