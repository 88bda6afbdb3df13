"""One watchdog per registry: a file lock for a registry file, an advisory lock for an owner.

**A registry file**: an ``fcntl.flock`` on ``<registry>.watchdog.lock``.

The watchdog process takes the lock before it says ``Ready`` and holds it
until it exits; the kernel releases it when the process dies, however it dies,
so a crashed watchdog never blocks the next one. The file holds one JSON line
naming the holder (its pid, its bot's pid, since when), so that a refused
second watchdog can say who holds it. The file itself is never removed: removing
it would let a second watchdog lock a new file while the first holds the old one.

**An owner in PostgreSQL** (:func:`lock_owner`): a session advisory lock
(``pg_try_advisory_lock``) on a 64-bit hash of the owner name, held on a
connection of the watchdog's own for as long as it runs. The server releases
it when that connection ends, so when the process dies, however it dies. The
connection's ``application_name`` names the holder for a refused second one.
Advisory locks are per database: one watchdog per (database, owner).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .._errors import WatchdogError

if TYPE_CHECKING:
    import asyncpg

__all__ = ["RegistryLock", "lock_owner", "lock_path", "owner_lock_key"]

# Who holds an owner's lock: a bigint key shows as classid (high half), objid (low half).
_HOLDER: Final = """
    SELECT l.pid, a.application_name, host(a.client_addr) AS addr, a.backend_start
    FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
      AND l.classid::int8 = $1 AND l.objid::int8 = $2
"""


def lock_path(registry: str | os.PathLike[str]) -> Path:
    """The side file whose lock says a watchdog guards ``registry``."""
    return Path(f"{os.fspath(registry)}.watchdog.lock")


class RegistryLock:
    """The held lock of one registry (see the module docstring)."""

    __slots__ = ("_fd", "path")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, registry: str | os.PathLike[str], *, bot_pid: int) -> RegistryLock:
        """Take the lock for this process, or raise :class:`WatchdogError` naming its holder."""
        path = lock_path(registry)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise WatchdogError(
                f"another watchdog guards {os.fspath(registry)}: {holder}. One registry file "
                "takes one watchdog: give each bot its own registry file",
                kind="RegistryLocked",
            ) from None
        except BaseException:
            os.close(fd)
            raise
        record = {
            "watchdog_pid": os.getpid(),
            "bot_pid": bot_pid,
            "since": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        """Let go of the lock (exiting does the same); idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


def _holder(fd: int) -> str:
    """Who holds the lock, from the line it wrote (it may still be writing it)."""
    try:
        record = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return (
            f"the live watchdog pid {int(record['watchdog_pid'])} of bot pid "
            f"{int(record['bot_pid'])}, since {record['since']}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "a live watchdog (its pid is not readable yet)"


def owner_lock_key(owner: str) -> int:
    """The advisory lock key of an owner's watchdog: a signed 64-bit hash of its name."""
    digest = hashlib.blake2b(owner.encode(), digest_size=8, person=b"asyncstop-wdog").digest()
    return int.from_bytes(digest, "big", signed=True)


async def lock_owner(conn: asyncpg.Connection, owner: str, *, bot_pid: int) -> None:
    """Take the owner's lock on ``conn`` (held until it closes), or raise :class:`WatchdogError`."""
    name = f"asyncstop watchdog pid {os.getpid()} of bot pid {bot_pid}"
    await conn.execute("SELECT set_config('application_name', $1, false)", name)
    key = owner_lock_key(owner)
    if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
        return
    row = await conn.fetchrow(_HOLDER, (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF)
    if row is None:
        holder = "a watchdog that is letting go of it"
    elif (row["application_name"] or "").startswith("asyncstop watchdog"):
        where = f"from {row['addr']}" if row["addr"] else "over a local socket"
        holder = (
            f"the live {row['application_name']} (connected {where} since "
            f"{row['backend_start'].isoformat(timespec='seconds')})"
        )
    else:
        holder = f"the PostgreSQL session of server pid {row['pid']}"
    raise WatchdogError(
        f"another watchdog guards owner {owner!r} in this database: {holder}. One owner "
        "takes one watchdog: give each bot its own owner name",
        kind="RegistryLocked",
    )
