"""A throwaway PostgreSQL server from the machine's binaries: for the demo, tests and benchmarks.

``initdb`` into a temporary directory, then ``pg_ctl start`` listening on
127.0.0.1 at a free port, with its unix socket inside that directory. Run as
root, both run as the ``postgres`` system user (PostgreSQL refuses root). The
binaries are found through ``ASYNCSTOP_PG_BINDIR``, ``pg_config --bindir``,
``pg_ctl`` on ``PATH``, or the newest ``/usr/lib/postgresql/*/bin``.
:func:`unavailable_reason` says in one line why none can be started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Final, Self

__all__ = ["TemporaryPostgres", "find_bindir", "unavailable_reason"]

_SYSTEM_USER: Final = "postgres"
_COMMAND_TIMEOUT: Final = 60.0


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl``, or None."""
    candidates: list[Path] = []
    if env := os.environ.get("ASYNCSTOP_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(  # noqa: S603 - pg_config found on PATH, no shell
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
            )
            candidates.append(Path(out.stdout.strip()))
    if pg_ctl := shutil.which("pg_ctl"):
        candidates.append(Path(pg_ctl).parent)
    candidates += sorted(
        Path("/usr/lib/postgresql").glob("*/bin"),
        key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0,
        reverse=True,
    )
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    return None


def unavailable_reason() -> str | None:
    """Why no temporary PostgreSQL can be started here, in one line; None when one can."""
    if find_bindir() is None:
        return "no PostgreSQL server binaries (initdb, pg_ctl) on this machine"
    if _is_root():
        import pwd  # noqa: PLC0415 - Unix only

        try:
            pwd.getpwnam(_SYSTEM_USER)
        except KeyError:
            return "running as root and there is no 'postgres' system user to run PostgreSQL as"
    return None


def _is_root() -> bool:
    geteuid = getattr(os, "geteuid", None)  # not on Windows
    return geteuid is not None and geteuid() == 0


def _base_dir() -> str | None:
    """Where to make the server's directory: the temp dir, unless the postgres user can't reach it.

    As root the server runs as ``postgres``, which must traverse every parent
    (pytest's and some TMPDIRs are private to root); /tmp always lets it.
    """
    if not _is_root():
        return None
    path = Path(tempfile.gettempdir()).resolve()
    for folder in (path, *path.parents):
        if not folder.stat().st_mode & 0o001:
            return "/tmp"  # noqa: S108 - world-traversable, and the directory itself is 0700
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class TemporaryPostgres:
    """A PostgreSQL server in a temporary directory, removed by :meth:`close`.

    ``durable=False`` (tests) turns ``fsync`` off: fast, and lost on a power
    cut, which no test makes. Use as a context manager, or call :meth:`start`
    and :meth:`close`.
    """

    def __init__(self, *, durable: bool = False) -> None:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
        self.bindir = bindir
        self.durable = durable
        self.port = _free_port()
        self.root = Path(tempfile.mkdtemp(prefix="asyncstop-pg-", dir=_base_dir()))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._as_user: list[str] = []
        if _is_root():
            import pwd  # noqa: PLC0415 - Unix only

            user = pwd.getpwnam(_SYSTEM_USER)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as_user = ["runuser", "-u", _SYSTEM_USER, "--"]
        self.running = False

    def dsn(self, database: str = "postgres") -> str:
        """The DSN of ``database`` over TCP (trust authentication: no password)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create the empty database ``name`` (letters, digits, ``_``); return its DSN."""
        if not (name.isascii() and name.replace("_", "a").isalnum() and not name[0].isdigit()):
            raise ValueError(f"a database name is letters, digits and _, not {name!r}")
        self._run(
            str(self.bindir / "psql"),
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-c",
            f"CREATE DATABASE {name}",
        )
        return self.dsn(name)

    def _run(self, *args: str) -> None:
        result = subprocess.run(  # noqa: S603 - the server's own binaries, no shell
            [*self._as_user, *args],
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"{Path(args[0]).name} failed: {' / '.join(detail)}")

    def start(self) -> Self:
        """initdb (the first time) and start the server; return once it accepts connections."""
        if not self.data.exists():
            self._run(
                str(self.bindir / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            )
        options = [
            "-c listen_addresses=127.0.0.1",
            f"-c port={self.port}",
            f"-c unix_socket_directories={self.root}",
            "-c max_connections=200",
            "-c shared_buffers=32MB",
        ]
        if not self.durable:
            options += ["-c fsync=off", "-c full_page_writes=off"]
        self._run(
            str(self.bindir / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.log),
            "-o",
            " ".join(options),
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (``fast``: roll back and disconnect; ``immediate``: as a crash)."""
        if not self.running:
            return
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")
        self.running = False

    def close(self) -> None:
        """Stop the server and remove its directory. Idempotent."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()
