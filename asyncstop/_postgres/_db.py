"""Connections to the store, the schema, and the rule for a connection that failed.

asyncpg's own pool resets a connection on release and sends a CancelRequest
over a new connection when a query is cancelled; over a TCP path that stopped
forwarding, both wait. Here a connection that saw any error, timeout or
cancellation is terminated at once (its socket closed, asyncpg's pending
cancel task cancelled) and the next operation connects afresh, so every
operation ends within its own bound whatever the network does.
"""

from __future__ import annotations

import asyncio
import functools
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import ModuleType
from typing import TYPE_CHECKING, Final, TypeVar, cast

from .._errors import InvalidInputError
from .._logging import logger

if TYPE_CHECKING:
    import asyncpg

__all__ = [
    "DEFAULT_COMMAND_TIMEOUT",
    "DEFAULT_CONNECT_TIMEOUT",
    "INSTALL_HINT",
    "SCHEMA_VERSION",
    "Database",
    "db_errors",
    "import_asyncpg",
    "redact_password",
]

T = TypeVar("T")

#: Seconds to open a connection to the store.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Seconds one operation (connect included) may take before it raises TimeoutError.
DEFAULT_COMMAND_TIMEOUT: Final = 5.0
#: What to install for the PostgreSQL registry and the off-host service.
INSTALL_HINT: Final = "pip install 'asyncstop[postgres]'"


def import_asyncpg() -> ModuleType:
    """asyncpg, imported on first use so that ``import asyncstop`` never needs it."""
    try:
        import asyncpg  # noqa: PLC0415 - the optional extra
    except ImportError as err:
        raise ModuleNotFoundError(
            f"the PostgreSQL registry needs asyncpg: {INSTALL_HINT}", name="asyncpg"
        ) from err
    return asyncpg


@functools.cache
def db_errors() -> tuple[type[BaseException], ...]:
    """What a lost or refusing server raises: the operation failed, the connection goes."""
    asyncpg = import_asyncpg()
    return (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


#: Bumped when a table changes; a database with another version is refused.
SCHEMA_VERSION: Final = 1
# Serialises the first creation between processes that start at once.
_SCHEMA_LOCK: Final = 0x617379_6E6373
_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS asyncstop_meta (key text PRIMARY KEY, value text NOT NULL)",
    # One row per owner (a bot). epoch: raised by each new lease and by each claim,
    # so an older holder's writes are refused. expires_at: the bot's lease by the
    # database's clock, NULL when no lease is held. fire_epoch/claimed_by/
    # claim_expires_at: a service is cancelling the orders of fire_epoch and older.
    """CREATE TABLE IF NOT EXISTS asyncstop_owners (
        owner text PRIMARY KEY,
        epoch bigint NOT NULL DEFAULT 0,
        ttl double precision,
        expires_at timestamptz,
        holder text,
        leased_at timestamptz,
        fire_epoch bigint,
        claimed_by text,
        claim_expires_at timestamptz
    )""",
    # account_id "" is the client's own account (an account id is never empty).
    """CREATE TABLE IF NOT EXISTS asyncstop_stop_orders (
        owner text NOT NULL,
        account_id text NOT NULL,
        order_id text NOT NULL,
        protective boolean NOT NULL DEFAULT false,
        epoch bigint NOT NULL,
        seq bigserial,
        PRIMARY KEY (owner, account_id, order_id)
    )""",
    """CREATE TABLE IF NOT EXISTS asyncstop_fires (
        id bigserial PRIMARY KEY,
        owner text NOT NULL,
        epoch bigint NOT NULL,
        service text NOT NULL,
        claimed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz,
        record jsonb
    )""",
)


class Database:
    """Up to ``max_connections`` connections to one DSN, each operation bounded in time."""

    def __init__(
        self,
        dsn: str,
        *,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        command_timeout: float = DEFAULT_COMMAND_TIMEOUT,
        max_connections: int = 4,
    ) -> None:
        import_asyncpg()
        self._dsn = dsn
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._idle: list[asyncpg.Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[asyncpg.Connection] = set()
        self.closed = False

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one operation; terminated if the operation fails in any way."""
        if self.closed:
            raise RuntimeError("the PostgreSQL registry is closed")
        async with self._slots:
            conn = self._idle.pop() if self._idle else None
            if conn is None or conn.is_closed():
                conn = await self._connect()
                self._open.add(conn)
            try:
                yield conn
            except BaseException:
                self._terminate(conn)
                raise
            if self.closed or conn.is_closed() or conn.is_in_transaction():
                self._terminate(conn)
            else:
                self._idle.append(conn)

    async def run(
        self,
        operation: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        limit: float | None = None,
    ) -> T:
        """``operation(conn)`` within ``limit`` s (default: command_timeout), connecting too."""
        async with asyncio.timeout(self.command_timeout if limit is None else limit):
            async with self.connection() as conn:
                return await operation(conn)

    async def connect(self) -> asyncpg.Connection:
        """A new connection outside the pool, within ``connect_timeout``: the caller closes it."""
        return await self._connect()

    async def _connect(self) -> asyncpg.Connection:
        driver = import_asyncpg()
        try:
            conn = await driver.connect(self._dsn, timeout=self.connect_timeout)
        except (ValueError, driver.ClientConfigurationError) as err:
            # A DSN that cannot work: no retry helps. Its password never shows.
            raise InvalidInputError(
                f"the PostgreSQL DSN is not usable: {type(err).__name__}: "
                f"{redact_password(str(err), self._dsn)}"
            ) from None
        return cast("asyncpg.Connection", conn)

    def _terminate(self, conn: asyncpg.Connection) -> None:
        self._open.discard(conn)
        conn.terminate()

    async def close(self) -> None:
        """Close every connection (gracefully if it answers within a second). Idempotent."""
        self.closed = True
        conns, self._idle = list(self._open), []
        self._open.clear()
        for conn in conns:
            try:
                await conn.close(timeout=1.0)
            except db_errors():
                conn.terminate()
            except asyncio.CancelledError:
                for other in conns:
                    other.terminate()
                raise


def redact_password(text: str, dsn: str) -> str:
    """``text`` with the DSN's password (if any) replaced by ``***``."""
    try:
        password = urllib.parse.urlsplit(dsn).password
    except ValueError:
        password = None
    if password:
        text = text.replace(password, "***").replace(urllib.parse.quote(password), "***")
    return text


async def ensure_schema(conn: asyncpg.Connection) -> None:
    """Create the tables on first use; refuse a database of another schema version."""
    version = None
    if await conn.fetchval("SELECT to_regclass('asyncstop_meta') IS NOT NULL"):
        version = await conn.fetchval(
            "SELECT value FROM asyncstop_meta WHERE key = 'schema_version'"
        )
    if version is None:
        async with conn.transaction():
            await conn.execute(f"SELECT pg_advisory_xact_lock({_SCHEMA_LOCK})")
            for statement in _SCHEMA:
                await conn.execute(statement)
            await conn.execute(
                "INSERT INTO asyncstop_meta (key, value) VALUES ('schema_version', $1) "
                "ON CONFLICT (key) DO NOTHING",
                str(SCHEMA_VERSION),
            )
            version = await conn.fetchval(
                "SELECT value FROM asyncstop_meta WHERE key = 'schema_version'"
            )
        logger.debug("PostgreSQL registry schema ready (version %s)", version)
    if version != str(SCHEMA_VERSION):
        raise InvalidInputError(
            f"the PostgreSQL registry has schema version {version}, not {SCHEMA_VERSION}: "
            "it was written by another version of asyncstop"
        )
