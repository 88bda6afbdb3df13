"""PostgresRegistry and its lease against a real temporary PostgreSQL (no service, no exchange)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from pathlib import Path

import pytest

import asyncstop
from asyncstop._postgres._tempserver import TemporaryPostgres
from asyncstop.testing import FakeExchange, wait_until

from .helpers import ACCOUNT, WAIT_LIMIT, ClientFactory


async def test_add_snapshot_discard_follow_the_item_rules_per_owner(postgres_dsn: str) -> None:
    """Orders are kept per owner, in the order added, and a bad id is refused before any SQL."""
    async with (
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-a") as a,
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-b") as b,
    ):
        await a.add("A1")
        await a.add("A2", "acc-2", protective=True)
        await b.add("B1", "acc-1")
        assert await a.snapshot() == ["A1", ("acc-2", "A2")]
        assert await a.entries() == [("A1", False), (("acc-2", "A2"), True)]
        assert await b.snapshot() == [("acc-1", "B1")]
        await a.discard("A2", "acc-2")
        await a.discard("missing")
        assert [item async for item in a] == ["A1"]
        with pytest.raises(asyncstop.InvalidInputError):
            await a.add("bad/id")
        assert "postgres@" not in repr(a)


async def test_a_takeover_fences_the_old_holder_in_the_database(postgres_dsn: str) -> None:
    """A new lease() takes over with a higher epoch; the old holder's add() then raises."""
    async with (
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as old,
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as new,
    ):
        async with old.lease(ttl=30.0) as first:
            await old.add("O1")
            async with new.lease(ttl=30.0) as second:
                assert second.epoch > first.epoch
                assert second.took_over
                # The old lease's own clock says it is held: only the database refuses.
                assert not first.lost
                with pytest.raises(asyncstop.LeaseLostError):
                    await old.add("O2")
                assert first.lost
                await new.add("N1")
        assert await new.snapshot() == ["O1", "N1"]


async def test_a_lease_renews_and_a_clean_exit_releases_it(postgres_dsn: str) -> None:
    """The lease renews every ttl/3 past its ttl; leaving the block clears its expiry."""
    async with await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as registry:
        async with registry.lease(ttl=0.9) as lease:
            await wait_until(lambda: lease.renewals >= 4, WAIT_LIMIT)
            assert not lease.lost
            await registry.add("A1")
        assert registry.current_lease is None
        import asyncpg

        conn = await asyncpg.connect(postgres_dsn)
        try:
            assert (
                await conn.fetchval("SELECT expires_at FROM asyncstop_owners WHERE owner = 'bot-1'")
                is None
            )
        finally:
            await conn.close()
        assert await registry.snapshot() == ["A1"]


async def test_schema_of_another_version_is_refused(postgres_dsn: str) -> None:
    """A database whose registry schema has another version is refused at connect()."""
    await (await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="x")).close()
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("UPDATE asyncstop_meta SET value = '99' WHERE key = 'schema_version'")
    finally:
        await conn.close()
    with pytest.raises(asyncstop.InvalidInputError, match="schema version 99"):
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="x")


@pytest.mark.timeout(90)
async def test_a_database_restart_is_recovered_or_reported_never_silently_held(
    postgres_server: TemporaryPostgres, postgres_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted within the ttl, the lease recovers; down longer, it is lost, logged, and fenced."""
    caplog.set_level(logging.WARNING, logger="asyncstop")
    async with await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as registry:
        async with registry.lease(ttl=6.0) as lease:
            await registry.add("A1")
            await asyncio.to_thread(postgres_server.stop, "fast")
            await asyncio.to_thread(postgres_server.start)
            before = lease.renewals
            await wait_until(lambda: lease.renewals > before or lease.lost, 30)
            if lease.lost:
                # A restart slower than 2/3 ttl (a loaded machine): lost, and said so.
                assert "lost" in caplog.text
            else:
                # Recovered: the database agrees it is held, and adds go in.
                assert await _held_in_database(postgres_dsn, "bot-1")
                await registry.add("A2")
                await asyncio.to_thread(postgres_server.stop, "fast")
                try:
                    await wait_until(lambda: lease.lost, 30)
                    assert "lost" in caplog.text
                finally:
                    await asyncio.to_thread(postgres_server.start)
            with pytest.raises(asyncstop.LeaseLostError):
                await registry.add("A3")
        assert "A3" not in await registry.snapshot()


async def _held_in_database(dsn: str, owner: str) -> bool:
    import asyncpg

    conn = await asyncpg.connect(dsn)
    try:
        held = await conn.fetchval(
            "SELECT expires_at > clock_timestamp() FROM asyncstop_owners WHERE owner = $1", owner
        )
    finally:
        await conn.close()
    return bool(held)


def test_import_asyncstop_needs_no_asyncpg() -> None:
    """Without asyncpg, asyncstop imports, and connect() names the extra to install."""
    code = (
        "import sys, asyncio\n"
        "sys.modules['asyncpg'] = None\n"
        "import asyncstop\n"
        "try:\n"
        "    asyncio.run(asyncstop.PostgresRegistry.connect('postgresql://x@127.0.0.1/x',"
        " owner='b'))\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "pip install 'asyncstop[postgres]'" in out.stdout


def test_watchdog_command_without_asyncpg_prints_one_line_and_exits_2() -> None:
    """`asyncstop watchdog --store` without asyncpg: one line naming the extra, exit 2."""
    code = (
        "import sys\n"
        "sys.modules['asyncpg'] = None\n"
        "from asyncstop._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            "watchdog",
            "--store",
            "postgresql://bot@127.0.0.1/db",
            "--base-url",
            "http://127.0.0.1:9",
            "--token-command",
            "cat token",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1
    assert "pip install 'asyncstop[postgres]'" in lines[0]
    assert "Traceback" not in out.stderr


async def test_a_lost_lease_trips_a_kill_switch_over_the_registry(
    postgres_dsn: str, exchange: FakeExchange, make_client: ClientFactory
) -> None:
    """docs/offhost.md's pattern: wait_lost(), then KillSwitch cancels and forgets the settled."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    client = await make_client()
    async with (
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as registry,
        await asyncstop.PostgresRegistry.connect(postgres_dsn, owner="bot-1") as usurper,
        registry.lease(ttl=30.0) as lease,
    ):
        for order_id in ids:
            await registry.add(order_id, ACCOUNT)
        switch = asyncstop.KillSwitch(client, registry)
        async with usurper.lease(ttl=30.0):
            # The next renewal (every 10 s) or add learns it; an add does so at once.
            with pytest.raises(asyncstop.LeaseLostError):
                await registry.add("late", ACCOUNT)
            await asyncio.wait_for(lease.wait_lost(), WAIT_LIMIT)
            report = await switch.trigger()
            left = await usurper.snapshot()
    assert report.ok
    assert exchange.open_stop_orders(ACCOUNT) == set()
    assert left == []  # settled, so no longer registered: a later run would send nothing


def test_watchdog_help_shows_a_systemd_unit() -> None:
    """`asyncstop watchdog --help` answers with a systemd unit example and the extra to install."""
    out = subprocess.run(
        [sys.executable, "-m", "asyncstop", "watchdog", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "[Service]" in out.stdout
    assert "ExecStart=" in out.stdout
    assert "--token-command" in out.stdout
    assert "pip install 'asyncstop[postgres]'" in " ".join(out.stdout.split())


async def test_an_unusable_dsn_is_refused_without_showing_its_password() -> None:
    """A DSN that can never work raises InvalidInputError at once; its password is not in it."""
    pytest.importorskip("asyncpg")
    with pytest.raises(asyncstop.InvalidInputError) as caught:
        await asyncstop.PostgresRegistry.connect(
            "postgresql://bot:HUNTER2PW@127.0.0.1:notaport/db", owner="bot-1"
        )
    assert "HUNTER2PW" not in str(caught.value)


def test_watchdog_with_an_unusable_dsn_exits_2_in_one_line(tmp_path: Path) -> None:
    """`asyncstop watchdog --store BAD` exits 2 with one line, no traceback, no password."""
    pytest.importorskip("asyncpg")
    token = tmp_path / "token"
    token.write_text("t0k3n\n")
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "asyncstop",
            "watchdog",
            "--store",
            "postgresql://bot:HUNTER2PW@127.0.0.1:5432/db?sslmode=bogus",
            "--base-url",
            "http://127.0.0.1:9",
            "--token-command",
            f"cat {token}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert len(out.stderr.splitlines()) == 1
    assert "sslmode" in out.stderr
    assert "HUNTER2PW" not in out.stderr
