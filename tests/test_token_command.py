"""A token command (a credential helper): the token from its stdout, or a TokenProviderError.

Each test runs a small real executable script (this Python in its shebang); nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import textwrap
from pathlib import Path

import pytest

import asyncstop
from asyncstop import InvalidInputError, TokenProviderError
from asyncstop._auth import MAX_TOKEN_OUTPUT, command_token_provider
from asyncstop.testing import FakeExchange, wait_until

from .helpers import ACCOUNT, TOKEN

# What a script prints when it prints something other than a token; no error may show it.
LEAK = "LEAKED-OUTPUT-77e1"


def script(tmp_path: Path, body: str, name: str = "helper.py") -> list[str]:
    """Write ``body`` as an executable Python script and return the argv that runs it."""
    path = tmp_path / name
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n" + textwrap.dedent(body))
    path.chmod(0o700)
    return [str(path)]


def is_gone(pid: int) -> bool:
    """True when no process has ``pid`` any more (a zombie counts as gone only once reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


async def test_the_token_is_what_the_command_prints(tmp_path: Path) -> None:
    """A command that prints the token and a newline gives the bare token."""
    provider = command_token_provider(script(tmp_path, f"print({TOKEN!r})"), timeout=10)
    assert await provider() == TOKEN
    assert await provider() == TOKEN  # run again for each fetch


async def test_the_command_gets_a_minimal_environment_and_no_stdin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only PATH/HOME/locale and pass_env variables reach the command; stdin is empty at once."""
    monkeypatch.setenv("B2_TOKEN", TOKEN)
    monkeypatch.setenv("VAULT_ADDR", "http://127.0.0.1:8200")
    seen = tmp_path / "seen.json"
    argv = script(
        tmp_path,
        f"""
        import json
        with open({str(seen)!r}, "w") as f:
            json.dump({{"env": dict(os.environ), "stdin": sys.stdin.read()}}, f)
        print("tok-1")
        """,
    )
    provider = command_token_provider(argv, timeout=10, pass_env=["VAULT_ADDR"])
    assert await provider() == "tok-1"
    record = json.loads(seen.read_text())
    assert record["stdin"] == ""
    assert record["env"]["VAULT_ADDR"] == "http://127.0.0.1:8200"
    assert "B2_TOKEN" not in record["env"]
    assert TOKEN not in json.dumps(record["env"])
    assert TOKEN not in " ".join(argv)


async def test_a_hanging_command_is_killed_with_its_children(tmp_path: Path) -> None:
    """A command that hangs is killed, and so is a child it started, when the timeout passes."""
    pids = tmp_path / "pids"
    argv = script(
        tmp_path,
        f"""
        import subprocess
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
        with open({str(pids)!r}, "w") as f:
            f.write(f"{{os.getpid()}} {{child.pid}}")
        time.sleep(600)
        """,
    )
    # Long enough for both processes to start on a loaded machine.
    provider = command_token_provider(argv, timeout=5.0)
    with pytest.raises(TokenProviderError, match="did not finish within 5s; it was killed"):
        await provider()
    helper_pid, child_pid = map(int, pids.read_text().split())
    assert is_gone(helper_pid)
    await wait_until(lambda: is_gone(child_pid), timeout=10)


async def test_a_cancelled_fetch_kills_the_command(tmp_path: Path) -> None:
    """A caller's own timeout, shorter than the command's, still kills the command."""
    pid_file = tmp_path / "pid"
    argv = script(
        tmp_path,
        f"""
        with open({str(pid_file)!r}, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(600)
        """,
    )
    provider = command_token_provider(argv, timeout=60)
    task = asyncio.ensure_future(provider())
    await wait_until(lambda: pid_file.exists() and pid_file.read_text(), timeout=20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert is_gone(int(pid_file.read_text()))


async def test_a_failing_command_names_its_status_but_not_its_output(tmp_path: Path) -> None:
    """Exit status 3: the error says so and counts stderr, showing neither stdout nor stderr."""
    argv = script(
        tmp_path,
        f"""
        print({LEAK!r})
        sys.stderr.write("permission denied for " + {LEAK!r})
        sys.exit(3)
        """,
        name="vault-helper.py",
    )
    provider = command_token_provider(argv, timeout=10)
    with pytest.raises(TokenProviderError) as caught:
        await provider()
    message = str(caught.value)
    assert "exited with status 3" in message
    assert f"{len('permission denied for ' + LEAK)} bytes to stderr" in message
    assert "'vault-helper.py'" in message
    assert LEAK not in message
    assert LEAK not in repr(caught.value)


async def test_a_command_killed_by_a_signal_is_named_so(tmp_path: Path) -> None:
    """A command that dies by SIGTERM: the error names the signal."""
    argv = script(tmp_path, "import signal; os.kill(os.getpid(), signal.SIGTERM); time.sleep(60)")
    with pytest.raises(TokenProviderError, match="killed by signal 15"):
        await command_token_provider(argv, timeout=10)()


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        (b"", "printed no token"),
        (b"  \n\t\n", "printed no token"),
        (b"Bearer " + LEAK.encode(), 'without the "Bearer " prefix'),
        (LEAK.encode() + b" " + LEAK.encode(), "no whitespace"),
        (LEAK.encode() + b"\nsecond line\n", "no whitespace"),
        (LEAK.encode() + b"\x07", "control character"),
        (b"\xff\xfe" + LEAK.encode(), "not UTF-8"),
    ],
)
async def test_an_unusable_output_is_refused_without_echoing_it(
    tmp_path: Path, output: bytes, reason: str
) -> None:
    """Empty output, a "Bearer " prefix, junk or non-UTF-8: refused, the output never shown."""
    data = tmp_path / "out.bin"
    data.write_bytes(output)
    argv = script(tmp_path, f"sys.stdout.buffer.write(open({str(data)!r}, 'rb').read())")
    with pytest.raises(TokenProviderError, match=reason) as caught:
        await command_token_provider(argv, timeout=10)()
    assert LEAK not in str(caught.value)


async def test_surrounding_whitespace_is_stripped(tmp_path: Path) -> None:
    """Leading and trailing whitespace (CRLF included) is not part of the token."""
    argv = script(tmp_path, "sys.stdout.write('\\r\\n  tok-2 \\r\\n')")
    assert await command_token_provider(argv, timeout=10)() == "tok-2"


@pytest.mark.parametrize("endless", [False, True])
async def test_a_huge_output_is_refused_and_the_command_killed(
    tmp_path: Path, endless: bool
) -> None:
    """Over 64 KiB on stdout (even endless): refused at once, the command killed, nothing kept."""
    if endless:
        body = f"while True: sys.stdout.write({LEAK!r} * 1000)"
    else:
        body = f"sys.stdout.write('x' * {MAX_TOKEN_OUTPUT + 1})"
    argv = script(tmp_path, body)
    with pytest.raises(TokenProviderError, match=f"more than {MAX_TOKEN_OUTPUT} bytes") as caught:
        await command_token_provider(argv, timeout=30)()
    assert LEAK not in str(caught.value)


async def test_a_missing_program_is_a_token_provider_error(tmp_path: Path) -> None:
    """A program that does not exist: TokenProviderError naming it, not FileNotFoundError."""
    provider = command_token_provider([str(tmp_path / "no-such-helper")], timeout=10)
    with pytest.raises(TokenProviderError, match="'no-such-helper' could not be started"):
        await provider()


@pytest.mark.parametrize(
    ("argv", "timeout", "reason"),
    [
        ("vault read -field=jwt secret/b2", 5, "shlex.split"),
        (b"vault", 5, "list of arguments"),
        ([], 5, "must not be empty"),
        ([""], 5, "program name"),
        (["vault", 3], 5, "must be a str, not int"),
        (["vault", "a\0b"], 5, "NUL"),
        (["vault"], 0, "timeout must be a finite number > 0"),
        (["vault"], float("inf"), "timeout must be a finite number > 0"),
        (["vault"], True, "timeout must be a number"),
    ],
)
def test_a_bad_command_or_timeout_is_refused_up_front(
    argv: object, timeout: object, reason: str
) -> None:
    """A command string (a shell-string slip), an empty argv or a bad timeout: InvalidInputError."""
    with pytest.raises(InvalidInputError, match=reason):
        command_token_provider(argv, timeout=timeout)  # type: ignore[arg-type]


def test_the_provider_repr_names_only_the_program() -> None:
    """The provider's repr names the program and its timeout, not its arguments."""
    provider = command_token_provider(["/usr/bin/vault", "read", "secret/b2"], timeout=5)
    assert repr(provider) == "<command_token_provider 'vault' timeout=5s>"


async def test_a_client_refreshes_its_token_through_the_command(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client whose token is refused asks the command again and cancels with the new token."""
    async with FakeExchange(tokens={"old-token"}, seed=1) as exchange:
        exchange.add_account(ACCOUNT)
        ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
        current = tmp_path / "current"
        current.write_text("old-token\n")
        argv = script(tmp_path, f"print(open({str(current)!r}).read().strip())")
        async with asyncstop.AsyncStopClient(
            base_url=exchange.base_url,
            token=command_token_provider(argv, timeout=10),
            account_id=ACCOUNT,
        ) as client:
            exchange.tokens = {TOKEN}  # the old token expires
            current.write_text(TOKEN + "\n")
            report = await client.cancel_stop_orders(ids)
        assert report.ok
        assert exchange.open_stop_orders() == set()
    assert TOKEN not in caplog.text


async def test_a_failing_command_at_open_names_the_command(tmp_path: Path) -> None:
    """A client whose token command fails at open raises TokenProviderError with its reason."""
    argv = script(tmp_path, "sys.exit(2)", name="broken-helper.py")
    client = asyncstop.AsyncStopClient(
        base_url="http://127.0.0.1:9",
        token=command_token_provider(argv, timeout=10),
        account_id=ACCOUNT,
    )
    with pytest.raises(TokenProviderError, match=r"'broken-helper\.py' exited with status 2"):
        async with client:
            pass


@pytest.mark.parametrize("failure", ["raises", "unusable", "command fails"])
async def test_a_failing_provider_at_watchdog_start_raises_token_provider_error(
    tmp_path: Path, failure: str
) -> None:
    """Watchdog start with a failing provider: TokenProviderError, no process, no secret shown."""

    async def raising() -> str:
        raise ValueError(f"vault said no to {LEAK}")

    async def unusable() -> str:
        return f"Bearer {LEAK}"

    providers = {
        "raises": raising,
        "unusable": unusable,
        "command fails": command_token_provider(script(tmp_path, "sys.exit(4)"), timeout=10),
    }
    registry = asyncstop.StopOrderRegistry.open(tmp_path / "stops.db")
    try:
        watchdog = asyncstop.Watchdog(
            registry, base_url="http://127.0.0.1:9", token=providers[failure], account_id=ACCOUNT
        )
        with pytest.raises(TokenProviderError) as caught:
            async with watchdog:
                pytest.fail("the block must not run")
        assert LEAK not in str(caught.value)
        assert caught.value.__cause__ is None
        assert caught.value.__context__ is None
        assert watchdog.pid is None
        assert not watchdog.alive
    finally:
        registry.close()
