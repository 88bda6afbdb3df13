"""The ``asyncstop`` command, driven as a user would: a subprocess against a fake exchange.

Each test starts a FakeExchange on this test's event loop and runs
``python -m asyncstop ...`` with ``asyncio.create_subprocess_exec``, so that the
exchange keeps serving while the command runs. Every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import json
import os
import pty
import re
import select
import signal
import stat
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

import asyncstop
from asyncstop.testing import FakeExchange, Fault, wait_until

from .helpers import ACCOUNT, TOKEN

REPO = Path(__file__).resolve().parent.parent
#: Generous for a loaded CI machine; a healthy run takes well under a second.
RUN_TIMEOUT = 30.0
JSON_KEYS = {
    "order_id",
    "account_id",
    "outcome",
    "ok",
    "attempts",
    "elapsed",
    "activated",
    "error",
    "order",
}


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


#: The signals the command settles on, and what each is set back to for the child.
STOPPING_SIGNALS: dict[signal.Signals, Callable[[int, FrameType | None], Any] | signal.Handlers] = {
    signal.SIGINT: signal.default_int_handler,
    signal.SIGTERM: signal.SIG_DFL,
    signal.SIGHUP: signal.SIG_DFL,
}


@contextmanager
def signals_not_ignored() -> Iterator[None]:
    """Let children receive SIGINT, SIGTERM and SIGHUP even if this process ignores them.

    A child inherits an ignored signal (pytest run in the background by a
    script ignores SIGINT, under nohup SIGHUP), and the command rightly leaves
    an ignored signal ignored; the signal tests need the defaults.
    """
    ignored = [sig for sig in STOPPING_SIGNALS if signal.getsignal(sig) == signal.SIG_IGN]
    for sig in ignored:
        signal.signal(sig, STOPPING_SIGNALS[sig])
    try:
        yield
    finally:
        for sig in ignored:
            signal.signal(sig, signal.SIG_IGN)


async def start_cli(
    *args: str, env: Mapping[str, str], stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """Start ``python -m asyncstop *args``; ``stdout`` may be a file descriptor of the test's."""
    with signals_not_ignored():
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "asyncstop",
            *args,
            env=dict(env),
            stdin=asyncio.subprocess.PIPE,
            stdout=stdout,
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
    return Run(proc.returncode, (out or b"").decode(), err.decode())


async def run_cli(*args: str, env: Mapping[str, str], stdin: str | None = None) -> Run:
    """Run ``python -m asyncstop *args`` to the end."""
    return await finish(await start_cli(*args, env=env), stdin)


def write_ids(path: Path, items: list[tuple[str, str]], header: str = "") -> Path:
    path.write_text(header + "".join(f"{a},{o}\n" for a, o in items), encoding="utf-8")
    return path


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


async def test_cancel_reports_not_found_and_failed(exchange: FakeExchange) -> None:
    """An unknown id is not_found (not live); a 400 is failed with its error, and exit is 1."""
    refused = exchange.add_stop_order(account_id=ACCOUNT)
    exchange.inject_for(refused, Fault.error(400))
    run = await run_cli("cancel", "NO-SUCH-ORDER", refused, env=cli_env(exchange))
    assert run.returncode == 1
    gone, failed = run.stdout.splitlines()
    assert gone.split()[:2] == ["NO-SUCH-ORDER", "not_found"]
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


async def test_json_lines_carry_the_error_and_the_order_as_structured_fields(
    exchange: FakeExchange,
) -> None:
    """`cancel --json`: a refused order's error has its type, message and status code; a
    cancelled one carries the order as the exchange returned it."""
    cancelled, refused = exchange.add_stop_orders(2, account_id=ACCOUNT)
    exchange.inject_for(refused, Fault.error(403))
    run = await run_cli("cancel", "--json", cancelled, refused, env=cli_env(exchange))
    assert run.returncode == 1, run.stderr
    first, second = (json.loads(line) for line in run.stdout.splitlines())
    assert (first["outcome"], first["ok"], first["error"]) == ("cancelled", True, None)
    assert first["order"]["orderId"] == cancelled
    assert (second["outcome"], second["ok"], second["order"]) == ("failed", False, None)
    assert second["error"]["type"] == "PermissionDeniedError"
    assert second["error"]["fields"]["status_code"] == 403
    assert "403" in second["error"]["message"]


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
    assert "2 cancelled stop(s) had already triggered" in run.stdout
    assert "━" not in run.stderr  # no bar
    assert run.stderr == ""


async def test_kill_reads_ids_from_stdin(exchange: FakeExchange) -> None:
    """`--ids -` reads the orders from a pipe, with no prompt in the way."""
    order_ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    text = "".join(f"{ACCOUNT},{oid}\n" for oid in order_ids)
    run = await run_cli("kill", "--ids", "-", env=cli_env(exchange), stdin=text)
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert exchange.open_stop_orders() == set()


async def test_kill_ids_from_a_terminal_prompts_first(exchange: FakeExchange) -> None:
    """`--ids -` on a terminal says on stderr that it is waiting for ids, and how to end them."""
    [order_id] = exchange.add_stop_orders(1, account_id=ACCOUNT)
    terminal, command_side = pty.openpty()
    try:
        with signals_not_ignored():
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "asyncstop",
                "kill",
                "--ids",
                "-",
                env=cli_env(exchange),
                stdin=command_side,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        assert proc.stderr is not None
        async with asyncio.timeout(RUN_TIMEOUT):
            prompt = (await proc.stderr.readline()).decode()
        assert "reading order ids from the terminal" in prompt
        assert "Ctrl-D" in prompt
        assert exchange.journal == []  # it waits for the person
        os.write(terminal, f"{order_id}\n\x04".encode())  # a line, then Ctrl-D
        run = await finish(proc)
    finally:
        os.close(terminal)
        os.close(command_side)
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
    assert len(exchange.requests("DELETE")) == 12


async def test_the_retry_idiom_under_a_wrong_account_fails_and_lists_every_live_order(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """`kill --pending-out left.txt || kill --ids left.txt` with the wrong account id: the
    file lists all 300 live orders and the chain exits non-zero, never 0."""
    order_ids = exchange.add_stop_orders(300, account_id=ACCOUNT)
    exchange.add_account("acc-2")  # the token may use it, but the stops are on ACCOUNT
    ids = tmp_path / "ids.txt"
    ids.write_text("".join(f"{o}\n" for o in order_ids), encoding="utf-8")
    left = tmp_path / "left.txt"
    command = f"{sys.executable} -m asyncstop"
    script = (
        f"{command} kill --ids {ids} --pending-out {left} || {command} kill --ids {left}; "
        'echo "chain exit $?" >&2'
    )
    env = cli_env(exchange, {"ASYNCSTOP_ACCOUNT_ID": "acc-2"})
    with signals_not_ignored():
        proc = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    run = await finish(proc)
    assert "chain exit 3" in run.stderr
    assert left.read_text(encoding="utf-8").splitlines() == [f"acc-2,{o}" for o in order_ids]
    assert "warning" in run.stderr
    assert "300 order(s) that may still be live" in run.stderr
    assert exchange.open_stop_orders() == set(order_ids)


# -- usage and configuration errors --------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"ASYNCSTOP_TOKEN": None}, ["ASYNCSTOP_TOKEN", "--token-file"]),
        ({"ASYNCSTOP_BASE_URL": None}, ["ASYNCSTOP_BASE_URL", "--base-url"]),
        ({"ASYNCSTOP_BASE_URL": "ftp://exchange.example"}, ["https://"]),
        ({"ASYNCSTOP_BASE_URL": " http://127.0.0.1:1"}, ["ASYNCSTOP_BASE_URL", "whitespace"]),
        ({"ASYNCSTOP_BASE_URL": "http://127.0.0.1:99999"}, ["ASYNCSTOP_BASE_URL", "port"]),
        ({"ASYNCSTOP_TOKEN": "Bearer abc"}, ["ASYNCSTOP_TOKEN", "bare JWT"]),
    ],
    ids=[
        "no-token",
        "no-base-url",
        "bad-base-url",
        "spaced-env-base-url",
        "bad-port",
        "bearer-prefix",
    ],
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
    assert exchange.requests("DELETE") == []


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


# -- signals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP], ids=lambda sig: sig.name
)
async def test_signal_settles_prints_and_exits_128_plus_n(
    exchange: FakeExchange, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGINT, SIGTERM or SIGHUP mid-run: in flight end unknown, unsent not_sent; the summary
    and --pending-out are written, and the exit status is 128 + the signal's number."""
    order_ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    done, hung, unsent = order_ids[:3], order_ids[3:5], order_ids[5:]
    for order_id in hung:
        exchange.inject_for(order_id, Fault.hang())
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    pending = tmp_path / "pending.txt"
    proc = await start_cli(
        "kill",
        "--ids",
        str(ids),
        "--json",
        "--concurrency",
        "2",
        "--deadline",
        "60",
        "--timeout",
        "60",
        "--pending-out",
        str(pending),
        env=cli_env(exchange),
    )
    try:
        # Two workers: three orders are cancelled, then both workers hang on the next two.
        assert proc.stdout is not None
        early: list[str] = []
        async with asyncio.timeout(RUN_TIMEOUT):
            while len(early) < len(done):
                early.append((await proc.stdout.readline()).decode())
        await wait_until(lambda: exchange.in_flight == len(hung), timeout=RUN_TIMEOUT)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    proc.send_signal(sig)
    run = await finish(proc)

    assert run.returncode == 128 + sig, run.stderr
    records = {r["order_id"]: r for r in map(json.loads, early + run.stdout.splitlines())}
    assert {oid: r["outcome"] for oid, r in records.items()} == {
        **dict.fromkeys(done, "cancelled"),
        **dict.fromkeys(hung, "unknown"),
        **dict.fromkeys(unsent, "not_sent"),
    }
    assert "10 orders in" in run.stderr  # the summary (on stderr, beside --json)
    assert "interrupted: 7 order(s) may still be live" in run.stderr
    assert "Traceback" not in run.stderr
    assert sorted(pending.read_text(encoding="utf-8").splitlines()) == sorted(
        f"{ACCOUNT},{oid}" for oid in hung + unsent
    )
    assert exchange.open_stop_orders() == set(hung + unsent)


# -- output that cannot be written ------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "refused"),
    [(["kill"], 0), (["kill", "--json"], 1), (["cancel"], 1)],
    ids=["kill-summary", "kill-json", "cancel-lines"],
)
async def test_closed_stdout_is_quiet_and_the_status_still_counts(
    exchange: FakeExchange, tmp_path: Path, args: list[str], refused: int
) -> None:
    """A reader that is gone (`| head -0`): no traceback, and the exit status still says
    whether every order was cancelled."""
    order_ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    for order_id in order_ids[:refused]:
        exchange.inject_for(order_id, Fault.error(400))
    if args[0] == "kill":
        ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
        args = [*args, "--ids", str(ids)]
    else:
        args = [*args, *order_ids]
    read_end, write_end = os.pipe()
    os.close(read_end)  # closed before the command writes a byte
    try:
        proc = await start_cli(*args, env=cli_env(exchange), stdout=write_end)
    finally:
        os.close(write_end)
    run = await finish(proc)
    assert run.returncode == (1 if refused else 0), run.stderr
    for text in ("Traceback", "BrokenPipe", "Exception ignored", "asyncstop: error"):
        assert text not in run.stderr
    assert exchange.open_stop_orders() == set(order_ids[:refused])


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_json_to_a_full_disk_exits_4_with_one_line(exchange: FakeExchange) -> None:
    """--json to a full disk: every order is still cancelled, one error line, exit 4."""
    order_ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        proc = await start_cli("cancel", "--json", *order_ids, env=cli_env(exchange), stdout=full)
    finally:
        os.close(full)
    run = await finish(proc)
    assert run.returncode == 4, run.stderr
    errors = [line for line in run.stderr.splitlines() if "error" in line]
    assert len(errors) == 1
    assert errors[0].startswith("asyncstop: error: cannot write to standard output: No space")
    assert "Traceback" not in run.stderr
    assert exchange.open_stop_orders() == set()


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_pending_out_that_cannot_be_written_is_one_line(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """--pending-out on a full device: one line naming it, a non-zero exit, the device intact."""
    order_ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    exchange.inject_for(order_ids[0], Fault.error(400))
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    run = await run_cli(
        "kill", "--ids", str(ids), "--pending-out", "/dev/full", env=cli_env(exchange)
    )
    assert run.returncode == 1
    assert run.stderr.splitlines() == [
        "asyncstop: error: cannot write /dev/full: No space left on device"
    ]
    # Written in place, never replaced by a regular file (this suite may run as root).
    assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


# -- summary -----------------------------------------------------------------------------------


async def test_rate_counts_only_orders_sent(exchange: FakeExchange, tmp_path: Path) -> None:
    """Orders never sent (the deadline passed) take no part in the rate the summary prints."""
    order_ids = exchange.add_stop_orders(10, account_id=ACCOUNT)
    for order_id in order_ids[:2]:
        exchange.inject_for(order_id, Fault.hang())
    ids = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids])
    run = await run_cli(
        "kill",
        "--ids",
        str(ids),
        "--concurrency",
        "2",
        "--deadline",
        "1",
        "--timeout",
        "60",
        env=cli_env(exchange),
    )
    assert run.returncode == 1, run.stderr
    heading = run.stdout.splitlines()[0]
    found = re.fullmatch(
        r"kill: 10 orders in ([\d.]+) s; 2 sent \(([\d,]+) orders/s\), 8 never sent", heading
    )
    assert found, heading
    elapsed, rate = float(found[1]), int(found[2].replace(",", ""))
    assert abs(rate - 2 / elapsed) <= 1  # ten orders over that time would be five times more


async def test_summary_counts_the_429s_met(exchange: FakeExchange, tmp_path: Path) -> None:
    """The summary says how many HTTP 429s the run met: retried ones and a final one."""
    retried = exchange.add_stop_orders(10, account_id="acc-1")
    for order_id in retried[:2]:
        exchange.inject_for(order_id, Fault.rate_limited("0.2"))
    # Its own account, so that the long pause it asks for holds back no other order.
    [final] = exchange.add_stop_orders(1, account_id="acc-2")
    exchange.inject_for(final, Fault.rate_limited("30"))
    items = [("acc-1", oid) for oid in retried] + [("acc-2", final)]
    ids = write_ids(tmp_path / "ids.txt", items)
    # One request at a time: none is on its way when a 429 starts a pause, so no other
    # order meets one, however slow this machine.
    run = await run_cli(
        "kill", "--ids", str(ids), "--deadline", "3", "--concurrency", "1", env=cli_env(exchange)
    )
    assert run.returncode == 1, run.stderr
    assert "The exchange answered HTTP 429 (slow down) 3 time(s)" in run.stdout
    assert exchange.open_stop_orders() == {final}


async def test_verbose_logs_count_repeats_instead_of_a_line_per_order(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """-v on 200 orders that each need a retry: a few log lines and a count, not 200 lines."""

    def orders_needing_a_retry() -> str:
        order_ids = exchange.add_stop_orders(200, account_id=ACCOUNT)
        for order_id in order_ids:
            exchange.inject_for(order_id, Fault.error(503))
        return str(write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in order_ids]))

    verbose = await run_cli("kill", "--ids", orders_needing_a_retry(), "-v", env=cli_env(exchange))
    assert verbose.returncode == 0, verbose.stderr
    assert len(verbose.stderr.splitlines()) < 20
    left_out = re.findall(r"-v left out (\d+) more log record", verbose.stderr)
    assert sum(map(int, left_out)) >= 190

    debug = await run_cli("kill", "--ids", orders_needing_a_retry(), "-vv", env=cli_env(exchange))
    assert debug.returncode == 0, debug.stderr
    assert len(debug.stderr.splitlines()) >= 200  # -vv shows every record


@pytest.mark.parametrize("verbose", ["-v", "-vv"])
async def test_asyncstop_log_and_verbose_together_write_each_record_once(
    exchange: FakeExchange, verbose: str
) -> None:
    """ASYNCSTOP_LOG=debug with -v or -vv: one stderr handler, so every record appears once."""
    order_ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    env = cli_env(exchange, {"ASYNCSTOP_LOG": "debug"})
    run = await run_cli("cancel", verbose, *order_ids, env=env)
    assert run.returncode == 0, run.stderr
    done = [line for line in run.stderr.splitlines() if "bulk cancel done" in line]
    assert len(done) == 1, run.stderr
    assert TOKEN not in run.stderr


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


@pytest.mark.parametrize(
    "args",
    [["fake-exchange", "--port", "99999"], ["fake-exchange", "--orders", "many"]],
    ids=["port", "orders"],
)
async def test_fake_exchange_argument_error_is_one_line_and_exit_2(args: list[str]) -> None:
    """A bad fake-exchange flag reads like every other usage error: one line, exit 2."""
    run = await run_cli(*args, env=cli_env())
    assert run.returncode == 2
    [line] = run.stderr.splitlines()
    assert line.startswith(f"asyncstop: error: argument {args[1]}: ")


async def test_fake_exchange_help_shows_defaults() -> None:
    """`fake-exchange --help` states each flag's default."""
    run = await run_cli("fake-exchange", "--help", env=cli_env())
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    for default in ("(default: 8080)", "(default: 1000)", "(default: 0)"):
        assert default in text


def _demo_part_2(stdout: str) -> tuple[int, int, int]:
    """From part 2 of the demo's output: the exchange's live stops before and after, and the
    watchdog's pid."""
    before = re.search(r"live stops before the kill: ([\d,]+) \(exchange's count\)", stdout)
    after = re.search(r"live stops after: ([\d,]+) \(exchange's count\)", stdout)
    watchdog = re.search(r"watchdog  pid (\d+),", stdout)
    assert before, stdout
    assert after, stdout
    assert watchdog, stdout
    return (
        int(before[1].replace(",", "")),
        int(after[1].replace(",", "")),
        int(watchdog[1]),
    )


def _has_ended(pid: int) -> bool:
    """True when process ``pid`` has exited (a zombie nobody reaped yet counts as exited)."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return True
    try:
        readable, _, _ = select.select([fd], [], [], 0)
    finally:
        os.close(fd)
    return bool(readable)


async def test_demo_cancels_everything(tmp_path: Path) -> None:
    """`demo` needs no settings and exits 0; the exchange shows 0 live orders after the kill
    switch, and after the SIGKILLed bot's watchdog, which has exited; its temp dir is gone."""
    env = cli_env(extra={"TMPDIR": str(tmp_path)})
    run = await run_cli("demo", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "The exchange's own view: 0 live stop orders." in run.stdout
    assert "2,000 live stop orders over 2 account(s)" in run.stdout
    assert "dies (SIGKILL) with 200 live stops in it; its watchdog keeps going" in run.stdout
    assert "the watchdog still running, still trying" in run.stdout  # during the outage
    before, after, watchdog_pid = _demo_part_2(run.stdout)
    assert (before, after) == (200, 0)
    assert re.search(
        r"bot killed \(SIGKILL\) at \+0 ms; first DELETE at \+\d+ ms; "
        r"exchange recovered at \+\d+ ms; last cancel at \+\d+ ms",
        run.stdout,
    ), run.stdout
    assert re.search(r"(Both|All three) parts leave 0 live stop orders on the exchange", run.stdout)
    assert _has_ended(watchdog_pid)
    assert os.listdir(tmp_path) == []  # the registry, the report and the log are removed
    assert run.stderr == ""  # the bot's and the watchdog's log stay out of sight


async def test_demo_orders_count_per_account_like_fake_exchange() -> None:
    """`demo --orders N --accounts A` seeds N orders on each account, as fake-exchange does;
    --bot-orders sets how many stops the killed bot holds."""
    run = await run_cli(
        "demo", "--orders", "7", "--accounts", "3", "--bot-orders", "30", env=cli_env()
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "21 live stop orders over 3 account(s)" in run.stdout
    assert "pending-out" not in run.stdout + run.stderr  # the demo has no such flag
    assert _demo_part_2(run.stdout)[:2] == (30, 0)


async def test_demo_without_rich_runs_both_parts(tmp_path: Path) -> None:
    """With rich missing, `demo --progress` prints the install hint and still runs both parts."""
    blocker = tmp_path / "no_rich" / "rich"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('rich is blocked by the test')\n")
    env = cli_env()
    env["PYTHONPATH"] = os.pathsep.join([str(blocker.parent), str(REPO)])
    run = await run_cli("demo", "--orders", "5", "--bot-orders", "10", "--progress", env=env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stderr.count("pip install 'asyncstop[cli]'") == 1
    assert _demo_part_2(run.stdout)[:2] == (10, 0)
    assert re.search(r"(Both|All three) parts leave 0 live stop orders on the exchange", run.stdout)


async def test_help_groups_the_exchange_settings_and_explains_order_id() -> None:
    """`cancel --help`: ORDER_ID has a help line, the token flags sit with the other exchange
    settings, and the exit statuses are listed."""
    run = await run_cli("cancel", "--help", env=cli_env())
    assert run.returncode == 0
    sections = {block.split(":", 1)[0]: block for block in run.stdout.split("\n\n") if ":" in block}
    assert "ACCOUNT_ID,ORDER_ID" in sections["positional arguments"]
    for flag in ("--base-url", "--account-id", "--token-file", "--token ", "--no-preflight"):
        assert flag in sections["exchange"], flag
    assert "--token" not in sections["options"]
    assert "3 most orders not found" in " ".join(run.stdout.split())


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


# -- preflight, the not-found warning, hedging, registries ---------------------------------------


async def test_a_refused_token_fails_the_preflight_and_sends_nothing(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """A token the exchange refuses: one line, exit 2, no DELETE, every order in --pending-out."""
    ids = exchange.add_stop_orders(5, account_id=ACCOUNT)
    left = tmp_path / "left.txt"
    env = cli_env(exchange, {"ASYNCSTOP_TOKEN": "NOT-THE-TOKEN"})
    run = await run_cli("cancel", *ids, "--pending-out", str(left), env=env)
    assert run.returncode == 2
    assert run.stderr.count("\n") == 1
    assert "preflight failed" in run.stderr
    assert "401" in run.stderr
    assert exchange.requests("DELETE") == []
    assert len(left.read_text().splitlines()) == 5


async def test_an_account_the_token_may_not_use_fails_the_preflight(
    tmp_path: Path,
) -> None:
    """kill with an account not listed for the token: exit 2 naming it, nothing sent."""
    async with FakeExchange(tokens={TOKEN: ["acc-1"]}, seed=3) as exchange:
        ids = exchange.add_stop_orders(3, account_id="acc-1")
        items = [("acc-1", ids[0]), ("acc-9", ids[1])]
        run = await run_cli(
            "kill", "--ids", str(write_ids(tmp_path / "ids.txt", items)), env=cli_env(exchange)
        )
        assert run.returncode == 2
        assert "'acc-9'" in run.stderr
        assert exchange.requests("DELETE") == []


async def test_the_preflight_comes_before_any_delete(exchange: FakeExchange) -> None:
    """`cancel` asks GET /accounts once, before its first DELETE."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    run = await run_cli("cancel", *ids, env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert [entry.method for entry in exchange.journal] == ["GET", "DELETE", "DELETE", "DELETE"]


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        (Fault.error(404), "404"),
        (Fault.reply(200, b"<html>login</html>", {"Content-Type": "text/html"}), "text/html"),
    ],
    ids=["base-url-off-the-api", "html-page"],
)
async def test_a_base_url_off_the_api_fails_the_preflight(
    exchange: FakeExchange, tmp_path: Path, fault: Fault, expected: str
) -> None:
    """GET /accounts answered by something that is not the API: one line, exit 2, no DELETE."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    exchange.inject_accounts(fault)
    path = write_ids(tmp_path / "ids.txt", [(ACCOUNT, oid) for oid in ids])
    run = await run_cli("kill", "--ids", str(path), env=cli_env(exchange))
    assert run.returncode == 2, run.stdout + run.stderr
    [line] = run.stderr.splitlines()
    assert line.startswith("asyncstop: error: preflight failed: ")
    assert expected in line
    assert exchange.requests("DELETE") == []
    assert exchange.open_stop_orders() == set(ids)


async def test_no_preflight_skips_a_blocked_accounts_endpoint(exchange: FakeExchange) -> None:
    """--no-preflight: a gateway answering 403 to GET /accounts does not stop the cancels."""
    ids = exchange.add_stop_orders(3, account_id=ACCOUNT)
    exchange.inject_accounts(Fault.error(403))
    blocked = await run_cli("cancel", *ids, env=cli_env(exchange))
    assert blocked.returncode == 2
    run = await run_cli("cancel", "--no-preflight", *ids, env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert exchange.open_stop_orders() == set()


async def test_a_wrong_account_id_exits_3_with_the_likely_causes(exchange: FakeExchange) -> None:
    """Every order not found and none cancelled: one warning naming the causes, exit 3."""
    ids = exchange.add_stop_orders(4, account_id=ACCOUNT)
    env = cli_env(exchange, {"ASYNCSTOP_ACCOUNT_ID": "acc-2"})
    run = await run_cli("cancel", "--no-preflight", *ids, env=env)
    assert run.returncode == 3
    assert "account id" in run.stderr
    assert "base URL" in run.stderr
    assert exchange.open_stop_orders() == set(ids)
    for line in run.stdout.splitlines():  # each line says what not_found means here
        assert line.split()[1:2] == ["not_found"]
        assert "no live stop order with this id on this account" in line


@pytest.mark.parametrize("value", ["sometimes", "0", "-1", "inf"])
async def test_a_bad_hedge_value_is_a_usage_error(exchange: FakeExchange, value: str) -> None:
    """--hedge takes auto, off or seconds > 0; anything else is refused before sending."""
    run = await run_cli("cancel", "--hedge", value, "X1", env=cli_env(exchange))
    assert run.returncode == 2
    assert exchange.requests("DELETE") == []


async def test_kill_registry_cancels_what_a_dead_bot_left_and_updates_it(
    exchange: FakeExchange, tmp_path: Path
) -> None:
    """kill --registry cancels every registered order and leaves the registry empty."""
    ids = exchange.add_stop_orders(30, account_id=ACCOUNT)
    path = tmp_path / "stops.db"
    with asyncstop.StopOrderRegistry.open(path) as registry:
        for order_id in ids[:20]:
            registry.add(order_id)
        for order_id in ids[20:]:
            registry.add(order_id, account_id=ACCOUNT)
    run = await run_cli("kill", "--registry", str(path), "--hedge", "auto", env=cli_env(exchange))
    assert run.returncode == 0, run.stderr
    assert exchange.open_stop_orders() == set()
    with asyncstop.StopOrderRegistry.open(path) as reopened:
        assert len(reopened) == 0
