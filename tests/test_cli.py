"""The ``asyncstop`` command, driven as a user would: a subprocess against a fake exchange.

Each test starts a FakeExchange on this test's event loop and runs
``python -m asyncstop ...`` with ``asyncio.create_subprocess_exec``, so that the
exchange keeps serving while the command runs. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from asyncstop.testing import FakeExchange, Fault

from .conftest import ACCOUNT, TOKEN

REPO = Path(__file__).resolve().parent.parent
#: Generous for a loaded CI machine; a healthy run takes well under a second.
RUN_TIMEOUT = 30.0
JSON_KEYS = {"order_id", "account_id", "outcome", "attempts", "elapsed", "error"}


@dataclass(frozen=True)
class Run:
    """What one command run left behind."""

    returncode: int
    stdout: str
    stderr: str


def cli_env(
    exchange: FakeExchange | None = None, extra: Mapping[str, str | None] | None = None
) -> dict[str, str]:
    """The subprocess environment: this repo on PYTHONPATH, ASYNCSTOP_* only as given."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("ASYNCSTOP_") and key not in ("PYTHONPATH", "COLUMNS")
    }
    env["PYTHONPATH"] = str(REPO)
    if exchange is not None:
        env["ASYNCSTOP_BASE_URL"] = exchange.base_url
        env["ASYNCSTOP_TOKEN"] = TOKEN
        env["ASYNCSTOP_ACCOUNT_ID"] = ACCOUNT
    for key, value in (extra or {}).items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


@contextmanager
def sigint_not_ignored() -> Iterator[None]:
    """Let children receive SIGINT even if this process was started with it ignored.

    A child inherits an ignored SIGINT (e.g. pytest run in the background by a
    script), and Python then leaves it ignored; the SIGINT test needs the default.
    """
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        if previous == signal.SIG_IGN:
            signal.signal(signal.SIGINT, signal.SIG_IGN)


async def start_cli(*args: str, env: Mapping[str, str]) -> asyncio.subprocess.Process:
    with sigint_not_ignored():
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop",
            *args,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )


async def finish(proc: asyncio.subprocess.Process, stdin: str | None = None) -> Run:
    """Wait for the command to end (feeding it ``stdin``); kill it after RUN_TIMEOUT."""
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            out, err = await proc.communicate(None if stdin is None else stdin.encode())
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def run_cli(*args: str, env: Mapping[str, str], stdin: str | None = None) -> Run:
    """Run ``python -m asyncstop *args`` to the end."""
    return await finish(await start_cli(*args, env=env), stdin)


async def wait_until(condition: Callable[[], bool]) -> None:
    """Poll ``condition()`` until it is true, failing after RUN_TIMEOUT seconds."""
    async with asyncio.timeout(RUN_TIMEOUT):
        while True:
            if condition():
                return
            # The exchange's state has no event to wait on; it changes on this loop.
            await asyncio.sleep(0.01)


def write_ids(path: Path, items: list[tuple[str, str]], header: str = "") -> Path:
    path.write_text(header + "".join(f"{a},{o}\n" for a, o in items), encoding="utf-8")
    return path


def deletes(exchange: FakeExchange) -> list[object]:
    return [entry for entry in exchange.journal if entry.method == "DELETE"]


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    """A fake exchange that accepts TOKEN, with no faults."""
    async with FakeExchange(tokens={TOKEN}, seed=7) as fake:
        yield fake


# -- cancel ------------------------------------------------------------------------------------


async def test_cancel_prints_one_line_per_order(exchange: FakeExchange) -> None:
    """`cancel ID ID` cancels both and prints each id with its outcome and attempts; exit 0."""
    first, second = exchange.add_stop_orders(2, account_id=ACCOUNT)
    run = await run_cli("cancel", first, second, env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2
    for line, order_id in zip(lines, (first, second), strict=True):
        assert line.split()[:3] == [order_id, "cancelled", "attempts=1"]
    assert exchange.open_stop_orders() == set()


async def test_cancel_reports_already_gone_and_failed(exchange: FakeExchange) -> None:
    """An unknown id is already_gone (success); a 400 is failed with its error, and exit is 1."""
    refused = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject_for(refused, Fault.error(400))
    run = await run_cli("cancel", "NO-SUCH-ORDER", refused, env=cli_env(exchange))
    assert run.returncode == 1
    gone, failed = run.stdout.splitlines()
    assert gone.split()[:2] == ["NO-SUCH-ORDER", "already_gone"]
    assert failed.split()[:2] == [refused, "failed"]
    assert "HTTP 400" in failed


# -- kill --------------------------------------------------------------------------------------


async def test_kill_json_lines_for_scripts(exchange: FakeExchange, tmp_path: Path) -> None:
    """`kill --json` writes one parseable JSON object per order with the documented keys."""
    items = [("acc-1", oid) for oid in exchange.add_stop_orders(15, account_id="acc-1")]
    items += [("acc-2", oid) for oid in exchange.add_stop_orders(15, account_id="acc-2")]
    ids = write_ids(tmp_path / "ids.txt", items, header="# every stop order\n\n")
    run = await run_cli("kill", "--ids", str(ids), "--json", env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 30
    assert {(r["account_id"], r["order_id"]) for r in records} == set(items)
    for record in records:
        assert set(record) >= JSON_KEYS
        assert record["outcome"] == "cancelled"
        assert record["attempts"] == 1
        assert record["error"] is None
        assert isinstance(record["elapsed"], float)
    assert "cancelled" in run.stderr  # the summary goes to stderr, out of the JSON's way
    assert exchange.open_stop_orders() == set()


async def test_kill_summary_and_no_bar_off_a_terminal(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """Off a terminal: no progress bar; the summary counts outcomes and lists activated stops."""
    order_ids = exchange.add_stop_orders(20, account_id=ACCOUNT, activated_fraction=0.1)
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"  {oid}  \n" for oid in order_ids), encoding="utf-8")  # bare ids
    run = await run_cli("kill", "--ids", str(ids), env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert "20 orders in" in run.stdout
    assert "cancelled" in run.stdout
    assert "2 stop(s) had already triggered" in run.stdout
    assert "━" not in run.stderr  # no bar
    assert run.stderr == ""


async def test_kill_reads_ids_from_stdin(exchange: FakeExchange) -> None:
    """`--ids -` reads the orders from standard input."""
    order_ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    text = "".join(f"{ACCOUNT},{oid}\n" for oid in order_ids)
    run = await run_cli("kill", "--ids", "-", env=cli_env(exchange), stdin=text)
    assert run.returncode == 0, run.stderr
    assert exchange.open_stop_orders() == set()


async def test_exit_1_writes_pending_out_and_rerun_on_it_exits_0(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """Refused orders: exit 1, --pending-out lists exactly them, and a re-run on it exits 0."""
    order_ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    refused = order_ids[2:4]
    for order_id in refused:
        exchange.inject_for(order_id, Fault.error(400))
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    pending = tmp_path / "pending.txt"
    env = cli_env(exchange)

    first = await run_cli("kill", "--ids", str(ids), "--pending-out", str(pending), env=env)
    assert first.returncode == 1, first.stderr
    assert pending.read_text(encoding="utf-8").splitlines() == [f"{ACCOUNT},{o}" for o in refused]
    assert exchange.open_stop_orders() == set(refused)
    assert f"kill --ids {pending}" in first.stderr  # tells the operator how to retry

    # The same file as input and output: the natural loop for an operator.
    second = await run_cli("kill", "--ids", str(pending), "--pending-out", str(pending), env=env)
    assert second.returncode == 0, second.stderr
    assert pending.read_text(encoding="utf-8") == ""
    assert exchange.open_stop_orders() == set()
    assert len(deletes(exchange)) == 12


# -- usage and configuration errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"ASYNCSTOP_TOKEN": None}, ["ASYNCSTOP_TOKEN", "--token-file"]),
        ({"ASYNCSTOP_BASE_URL": None}, ["ASYNCSTOP_BASE_URL", "--base-url"]),
        ({"ASYNCSTOP_BASE_URL": "ftp://exchange.example"}, ["https://"]),
        ({"ASYNCSTOP_TOKEN": "Bearer abc"}, ["ASYNCSTOP_TOKEN", "bare JWT"]),
    ],
    ids=["no-token", "no-base-url", "bad-base-url", "bearer-prefix"],
)
async def test_configuration_error_is_one_line_and_exit_2(
    exchange: FakeExchange, tmp_path: Path, extra: dict[str, str | None], expected: list[str]
) -> None:
    """A missing or invalid setting: one `asyncstop: error:` line naming what to set, exit 2."""
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, exchange.add_stop_order(account_id=ACCOUNT))])
    run = await run_cli("kill", "--ids", str(ids), env=cli_env(exchange, extra))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("asyncstop: error: ")
    for text in expected:
        assert text in line
    assert "abc" not in run.stderr  # a refused token is not echoed
    assert deletes(exchange) == []


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ("acc-1,ORDER,extra", "3 comma-separated fields"),
        ("acc-1,ORD/1", "'/'"),
        ("acc-1,ORD 1", "' '"),
        ("acc-1,", "order id after the comma is empty"),
        (",ORDER", "account id before the comma is empty"),
        ("ORDER-WITHOUT-ACCOUNT", "ASYNCSTOP_ACCOUNT_ID"),
    ],
    ids=["three-fields", "slash", "space", "empty-order", "empty-account", "no-account"],
)
async def test_malformed_ids_file_sends_nothing(
    exchange: FakeExchange, tmp_path: Path, bad_line: str, expected: str
) -> None:
    """A malformed line: one error naming file and line, exit 2, and no request is sent."""
    good = exchange.add_stop_orders(2, account_id=ACCOUNT)
    ids = tmp_path / "orders.txt"
    ids.write_text(f"# header\n{ACCOUNT},{good[0]}\n{bad_line}\n{ACCOUNT},{good[1]}\n")
    env = cli_env(exchange, {"ASYNCSTOP_ACCOUNT_ID": None})
    run = await run_cli("kill", "--ids", str(ids), env=env)
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"asyncstop: error: {ids}, line 3: ")
    assert expected in line
    assert "nothing was cancelled" in line
    assert "Traceback" not in run.stderr
    assert exchange.journal == []
    assert exchange.open_stop_orders() == set(good)


async def test_token_flag_warns_and_is_never_printed(exchange: FakeExchange) -> None:
    """--token works but warns about the process list; the token is in no output, even at -vv."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    env = cli_env(exchange, {"ASYNCSTOP_TOKEN": None})
    run = await run_cli("cancel", order_id, "--token", TOKEN, "-vv", env=env)
    assert run.returncode == 0, run.stderr
    assert "--token is visible to other users" in run.stderr
    assert "DEBUG" in run.stderr or "INFO" in run.stderr  # -vv logs to stderr
    assert TOKEN not in run.stdout + run.stderr


async def test_uvloop_flag_runs_on_uvloop(exchange: FakeExchange) -> None:
    """--uvloop runs the same command on uvloop."""
    pytest.importorskip("uvloop")
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    run = await run_cli("cancel", order_id, "--uvloop", env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert exchange.open_stop_orders() == set()


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["kill"], "--ids"),
        (["kill", "--ids", "/no/such/file"], "cannot read ids file /no/such/file"),
        (["kill", "--ids", "-", "--deadline", "0"], "--deadline"),
        (["kill", "--ids", "-", "--pending-out", "/no/such/dir/p.txt"], "does not exist"),
    ],
    ids=["no-ids", "missing-file", "zero-deadline", "pending-out-folder"],
)
async def test_usage_errors_exit_2(exchange: FakeExchange, args: list[str], expected: str) -> None:
    """Bad arguments: exit 2, a message naming the problem, no traceback, nothing sent."""
    run = await run_cli(*args, env=cli_env(exchange), stdin=f"{ACCOUNT},ORDER\n")
    assert run.returncode == 2
    assert expected in run.stderr
    assert "Traceback" not in run.stderr
    assert exchange.journal == []


async def test_token_file_is_read_and_stripped(exchange: FakeExchange, tmp_path: Path) -> None:
    """--token-file reads the token, surrounding whitespace stripped, with no warning."""
    order_id = exchange.add_stop_order(account_id=ACCOUNT)
    token_file = tmp_path / "token"
    token_file.write_text(f"  {TOKEN}\n", encoding="utf-8")
    env = cli_env(exchange, {"ASYNCSTOP_TOKEN": None})
    run = await run_cli("cancel", order_id, "--token-file", str(token_file), env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert exchange.open_stop_orders() == set()


# -- Ctrl-C ------------------------------------------------------------------------------------


async def test_sigint_exits_130_after_printing_what_it_knows(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """SIGINT mid-run: every result is printed, --pending-out lists the unconfirmed, exit 130."""
    order_ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    hung = order_ids[:3]
    for order_id in hung:
        exchange.inject_for(order_id, Fault.hang())
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    pending = tmp_path / "pending.txt"
    proc = await start_cli(
        "kill",
        "--ids",
        str(ids),
        "--json",
        "--deadline",
        "60",
        "--pending-out",
        str(pending),
        env=cli_env(exchange),
    )
    try:
        # Seven results are printed (flushed line by line) and three requests hang.
        assert proc.stdout is not None
        early: list[str] = []
        async with asyncio.timeout(RUN_TIMEOUT):
            while len(early) < 7:
                early.append((await proc.stdout.readline()).decode())
        await wait_until(lambda: exchange.in_flight == 3)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    proc.send_signal(signal.SIGINT)
    run = await finish(proc)

    assert run.returncode == 130, run.stderr
    records = {r["order_id"]: r for r in map(json.loads, early + run.stdout.splitlines())}
    assert set(records) == set(order_ids)
    for order_id in order_ids:
        expected = "unknown" if order_id in hung else "cancelled"
        assert records[order_id]["outcome"] == expected
    assert "interrupted" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(pending.read_text(encoding="utf-8").splitlines()) == sorted(
        f"{ACCOUNT},{oid}" for oid in hung
    )


# -- fake-exchange and demo --------------------------------------------------------------------


async def test_fake_exchange_serves_until_sigterm(tmp_path: Path) -> None:
    """`fake-exchange` prints URL and token, writes the ids, serves `kill`, and stops on SIGTERM."""
    ids = tmp_path / "ids.txt"
    server = await start_cli(
        "fake-exchange",
        "--port",
        "0",
        "--orders",
        "20",
        "--accounts",
        "2",
        "--seed",
        "3",
        "--ids-out",
        str(ids),
        env=cli_env(),
    )
    try:
        assert server.stdout is not None
        settings: dict[str, str] = {}
        async with asyncio.timeout(RUN_TIMEOUT):
            while "orders" not in settings:
                line = (await server.stdout.readline()).decode()
                assert line, "the fake exchange ended before describing itself"
                key, _, value = line.strip().partition(": ")
                settings[key] = value
        assert settings["base_url"].startswith("http://127.0.0.1:")
        assert len(ids.read_text(encoding="utf-8").splitlines()) == 40

        env = cli_env(
            extra={"ASYNCSTOP_BASE_URL": settings["base_url"], "ASYNCSTOP_TOKEN": settings["token"]}
        )
        run = await run_cli("kill", "--ids", str(ids), env=env)
        assert run.returncode == 0, run.stderr
        assert "40 orders in" in run.stdout
    finally:
        if server.returncode is None:
            server.send_signal(signal.SIGTERM)
        stopped = await finish(server)
    assert stopped.returncode == 0, stopped.stderr


async def test_demo_cancels_everything() -> None:
    """`demo` needs no settings, exits 0, and the exchange's own view shows 0 live orders."""
    run = await run_cli("demo", env=cli_env())
    assert run.returncode == 0, run.stdout + run.stderr
    assert "The exchange's own view: 0 live stop orders." in run.stdout
    assert "2,000 live stop orders over 2 account(s)" in run.stdout


# -- display without rich ----------------------------------------------------------------------


async def test_without_rich_prints_a_hint_and_plain_progress(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """With rich missing, --progress prints the install hint once and falls back to plain text."""
    blocker = tmp_path / "no_rich" / "rich"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('rich is blocked by the test')\n")
    order_ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    env = cli_env(exchange)
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(REPO)])
    run = await run_cli("kill", "--ids", str(ids), "--progress", env=env)
    assert run.returncode == 0, run.stderr
    assert run.stderr.count("pip install 'asyncstop[cli]'") == 1
    assert "kill: 5/5" in run.stderr  # the plain progress line
    assert "5 orders in" in run.stdout


async def test_progress_flag_draws_the_rich_bar(exchange: FakeExchange, tmp_path: Path) -> None:
    """--progress draws the rich bar on stderr even off a terminal, and stdout stays clean JSON."""
    order_ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    run = await run_cli("kill", "--ids", str(ids), "--progress", "--json", env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert "5/5" in run.stderr
    assert "pip install" not in run.stderr
    assert len([json.loads(line) for line in run.stdout.splitlines()]) == 5
