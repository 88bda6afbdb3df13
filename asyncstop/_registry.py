"""StopOrderRegistry: the stop orders a bot has placed, in memory or durable in SQLite.

The durable registry is one SQLite file in WAL mode, written by the bot and
read (and pruned) by a watchdog process at the same time. Each ``add()`` is
its own committed transaction: once it returns, the record is in the
write-ahead log, which the kernel keeps when the process is killed.
``synchronous="NORMAL"`` (the default) can lose the last transactions when the
host loses power; ``"FULL"`` syncs the log to the disk on every commit, so it
cannot, at the cost measured in benchmarks/README.md.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Final, Literal, Self

import msgspec

from ._errors import InvalidInputError, WatchdogError
from ._logging import logger
from ._validation import check_account_id, check_order_id, check_seconds, split_order_item

if TYPE_CHECKING:
    from ._report import CancelReport, CancelResult, OrderItem

__all__ = [
    "DEFAULT_BUSY_TIMEOUT",
    "StopOrderRegistry",
    "Synchronous",
    "fence",
    "fence_reason",
    "mark_protective",
    "unfence",
]

#: How ``StopOrderRegistry.open`` syncs each commit: NORMAL survives a killed
#: process, FULL also survives a power loss of the host.
Synchronous = Literal["NORMAL", "FULL"]

#: Seconds a durable registry waits for the other process's write to finish
#: before an operation raises ``sqlite3.OperationalError`` ("database is locked").
DEFAULT_BUSY_TIMEOUT: Final = 5.0

#: Bumped when the tables change; an older file is upgraded in place, a newer one refused.
_SCHEMA_VERSION: Final = 2
# The client's own account is stored as "" (an account id is never empty), so
# that the UNIQUE constraint also holds for orders registered without one.
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS stop_orders (
    seq INTEGER PRIMARY KEY,
    account_id TEXT NOT NULL,
    order_id TEXT NOT NULL,
    UNIQUE (account_id, order_id)
)
"""
# Version 2: a protective flag per stop (left live by a watchdog firing on a
# death), and the fence a watchdog puts up when it fires by itself: add()
# refuses while it stands, until a new watchdog takes it down.
_UPGRADE_TO_2: Final = (
    "ALTER TABLE stop_orders ADD COLUMN protective INTEGER NOT NULL DEFAULT 0",
    """CREATE TABLE IF NOT EXISTS watchdog_fence (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    reason TEXT NOT NULL
)""",
)

#: A callable told of every order added to a registry (see ``add_listener``).
AddListener = Callable[["OrderItem"], object]


def _item(account_id: str | None, order_id: str) -> OrderItem:
    return order_id if account_id is None else (account_id, order_id)


class StopOrderRegistry:
    """The stop orders a bot has placed and that may still be live: what a kill switch cancels.

    Record each stop order as soon as the place call returns (``add``) and
    forget it when it fills, expires or is cancelled elsewhere (``discard``). A
    kill switch run removes the orders it saw end; the ones that may still be
    live stay. An order id is unique per account: ``add("A1")`` (the client's
    own account) and ``add("A1", account_id="acc-2")`` are two entries, and
    ``item in registry`` takes the same items as :meth:`snapshot` returns.

    A stop added with ``protective=True`` guards an open position (a
    stop-loss): a :class:`~asyncstop.Watchdog` that fires because the bot died
    leaves it live (unless ``cancel_protective_on_death=True``), while a
    deliberate kill switch cancels it (unless ``include_protective=False``).

    ``StopOrderRegistry()`` lives in memory and dies with the process.
    :meth:`open` returns one kept in an SQLite file, which survives the bot and
    which a :class:`~asyncstop.Watchdog` reads from its own process. Both are
    synchronous and cheap, so call them from any callback on the bot's loop;
    use a durable registry from the thread that opened it.
    """

    __slots__ = ("_listeners", "_orders")

    def __init__(self, orders: Iterable[OrderItem] = ()) -> None:
        # (account id or None for the client's account, order id) -> protective,
        # in the order added
        self._orders: dict[tuple[str | None, str], bool] = {}
        self._listeners: list[AddListener] = []
        for item in orders:
            account_id, order_id = split_order_item(item)
            self._store(account_id, order_id)

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> StopOrderRegistry:
        """Open (or create) a durable registry in the SQLite file ``path``.

        ``add()`` returns once the order survives the process being killed at
        any instant, and the file is never left corrupt. With the default
        ``synchronous="NORMAL"`` a power loss of the host can lose the latest
        adds; ``"FULL"`` cannot, and costs an ``fsync`` per add and discard.
        Several processes (the bot and its watchdog) may use the file at once;
        a write waits up to ``busy_timeout`` seconds for another one to finish.
        Close it with :meth:`close` or use it as a context manager.
        """
        return _DurableRegistry(path, synchronous=synchronous, busy_timeout=busy_timeout)

    # -- storage (the durable registry overrides these) ------------------------------------

    def _store(self, account_id: str | None, order_id: str, protective: bool = False) -> None:
        self._orders[(account_id, order_id)] = protective

    def _remove(self, account_id: str | None, order_id: str) -> None:
        self._orders.pop((account_id, order_id), None)

    def _remove_many(self, keys: list[tuple[str | None, str]]) -> None:
        for key in keys:
            self._orders.pop(key, None)

    def _keys(self) -> list[tuple[str | None, str]]:
        return list(self._orders)

    def _entries(self) -> list[tuple[str | None, str, bool]]:
        return [
            (account_id, order_id, flag) for (account_id, order_id), flag in self._orders.items()
        ]

    def _has(self, account_id: str | None, order_id: str) -> bool:
        return (account_id, order_id) in self._orders

    def _count(self) -> int:
        return len(self._orders)

    # -- the interface ---------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        """The SQLite file of a durable registry; None in memory."""
        return None

    def add(
        self, order_id: str, account_id: str | None = None, *, protective: bool = False
    ) -> None:
        """Record a live stop order; ``account_id`` None means the client's own account.

        ``protective=True`` marks a stop that guards an open position (see the
        class docstring); adding an order again updates its flag. Raises
        :class:`~asyncstop.InvalidInputError` for an id that could never be
        cancelled (not a str, empty, or unsafe in a URL or a header), and, on a
        durable registry whose watchdog fired by itself,
        :class:`~asyncstop.WatchdogError` until ``await watchdog.restart()``:
        nothing protects a stop added then.
        """
        check_order_id(order_id)
        if account_id is not None:
            check_account_id(account_id)
        if not isinstance(protective, bool):
            raise InvalidInputError(f"protective must be a bool, not {type(protective).__name__}")
        self._store(account_id, order_id, protective)
        if self._listeners:
            item = _item(account_id, order_id)
            for listener in list(self._listeners):
                listener(item)

    def discard(self, order_id: str, *, account_id: str | None = None) -> None:
        """Forget a stop order (no error if unknown): the entry added with this ``account_id``."""
        self._remove(account_id, order_id)

    def discard_settled(
        self, order_id: str, account_id: str, *, default_account_id: str | None
    ) -> None:
        """Forget an order that a cancel run reported no longer live on ``account_id``.

        A result names the account it was sent for; an order registered without
        an account was sent for ``default_account_id`` (the client's), so that
        entry goes too when the two match.
        """
        self.discard_settled_many([(order_id, account_id)], default_account_id=default_account_id)

    def discard_settled_many(
        self, settled: Iterable[tuple[str, str]], *, default_account_id: str | None
    ) -> None:
        """:meth:`discard_settled` for many ``(order_id, account_id)`` pairs, in one transaction."""
        keys: list[tuple[str | None, str]] = []
        for order_id, account_id in settled:
            keys.append((account_id, order_id))
            if account_id == default_account_id:
                keys.append((None, order_id))
        self._remove_many(keys)

    def forget_settled(
        self, report: CancelReport, *, default_account_id: str | None = None
    ) -> list[CancelResult]:
        """Forget every order of ``report`` that is certainly not live, in one transaction.

        That is ``report.settled``: the orders cancelled, already gone or not
        found, except ``not_found`` ones under the report's warning (most not
        found and none cancelled: likely a wrong account id or base URL, so
        they may be live and stay registered). ``default_account_id`` is the
        account the orders registered without one were sent for (the
        client's). Returns the results whose orders were forgotten.
        """
        settled = report.settled
        self.discard_settled_many(
            ((r.order_id, r.account_id) for r in settled), default_account_id=default_account_id
        )
        return settled

    def add_listener(self, listener: AddListener) -> None:
        """Call ``listener(item)`` after each :meth:`add` (a tripped kill switch uses this)."""
        self._listeners.append(listener)

    def remove_listener(self, listener: AddListener) -> None:
        """Stop calling ``listener`` (no error if it was not added)."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def snapshot(self, *, protective: bool | None = None) -> list[OrderItem]:
        """The registered orders as bulk-cancel items, in the order they were added.

        ``protective=True`` lists only the protective stops, ``False`` only the
        others, None (the default) all of them.
        """
        if protective is None:
            return [_item(account_id, order_id) for account_id, order_id in self._keys()]
        return [
            _item(account_id, order_id)
            for account_id, order_id, flag in self._entries()
            if flag is protective
        ]

    def stops(self) -> list[tuple[str | None, str, bool]]:
        """Every registered stop as ``(account_id or None, order_id, protective)``, in order."""
        return self._entries()

    def __contains__(self, item: object) -> bool:
        try:
            account_id, order_id = split_order_item(item)
        except InvalidInputError:
            return False
        return self._has(account_id, order_id)

    def __len__(self) -> int:
        return self._count()

    def __iter__(self) -> Iterator[OrderItem]:
        return iter(self.snapshot())

    def checkpoint(self) -> None:
        """Copy a durable registry's write-ahead log into its file; nothing to do in memory.

        SQLite does this by itself every thousand pages or so, inside the
        ``add()`` that crosses the mark, which then waits for the disk (a
        ``fsync``, milliseconds). A :class:`~asyncstop.Watchdog` calls it from
        its own process while it is idle, so the bot's adds rarely have to.
        """

    def close(self) -> None:
        """Release the file of a durable registry; nothing to do in memory. Idempotent."""

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<StopOrderRegistry {self._count()} orders>"


class _DurableRegistry(StopOrderRegistry):
    """A StopOrderRegistry kept in SQLite; built by :meth:`StopOrderRegistry.open`."""

    __slots__ = ("_conn", "_path", "synchronous")

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: Synchronous = "NORMAL",
        busy_timeout: float = DEFAULT_BUSY_TIMEOUT,
    ) -> None:
        super().__init__()
        if synchronous not in ("NORMAL", "FULL"):
            raise InvalidInputError(f'synchronous must be "NORMAL" or "FULL", not {synchronous!r}')
        busy_timeout = check_seconds("busy_timeout", busy_timeout, allow_zero=True)
        self._path = Path(path).absolute()
        self.synchronous: Final = synchronous
        # Autocommit (isolation_level=None): every statement is its own
        # transaction, committed before execute() returns.
        conn = sqlite3.connect(self._path, timeout=busy_timeout, isolation_level=None)
        try:
            _prepare(conn, synchronous)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn

    def _db(self) -> sqlite3.Connection:
        conn = self._conn
        if conn is None:
            raise RuntimeError(f"the registry {str(self._path)!r} is closed")
        return conn

    def _store(self, account_id: str | None, order_id: str, protective: bool = False) -> None:
        # One statement, as cheap as a plain insert: it writes nothing while a
        # watchdog's fence stands, and only then is the fence read again.
        cursor = self._db().execute(
            "INSERT INTO stop_orders (account_id, order_id, protective) "
            "SELECT ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM watchdog_fence) "
            "ON CONFLICT (account_id, order_id) DO UPDATE SET protective = excluded.protective",
            (account_id or "", order_id, int(protective)),
        )
        if cursor.rowcount == 0:
            reason = fence_reason(self)
            if reason is not None:
                raise WatchdogError(
                    f"stop order {order_id!r} not registered: {reason}. Nothing protects new "
                    "stops; `await watchdog.restart()` arms a new watchdog"
                )

    def _remove(self, account_id: str | None, order_id: str) -> None:
        self._db().execute(
            "DELETE FROM stop_orders WHERE account_id = ? AND order_id = ?",
            (account_id or "", order_id),
        )

    def _remove_many(self, keys: list[tuple[str | None, str]]) -> None:
        db = self._db()
        # One commit (one write to the log) for the lot, not one per order.
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                "DELETE FROM stop_orders WHERE account_id = ? AND order_id = ?",
                [(account_id or "", order_id) for account_id, order_id in keys],
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _keys(self) -> list[tuple[str | None, str]]:
        rows = self._db().execute("SELECT account_id, order_id FROM stop_orders ORDER BY seq")
        return [(account_id or None, order_id) for account_id, order_id in rows]

    def _entries(self) -> list[tuple[str | None, str, bool]]:
        rows = self._db().execute(
            "SELECT account_id, order_id, protective FROM stop_orders ORDER BY seq"
        )
        return [(account_id or None, order_id, bool(flag)) for account_id, order_id, flag in rows]

    def _has(self, account_id: str | None, order_id: str) -> bool:
        row = self._db().execute(
            "SELECT 1 FROM stop_orders WHERE account_id = ? AND order_id = ?",
            (account_id or "", order_id),
        )
        return row.fetchone() is not None

    def _count(self) -> int:
        (count,) = self._db().execute("SELECT count(*) FROM stop_orders").fetchone()
        return int(count)

    @property
    def path(self) -> Path:
        """The SQLite file."""
        return self._path

    def checkpoint(self) -> None:
        # PASSIVE: copies what it can without waiting for the other process.
        self._db().execute("PRAGMA wal_checkpoint(PASSIVE)")

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __repr__(self) -> str:
        if self._conn is None:
            return f"<StopOrderRegistry {str(self._path)!r} closed>"
        return f"<StopOrderRegistry {str(self._path)!r} {self._count()} orders>"


def _prepare(conn: sqlite3.Connection, synchronous: Synchronous) -> None:
    """Switch the file to WAL, set the sync level, and create or check the table."""
    (mode,) = conn.execute("PRAGMA journal_mode=WAL").fetchone()
    if str(mode).lower() != "wal":
        # WAL is what lets the watchdog read while the bot writes; a file
        # system without shared memory (some network mounts) cannot do it.
        raise InvalidInputError(
            f"the registry file cannot use SQLite's WAL mode (journal mode {mode!r}): "
            "put it on a local file system"
        )
    conn.execute(f"PRAGMA synchronous={synchronous}")
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version < _SCHEMA_VERSION:
        conn.execute("BEGIN IMMEDIATE")
        try:
            (version,) = conn.execute("PRAGMA user_version").fetchone()
            if version == 0:
                conn.execute(_SCHEMA)
            if version in (0, 1):
                # An 0.2 file keeps its rows: they gain protective = 0.
                for statement in _UPGRADE_TO_2:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version != _SCHEMA_VERSION:
        raise InvalidInputError(
            f"the registry file has schema version {version}, not {_SCHEMA_VERSION}: "
            "it was written by another version of asyncstop or is not a registry"
        )
    logger.debug("registry opened (WAL, synchronous=%s)", synchronous)


# -- the watchdog's fence (used by asyncstop._watchdog) ----------------------------------------


def fence(registry: StopOrderRegistry, reason: str) -> None:
    """Make ``add()`` on every handle of this durable registry raise WatchdogError(reason)."""
    if isinstance(registry, _DurableRegistry):
        registry._db().execute(
            "INSERT INTO watchdog_fence (id, reason) VALUES (1, ?) "
            "ON CONFLICT (id) DO UPDATE SET reason = excluded.reason",
            (reason,),
        )


def unfence(registry: StopOrderRegistry) -> None:
    """Take the fence down: a new watchdog protects the registry's stops again."""
    if isinstance(registry, _DurableRegistry):
        registry._db().execute("DELETE FROM watchdog_fence")


def fence_reason(registry: StopOrderRegistry) -> str | None:
    """Why ``add()`` is refused (a watchdog fired by itself), or None."""
    if not isinstance(registry, _DurableRegistry):
        return None
    row = registry._db().execute("SELECT reason FROM watchdog_fence").fetchone()
    return None if row is None else str(row[0])


# -- protective flags on results (the kill switch and the watchdog) ----------------------------


def mark_protective(
    results: list[CancelResult], keys: frozenset[tuple[str, str]]
) -> list[CancelResult]:
    """``results`` with ``protective=True`` on those of the stops in ``keys``."""
    if not keys:
        return results
    return [
        msgspec.structs.replace(r, protective=True) if (r.account_id, r.order_id) in keys else r
        for r in results
    ]
