"""One watchdog per registry file: an ``fcntl.flock`` on ``<registry>.watchdog.lock``.

The watchdog process takes the lock before it says ``Ready`` and holds it
until it exits; the kernel releases it when the process dies, however it dies,
so a crashed watchdog never blocks the next one. The file holds one JSON line
naming the holder (its pid, its bot's pid, since when), so that a refused
second watchdog can say who holds it. The file itself is never removed: removing
it would let a second watchdog lock a new file while the first holds the old one.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from pathlib import Path

from .._errors import WatchdogError

__all__ = ["RegistryLock", "lock_path"]


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
