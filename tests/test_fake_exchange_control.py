"""The fake exchange's control surface (``_control``): counts, new orders, faults, from a shell."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from asyncstop.testing import FakeExchange, Fault, Faults, LongTailLatency, wait_until
from asyncstop.testing._control import is_loopback_address, is_loopback_host

from .helpers import (
    ACCOUNTS_PATH,
    DISCONNECTED,
    TOKEN,
    WAIT_LIMIT,
    documented_headers,
    process_exited,
    raw_delete,
    raw_get_accounts,
    read_description,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
RECIPE = REPO_ROOT / "docs" / "fake-exchange.md"
#: Every fault off, as GET /_fake/faults shows it.
NO_FAULTS = {
    "outage": None,
    "latency": 0.0,
    "rate_limited": 0.0,
    "retry_after": 1.0,
    "error_before": 0.0,
    "error_after": 0.0,
    "drop_before": 0.0,
    "drop_after": 0.0,
    "hang": 0.0,
    "error_status": 503,
}


async def control(
    session: aiohttp.ClientSession,
    base_url: str,
    method: str,
    path: str,
    body: object = None,
    *,
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    """One control request; return (status, decoded JSON body)."""
    data = None if body is None else json.dumps(body).encode()
    async with session.request(
        method, f"{base_url}/_fake/{path}", data=data, headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.fixture
async def exchange() -> AsyncIterator[FakeExchange]:
    """A fake exchange with its control surface, no pause grace, two accounts of orders."""
    async with FakeExchange(tokens={TOKEN}, seed=3, pause_grace=0) as fake:
        fake.add_stop_orders(4, account_id="acc-1")
        fake.add_stop_orders(2, account_id="acc-2")
        yield fake


# -- counts and new orders --------------------------------------------------------------


async def test_counts_show_live_and_cancelled_orders_per_account(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """GET /_fake/accounts[/id] counts each account's live and cancelled stops as they change."""
    exchange.add_account("acc-empty")
    first = sorted(exchange.open_stop_orders("acc-1"))[0]
    assert (await raw_delete(session, exchange, first))[0] == 200
    assert await control(session, exchange.base_url, "GET", "accounts") == (
        200,
        {
            "accounts": [
                {"account_id": "acc-1", "live": 3, "cancelled": 1},
                {"account_id": "acc-2", "live": 2, "cancelled": 0},
                {"account_id": "acc-empty", "live": 0, "cancelled": 0},
            ]
        },
    )
    assert await control(session, exchange.base_url, "GET", "accounts/acc-1") == (
        200,
        {"account_id": "acc-1", "live": 3, "cancelled": 1},
    )
    status, body = await control(session, exchange.base_url, "GET", "accounts/acc-9")
    assert status == 404
    assert "acc-9" in body["error"]


async def test_posted_orders_are_live_and_cancellable(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """POST .../orders adds live stops (a count, 1 by default, or given ids) a cancel then finds."""
    status, body = await control(
        session, exchange.base_url, "POST", "accounts/acc-new/orders", {"count": 3}
    )
    assert status == 201
    assert body["account_id"] == "acc-new"
    assert set(body["order_ids"]) == exchange.open_stop_orders("acc-new")
    assert len(body["order_ids"]) == 3
    _, one = await control(session, exchange.base_url, "POST", "accounts/acc-new/orders")
    assert len(one["order_ids"]) == 1
    status, given = await control(
        session, exchange.base_url, "POST", "accounts/acc-1/orders", {"order_ids": ["A1", "A2"]}
    )
    assert (status, given) == (201, {"account_id": "acc-1", "order_ids": ["A1", "A2"]})
    assert {"A1", "A2"} <= exchange.open_stop_orders("acc-1")
    headers = documented_headers("acc-new")
    assert (await raw_delete(session, exchange, body["order_ids"][0], headers))[0] == 200
    assert len(exchange.open_stop_orders("acc-new")) == 3


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"count": 2, "order_ids": ["B1"]}, "either count or order_ids"),
        ({"order_ids": ["B1", "B1"]}, "repeats"),
        ({"order_ids": ["B1", "A1"]}, "already exists"),
        ({"order_ids": ["B1", "a/b"]}, "without '/'"),
        ({"count": -1}, "count must be"),
        ({"count": 10**9}, "count must be"),
        ({"count": True}, "Expected `int | null`"),
        ({"amount": 3}, "unknown field"),
    ],
)
async def test_a_bad_order_request_is_refused_and_adds_nothing(
    session: aiohttp.ClientSession, exchange: FakeExchange, body: object, message: str
) -> None:
    """A POST .../orders the exchange cannot follow gets 400 saying why, and adds no order."""
    exchange.add_stop_order("acc-1", order_id="A1")
    before = set(exchange.orders)
    status, answer = await control(
        session, exchange.base_url, "POST", "accounts/acc-1/orders", body
    )
    assert status == 400
    assert message in answer["error"]
    assert set(exchange.orders) == before


# -- faults switched on and off ----------------------------------------------------------


async def test_an_outage_answers_every_request_503_and_cancels_nothing(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """{"outage": 503}: cancels and GET /accounts get 503 whatever the token; DELETE ends it."""
    live = exchange.open_stop_orders("acc-1")
    order_id = sorted(live)[0]
    status, faults = await control(session, exchange.base_url, "PUT", "faults", {"outage": 503})
    assert (status, faults) == (200, NO_FAULTS | {"outage": 503})
    assert (await raw_delete(session, exchange, order_id))[0] == 503
    refused = documented_headers(token="not-accepted")
    assert (await raw_delete(session, exchange, order_id, refused))[0] == 503
    assert (await raw_get_accounts(session, exchange))[0] == 503
    assert exchange.open_stop_orders("acc-1") == live
    assert exchange.outage == Fault.error(503)
    assert await control(session, exchange.base_url, "DELETE", "faults") == (200, NO_FAULTS)
    assert (await raw_delete(session, exchange, order_id))[0] == 200
    assert [(e.method, e.status, e.outcome) for e in exchange.journal] == [
        ("DELETE", 503, "error_before"),
        ("DELETE", 503, "error_before"),
        ("GET", 503, "error_before"),
        ("DELETE", 200, "cancelled"),
    ]


async def test_a_dropping_outage_closes_connections_without_an_answer(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """{"outage": "drop"}: every cancel's connection closes unanswered and the order stays live."""
    order_id = sorted(exchange.open_stop_orders("acc-1"))[0]
    await control(session, exchange.base_url, "PUT", "faults", {"outage": "drop"})
    with pytest.raises(DISCONNECTED):
        await raw_delete(session, exchange, order_id)
    assert order_id in exchange.open_stop_orders()
    [entry] = exchange.journal
    assert (entry.status, entry.outcome) == (None, "dropped_before")


async def test_a_hanging_outage_holds_requests_until_the_exchange_closes(
    session: aiohttp.ClientSession,
) -> None:
    """exchange.outage = Fault.hang(): requests stay in flight, unanswered, until close()."""
    exchange = FakeExchange(tokens={TOKEN})
    await exchange.start()
    order_id = exchange.add_stop_order()
    exchange.outage = Fault.hang()
    request = asyncio.create_task(raw_delete(session, exchange, order_id))
    try:
        await wait_until(lambda: exchange.in_flight == 1, timeout=WAIT_LIMIT)
    finally:
        await exchange.close()
    with pytest.raises(DISCONNECTED):
        await request
    assert order_id in exchange.open_stop_orders()


async def test_429s_with_retry_after_pause_the_account(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """{"rate_limited": 1, "retry_after": 30}: 429 with that Retry-After; a request inside is a
    violation; another account is not paused."""
    first, second = sorted(exchange.open_stop_orders("acc-1"))[:2]
    await control(
        session, exchange.base_url, "PUT", "faults", {"rate_limited": 1.0, "retry_after": 30}
    )
    status, headers, body = await raw_delete(session, exchange, first)
    assert (status, headers["Retry-After"], json.loads(body)["errorCode"]) == (429, "30", 10029)
    await control(session, exchange.base_url, "DELETE", "faults")
    assert (await raw_delete(session, exchange, second))[0] == 429  # still paused
    assert [e.order_id for e in exchange.pause_violations] == [second]
    other = sorted(exchange.open_stop_orders("acc-2"))[0]
    assert (await raw_delete(session, exchange, other, documented_headers("acc-2")))[0] == 200
    assert exchange.open_stop_orders("acc-1") >= {first, second}


async def test_latency_holds_each_answer_back(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """{"latency": 0.2}: each cancel is answered no sooner than 0.2 s after it arrived."""
    await control(session, exchange.base_url, "PUT", "faults", {"latency": 0.2})
    order_id = sorted(exchange.open_stop_orders("acc-1"))[0]
    assert (await raw_delete(session, exchange, order_id))[0] == 200
    [entry] = exchange.journal
    assert entry.duration >= 0.2


async def test_put_replaces_every_fault_and_get_shows_them(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """PUT sets the whole fault state (what it leaves out is off), including a long tail."""
    settings = {"error_after": 0.1, "drop_before": 0.2, "hang": 0.05, "error_status": 502}
    status, faults = await control(session, exchange.base_url, "PUT", "faults", settings)
    assert (status, faults) == (200, NO_FAULTS | settings)
    assert exchange.faults == Faults(error_after=0.1, drop_before=0.2, hang=0.05, error_status=502)
    tail = {"median": 0.01, "p99": 0.1}
    _, faults = await control(session, exchange.base_url, "PUT", "faults", {"latency": tail})
    assert faults == NO_FAULTS | {"latency": tail | {"max": 1.0}}
    assert exchange.faults == Faults(latency=LongTailLatency(0.01, 0.1, 1.0))
    assert await control(session, exchange.base_url, "GET", "faults") == (200, faults)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"outage": 200}, "4xx or 5xx"),
        ({"outage": "down"}, "Invalid enum value"),
        ({"error_before": 0.7, "drop_after": 0.5}, "add up"),
        ({"rate_limited": 2}, "probability"),
        ({"retry_after": -1}, "retry_after"),
        ({"latency": {"median": 0.5, "p99": 0.1}}, "p99"),
        ({"latency": 0.1, "delay": 1}, "unknown field"),
        ("not an object", "Expected `object`"),
    ],
)
async def test_impossible_faults_are_refused_and_change_nothing(
    session: aiohttp.ClientSession, exchange: FakeExchange, body: object, message: str
) -> None:
    """A PUT /_fake/faults the exchange cannot follow gets 400 saying why; the faults stay."""
    await control(session, exchange.base_url, "PUT", "faults", {"latency": 0.01})
    status, answer = await control(session, exchange.base_url, "PUT", "faults", body)
    assert status == 400
    assert message in answer["error"]
    assert exchange.faults == Faults(latency=0.01)
    assert exchange.outage is None


def test_only_an_error_drop_or_hang_cancelling_nothing_is_an_outage() -> None:
    """exchange.outage refuses faults that would cancel or answer oddly."""
    exchange = FakeExchange(tokens={TOKEN})
    for fault in (Fault.error(503, after=True), Fault.drop(after=True), Fault.reply(200, b"")):
        with pytest.raises(ValueError, match="outage"):
            exchange.outage = fault
    with pytest.raises(TypeError, match="Fault"):
        exchange.outage = 503  # type: ignore[assignment]
    exchange.outage = Fault.drop()
    exchange.outage = None
    assert exchange.outage is None


# -- what the surface is not -----------------------------------------------------------------


async def test_control_requests_need_no_token_and_stay_out_of_the_journal(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """Control requests are answered without a token, and neither journaled nor faulted."""
    await control(session, exchange.base_url, "PUT", "faults", {"outage": "drop"})
    assert (await control(session, exchange.base_url, "GET", "accounts"))[0] == 200
    assert exchange.journal == []
    assert exchange.requests_numbered == 0


async def test_unknown_paths_and_methods_are_refused_with_the_list(
    session: aiohttp.ClientSession, exchange: FakeExchange
) -> None:
    """An unknown control path gets 404 listing the endpoints; a wrong method 405 with Allow."""
    status, body = await control(session, exchange.base_url, "GET", "orders")
    assert status == 404
    assert "POST /_fake/accounts/{account_id}/orders" in body["error"]
    async with session.post(f"{exchange.base_url}/_fake/faults") as response:
        assert (response.status, response.headers["Allow"]) == (405, "GET, PUT, DELETE")
    async with session.delete(f"{exchange.base_url}/_fake/accounts") as response:
        assert (response.status, response.headers["Allow"]) == (405, "GET")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "192.168.1.7", "[fe80::1]"])
async def test_a_request_naming_another_host_is_refused(
    session: aiohttp.ClientSession, exchange: FakeExchange, host: str
) -> None:
    """A Host header that is not a loopback name (DNS rebinding from a browser) gets 403."""
    headers = {"Host": host}
    status, body = await control(
        session, exchange.base_url, "PUT", "faults", {"outage": 503}, headers=headers
    )
    assert status == 403
    assert "loopback" in body["error"]
    assert exchange.outage is None


@pytest.mark.parametrize("host", ["localhost", "LOCALHOST:8080", "127.0.0.1:1", "[::1]:80"])
async def test_a_request_naming_a_loopback_host_is_answered(
    session: aiohttp.ClientSession, exchange: FakeExchange, host: str
) -> None:
    """localhost, 127.0.0.1 and [::1], with or without a port, are loopback names."""
    assert (await control(session, exchange.base_url, "GET", "faults", headers={"Host": host}))[
        0
    ] == 200


@pytest.mark.parametrize(
    ("peer", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("::ffff:127.0.0.1", True),
        ("10.0.0.1", False),
        ("::ffff:10.0.0.1", False),
        ("fe80::1%eth0", False),
        ("localhost", False),
        ("", False),
        (None, False),
    ],
)
def test_only_loopback_peers_are_loopback(peer: str | None, loopback: bool) -> None:
    """The peer check takes loopback addresses only (IPv4-mapped ones included), never names."""
    assert is_loopback_address(peer) is loopback


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost:8080", True),
        ("[::1]:8080", True),
        ("127.0.0.1", True),
        (None, True),  # no Host header: not a browser
        ("localhost.evil.example", False),
        ("127.0.0.1.evil.example:80", False),
        ("[::1", False),
        ("", False),
    ],
)
def test_only_loopback_names_are_loopback_hosts(host: str | None, loopback: bool) -> None:
    """The Host check takes loopback names and addresses, with or without a port, nothing else."""
    assert is_loopback_host(host) is loopback


async def test_without_the_control_surface_its_paths_are_the_apis(
    session: aiohttp.ClientSession,
) -> None:
    """FakeExchange(control=False): /_fake/ paths are API requests, journaled, not answered 200."""
    async with FakeExchange(tokens={TOKEN}, control=False) as exchange:
        async with session.get(f"{exchange.base_url}/_fake/accounts") as response:
            assert response.status != 200
        assert [e.path for e in exchange.requests("GET")] == ["/_fake/accounts"]


# -- from the shell ------------------------------------------------------------------------


def command_env() -> dict[str, str]:
    """The environment of the commands these tests start: this repository's asyncstop first."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCSTOP_")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")])
    return env


async def start_fake_exchange(
    argv: list[str], cwd: Path
) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    """Start a fake exchange command; return it and the settings it printed."""
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=command_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            settings = await read_description(process.stdout)
    except BaseException:
        await stop(process)
        raise
    return process, settings


async def stop(process: asyncio.subprocess.Process) -> None:
    """End a process this test started, by its own handle, and reap it."""
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.mark.parametrize(
    "command", [["-m", "asyncstop.testing"], ["-m", "asyncstop", "fake-exchange"]]
)
async def test_the_command_prints_its_control_url_and_obeys_it(
    session: aiohttp.ClientSession, tmp_path: Path, command: list[str]
) -> None:
    """Both commands print the control URL; counts, new orders and an outage work through it."""
    (tmp_path / "token.txt").write_text(f"{TOKEN}\n", encoding="utf-8")
    argv = [sys.executable, *command, "--port", "0", "--orders", "2", "--token-file", "token.txt"]
    process, settings = await start_fake_exchange(argv, tmp_path)
    try:
        base_url, url = settings["base_url"], settings["control"]
        assert url == base_url + "/_fake"
        assert settings["token"] == TOKEN
        assert settings["accounts"] == "acc-1"
        async with session.get(f"{url}/accounts/acc-1") as response:
            assert await response.json() == {"account_id": "acc-1", "live": 2, "cancelled": 0}
        async with session.post(f"{url}/accounts/acc-1/orders", data=b'{"count": 3}') as response:
            [order_id, *_] = (await response.json())["order_ids"]
        async with session.put(f"{url}/faults", data=b'{"outage": 503}') as response:
            assert response.status == 200
        cancel = f"{base_url}/frontoffice/api/v3/stop-orders/{order_id}"
        async with session.delete(cancel, headers=documented_headers()) as response:
            assert response.status == 503
        async with session.delete(f"{url}/faults") as response:
            assert response.status == 200
        async with session.delete(cancel, headers=documented_headers()) as response:
            assert response.status == 200
        async with session.get(f"{url}/accounts") as response:
            counts = (await response.json())["accounts"]
        assert counts == [{"account_id": "acc-1", "live": 4, "cancelled": 1}]
        async with session.get(base_url + ACCOUNTS_PATH, headers=documented_headers()) as response:
            assert response.status == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
        assert process.returncode == 0, stderr.decode()
    finally:
        await stop(process)


@pytest.mark.parametrize(
    ("files", "args", "message"),
    [
        ({"token.txt": "\n"}, ["--token-file", "token.txt"], "is empty"),
        ({}, ["--token-file", "missing.txt"], "cannot read --token-file"),
        ({"token.txt": "t"}, ["--token-file", "token.txt", "--token", "t"], "not allowed with"),
    ],
)
def test_a_token_file_that_cannot_serve_is_one_error_line(
    tmp_path: Path, files: dict[str, str], args: list[str], message: str
) -> None:
    """An empty or missing --token-file, or one beside --token, exits 2 with one error line."""
    for name, text in files.items():
        (tmp_path / name).write_text(text, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "asyncstop.testing", "--port", "0", *args],
        cwd=tmp_path,
        env=command_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert "Traceback" not in done.stderr


# -- the recipe of docs/fake-exchange.md, run as written -----------------------------------


def recipe_blocks() -> list[tuple[str, str]]:
    """The fenced blocks of the recipe section of docs/fake-exchange.md, as (language, text)."""
    text = RECIPE.read_text(encoding="utf-8")
    recipe = text[text.index("## Recipe") :]
    return re.findall(r"^```(\w*)\n(.*?)^```", recipe, flags=re.MULTILINE | re.DOTALL)


def commands(block: str) -> list[list[str]]:
    """The commands of a shell block, one argument list per line."""
    return [shlex.split(line) for line in block.splitlines() if line.strip()]


class Shell:
    """Runs the recipe's commands in one directory, with this run's port and pids."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.port = "8080"
        self.pids: dict[str, str] = {}
        self._last_curl = 0.0
        self._last_answer = ""

    def argv(self, words: list[str]) -> list[str]:
        """The words with the recipe's port and pids replaced by this run's."""
        words = [self.pids.get(word, word) for word in words]
        words = [word.replace(":8080", f":{self.port}") for word in words]
        if words[0] == "asyncstop":
            return [sys.executable, "-m", "asyncstop", *words[1:]]
        if words[0] == "python":
            return [sys.executable, *words[1:]]
        return words

    def run(self, words: list[str]) -> str:
        """Run one short command (``echo ... > file`` through sh); return its output."""
        if ">" in words:
            argv = ["sh", "-c", shlex.join(words[: words.index(">")]) + " > " + words[-1]]
        else:
            argv = self.argv(words)
        done = subprocess.run(
            argv,
            cwd=self.cwd,
            env=command_env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, (argv, done.stderr)
        return done.stdout.strip()

    def answers(self, words: list[str], expected: str) -> Callable[[], bool]:
        """For wait_until: whether the curl command (run at most every 0.2 s) says ``expected``."""
        loop = asyncio.get_running_loop()

        def check() -> bool:
            if loop.time() - self._last_curl >= 0.2:
                self._last_curl = loop.time()
                self._last_answer = self.run(words)
            return self._last_answer == expected

        return check


async def start_bot(
    shell: Shell, words: list[str], pid_placeholders: list[str]
) -> tuple[asyncio.subprocess.Process, int]:
    """Run ``python my_bot.py``; return it and its watchdog's pid once its stops are registered."""
    # Its stderr to a file: the watchdog inherits it and outlives the bot.
    log = shell.cwd / "bot.log"
    with log.open("ab") as stderr:
        bot = await asyncio.create_subprocess_exec(
            *shell.argv(words),
            cwd=shell.cwd,
            env=command_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
        )
    assert bot.stdout is not None
    try:
        async with asyncio.timeout(60):
            line = (await bot.stdout.readline()).decode()
        match = re.fullmatch(r"bot (\d+), watchdog (\d+): 3 stops registered\n", line)
        assert match, line + log.read_text(encoding="utf-8", errors="replace")
    except BaseException:
        await stop(bot)
        raise
    for placeholder in pid_placeholders:
        shell.pids[placeholder] = match[1]
    return bot, int(match[2])


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="waits for the watchdog with a pidfd")
@pytest.mark.timeout(240)
async def test_the_recipe_kill_9_then_the_count_goes_to_0(tmp_path: Path) -> None:
    """docs/fake-exchange.md's recipe as written: a bot with a watchdog, kill -9, the live
    count to 0 as curl shows it; then again through an outage, once the exchange is back."""
    blocks = recipe_blocks()
    languages = [language for language, _ in blocks]
    assert languages == ["sh", "python", "sh", "text", "sh", "text", "sh", "text"]
    exchange_block, bot_source, run_bot, _, watch, counts, outage, outage_counts = (
        text for _, text in blocks
    )
    shell = Shell(tmp_path)
    echo, serve = commands(exchange_block)
    shell.run(echo)
    serve = [("0" if word == "8080" else word) for word in serve]
    exchange, settings = await start_fake_exchange(shell.argv(serve), tmp_path)
    watchdogs: list[int] = []
    try:
        shell.port = settings["base_url"].rsplit(":", 1)[1]
        (tmp_path / "my_bot.py").write_text(
            bot_source.replace(":8080", f":{shell.port}"), encoding="utf-8"
        )
        [bot_command] = commands(run_bot)
        kill_placeholders = [
            words[2] for words in commands(watch) + commands(outage) if words[0] == "kill"
        ]

        # The count, the kill, the count.
        bot, watchdog_pid = await start_bot(shell, bot_command, kill_placeholders[:1])
        watchdogs.append(watchdog_pid)
        try:
            curl, kill, curl_again = commands(watch)
            live, gone = counts.splitlines()
            assert shell.run(curl) == live
            shell.run(kill)
            assert await bot.wait() == -signal.SIGKILL
            await wait_until(shell.answers(curl_again, gone), timeout=60)
        finally:
            await stop(bot)
        await asyncio.wait_for(process_exited(watchdog_pid), 60)  # settled: it exits
        watchdogs.remove(watchdog_pid)

        # Again, with the exchange down when the bot dies.
        bot, watchdog_pid = await start_bot(shell, bot_command, kill_placeholders[1:])
        watchdogs.append(watchdog_pid)
        try:
            down, kill, curl, back, curl_again = commands(outage)
            still_live, gone = outage_counts.splitlines()
            shell.run(down)
            shell.run(kill)
            assert await bot.wait() == -signal.SIGKILL
            assert shell.run(curl) == still_live
            shell.run(back)
            await wait_until(shell.answers(curl_again, gone), timeout=120)
        finally:
            await stop(bot)
        await asyncio.wait_for(process_exited(watchdog_pid), 60)
        watchdogs.remove(watchdog_pid)
    finally:
        for pid in watchdogs:  # one not seen to exit would retry for an hour
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await stop(exchange)
