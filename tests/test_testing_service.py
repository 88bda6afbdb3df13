"""``asyncstop.testing.watchdog_service``: the off-host service as a child, its secrets kept."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import pytest

from asyncstop.testing import FakeExchange, watchdog_service

from .helpers import ACCOUNT, TOKEN


def _proc(pid: int, name: str) -> bytes:
    return Path(f"/proc/{pid}/{name}").read_bytes()


@pytest.mark.timeout(120)
async def test_the_token_is_on_no_command_line_nor_environment_and_its_file_is_removed(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """The service's argv and environment hold neither token nor DSN; the 0600 file goes after."""
    async with watchdog_service(
        postgres_dsn, exchange.base_url, token=TOKEN, folder=tmp_path, account_id=ACCOUNT
    ) as service:
        pid = service.process.pid
        assert TOKEN.encode() not in _proc(pid, "cmdline")
        assert postgres_dsn.encode() not in _proc(pid, "cmdline")
        assert TOKEN.encode() not in _proc(pid, "environ")
        token_file = tmp_path / "service.token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        assert os.getsid(pid) == pid  # its own session: a terminal's Ctrl-C is not its signal
    assert service.process.returncode == 0  # SIGTERM, as systemctl stop sends it
    assert not token_file.exists()
    assert "watching the leases" in service.log_text()


@pytest.mark.timeout(60)
async def test_a_service_that_exits_before_it_watches_fails_with_its_log(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """A bad option: AssertionError naming the exit status and quoting the service's log."""
    with pytest.raises(AssertionError, match=r"exited 2 before it watched(.|\n)*--concurrency"):
        async with watchdog_service(
            postgres_dsn,
            exchange.base_url,
            token=TOKEN,
            folder=tmp_path,
            options=["--concurrency", "0"],
        ):
            pytest.fail("the block ran")
    assert not (tmp_path / "service.token").exists()


@pytest.mark.timeout(60)
async def test_an_error_in_the_block_stops_the_service_and_propagates(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """An exception in the block: the service is stopped, and the exception is the one raised."""
    with pytest.raises(KeyError, match="the test's own"):
        async with watchdog_service(
            postgres_dsn, exchange.base_url, token=TOKEN, folder=tmp_path
        ) as service:
            raise KeyError("the test's own")
    assert service.process.returncode == 0
    assert not (tmp_path / "service.token").exists()


@pytest.mark.timeout(60)
async def test_a_service_killed_in_the_block_is_left_as_it_is(
    postgres_dsn: str, exchange: FakeExchange, tmp_path: Path
) -> None:
    """A test that SIGKILLs the service itself gets no complaint about its exit status."""
    async with watchdog_service(
        postgres_dsn, exchange.base_url, token=TOKEN, folder=tmp_path
    ) as service:
        service.process.send_signal(signal.SIGKILL)
        await service.process.wait()
    assert service.process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("token", ["", "   "])
async def test_an_empty_token_is_refused_before_anything_starts(token: str, tmp_path: Path) -> None:
    """An empty token: ValueError, and no file written."""
    with pytest.raises(ValueError, match="non-empty"):
        async with watchdog_service(
            "postgresql://x", "http://127.0.0.1:1", token=token, folder=tmp_path
        ):
            pass
    assert os.listdir(tmp_path) == []
