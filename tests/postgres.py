"""A real temporary PostgreSQL for the off-host tests, a TCP path that can freeze, and processes.

``postgres_server`` (session) starts one server from the machine's binaries
(``asyncstop._postgres._tempserver``: initdb and pg_ctl, as the ``postgres``
user when run as root, on 127.0.0.1 at a free port, fsync off); each test gets
a fresh database from ``postgres_dsn``. Without PostgreSQL or asyncpg the
tests skip with the reason, except under CI (``CI=true``), where they fail:
CI must run them.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from asyncstop._postgres._tempserver import TemporaryPostgres, unavailable_reason
from asyncstop.testing import FakeExchange, wait_until, watchdog_service

from .helpers import ACCOUNT, TOKEN

_database_numbers = itertools.count(1)


def _unavailable() -> str | None:
    reason = unavailable_reason()
    if reason is None:
        try:
            import asyncpg  # noqa: F401
        except ImportError:
            reason = "asyncpg is not installed (pip install -e '.[postgres]')"
    return reason


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[TemporaryPostgres]:
    """One temporary PostgreSQL server for the session."""
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests: {reason}")
        pytest.skip(f"PostgreSQL tests skipped: {reason}")
    server = TemporaryPostgres()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_dsn(postgres_server: TemporaryPostgres) -> str:
    """The DSN of a fresh, empty database on the session's server."""
    return postgres_server.create_database(f"test_{os.getpid()}_{next(_database_numbers)}")


class FreezableProxy:
    """A TCP proxy on 127.0.0.1 to ``target``; :meth:`freeze` stops forwarding without closing.

    A frozen path is what a partition looks like to both ends: the sockets
    stay open, bytes sent are never answered, no RST or FIN arrives.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    async def __aenter__(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def freeze(self) -> None:
        """Stop forwarding in both directions; connections stay open."""
        self._flowing.clear()

    def thaw(self) -> None:
        """Forward again what was held and what comes."""
        self._flowing.set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            await self._flowing.wait()
            up_reader, up_writer = await asyncio.open_connection(*self.target)
            self._writers.add(up_writer)
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()


def owner_dsn_via(dsn: str, port: int) -> str:
    """``dsn`` with its port replaced (to go through a proxy)."""
    head, _, rest = dsn.rpartition(":")
    database = rest.partition("/")[2]
    return f"{head}:{port}/{database}"


class Bot:
    """A bot process (``asyncstop._cli.offhost_bot``) in its own process group."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.events.append(msgspec.json.decode(line))

    def named(self, event: str) -> list[dict[str, Any]]:
        """The events of this name so far."""
        return [e for e in self.events if e["event"] == event]


@contextlib.asynccontextmanager
async def bot_process(
    dsn: str, owners: dict[str, list[tuple[str, str, bool]]], *, ttl: float, log: Path
) -> AsyncIterator[Bot]:
    """Start a bot holding a lease per owner with those stops; yield once it is ready."""
    config = {
        "dsn": dsn,
        "ttl": ttl,
        "owners": [{"owner": o, "orders": orders} for o, orders in owners.items()],
    }
    with log.open("ab") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop._cli.offhost_bot",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
            start_new_session=True,
        )
    bot = Bot(process)
    assert process.stdin is not None
    process.stdin.write(msgspec.json.encode(config) + b"\n")
    await process.stdin.drain()
    bot._reader = asyncio.ensure_future(bot._read())
    try:
        await wait_until(lambda: bot.named("ready") or process.returncode is not None, 30)
        assert bot.named("ready"), log.read_text()  # noqa: ASYNC240 - a small log
        yield bot
    finally:
        if process.returncode is None:
            process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()
        await asyncio.gather(bot._reader, return_exceptions=True)


@contextlib.asynccontextmanager
async def service_process(
    dsn: str, exchange: FakeExchange, tmp: Path, *extra: str, name: str = "svc"
) -> AsyncIterator[asyncio.subprocess.Process]:
    """``asyncstop watchdog --store`` against ``exchange``, yielded once it watches; exits 0."""
    options = ["--round-deadline", "5", "--give-up-after", "30", *extra]
    async with watchdog_service(
        dsn,
        exchange.base_url,
        token=TOKEN,
        folder=tmp,
        account_id=ACCOUNT,
        name=name,
        options=options,
    ) as service:
        yield service.process
