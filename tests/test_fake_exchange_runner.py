"""The fake exchange's command line (``_runner``): python -m asyncstop.testing."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import socket
import sys
from pathlib import Path

import aiohttp
import pytest

import asyncstop.testing
from asyncstop.testing import (
    parse_duration,
)

from .helpers import STOP_ORDERS_PATH as PATH
from .helpers import (
    TOKEN,
    documented_headers,
    read_description,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("20ms", 0.02), ("0.02", 0.02), ("0.02s", 0.02), ("1.5s", 1.5), (" 5MS ", 0.005), ("0", 0.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    """parse_duration reads milliseconds, seconds and bare seconds."""
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "ms", "fast", "-1s", "inf", "nan", "1h"])
def test_parse_duration_refuses(text: str) -> None:
    """parse_duration refuses what is not a finite non-negative duration."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--fault-rate", "2"], "argument --fault-rate: must be between 0 and 1"),
        (["--port", "99999"], "argument --port: a port is from 0 to 65535"),
        (["--orders", "many"], "argument --orders: 'many' is not a whole number"),
        (["--latency", "fast"], "argument --latency: not a duration"),
    ],
)
def test_main_refuses_bad_arguments(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad argument exits 2 with an argparse message under the command's own name."""
    with pytest.raises(SystemExit) as exit_info:
        asyncstop.testing.main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"python -m asyncstop.testing: error: {message}" in err
    assert "Traceback" not in err


def test_help_shows_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    """--help states each option's default, in words where there is no value."""
    with pytest.raises(SystemExit) as exit_info:
        asyncstop.testing.main(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for stated in (
        "(default: 8080)",
        "stop orders per account (default: 1000)",
        "(default: a random one, printed at start)",
        "(default: no limit)",
        "(default: standard output)",
        "(default: 0.0)",
    ):
        assert stated in text
    assert "(default: None)" not in text


def test_another_command_line_registers_the_same_arguments(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """add_fake_exchange_arguments + run_fake_exchange: a taken port is one error line, exit 2."""
    parser = argparse.ArgumentParser(prog="asyncstop fake-exchange")
    asyncstop.testing.add_fake_exchange_arguments(parser)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = parser.parse_args(["--port", str(port), "--orders", "1", "--token", TOKEN])
        assert (args.port, args.orders, args.accounts, args.seed) == (port, 1, 1, 0)
        assert asyncstop.testing.run_fake_exchange(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("asyncstop fake-exchange: error: ")
    assert err.count("\n") == 1
    assert TOKEN not in err


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM cannot be caught on Windows")
async def test_cli_serves_and_exits_on_sigterm(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """python -m asyncstop.testing prints its URL, serves a cancel and exits 0 on SIGTERM."""
    ids_file = tmp_path / "ids.csv"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "asyncstop.testing", "--port", "0", "--orders", "3", "--accounts", "2"),
        *("--token", TOKEN, "--seed", "5", "--ids-out", str(ids_file)),
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        async with asyncio.timeout(30):
            header = await read_description(process.stdout)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", header["base_url"])
        assert header["token"] == TOKEN
        assert header["accounts"] == "acc-1,acc-2"
        lines = ids_file.read_text().splitlines()
        assert len(lines) == 6
        account_id, order_id = lines[-1].split(",")
        assert account_id == "acc-2"

        async with session.delete(
            header["base_url"] + PATH + order_id, headers=documented_headers(account_id)
        ) as response:
            assert response.status == 200
            assert (await response.json())["order"]["orderId"] == order_id

        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(20):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
