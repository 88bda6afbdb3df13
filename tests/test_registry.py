"""StopOrderRegistry: the same interface in memory and in SQLite, durable across kills."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from asyncstop import (
    CancelOutcome,
    CancelReport,
    CancelResult,
    InvalidInputError,
    StopOrderRegistry,
)


@pytest.fixture(params=["memory", "sqlite"])
def registry(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StopOrderRegistry]:
    """An empty registry, in memory or in an SQLite file."""
    if request.param == "memory":
        yield StopOrderRegistry()
    else:
        with StopOrderRegistry.open(tmp_path / "stops.db") as durable:
            yield durable


def test_add_discard_snapshot_and_membership(registry: StopOrderRegistry) -> None:
    """Orders come back in the order added, as bulk-cancel items, until discarded."""
    registry.add("A1")
    registry.add("B1", account_id="acc-2")
    registry.add("C1")
    registry.add("A1")  # again: still one entry, in its first place
    assert registry.snapshot() == ["A1", ("acc-2", "B1"), "C1"]
    assert list(registry) == registry.snapshot()
    assert len(registry) == 3
    assert "A1" in registry
    assert ("acc-2", "B1") in registry
    assert "B1" not in registry  # registered under acc-2, not the client's account
    assert 42 not in registry
    registry.discard("B1")  # not the entry of acc-2
    registry.discard("B1", account_id="other")
    assert ("acc-2", "B1") in registry
    registry.discard("B1", account_id="acc-2")
    registry.discard("never-added")
    assert registry.snapshot() == ["A1", "C1"]


def test_an_order_id_is_unique_per_account(registry: StopOrderRegistry) -> None:
    """The same id under two accounts is two entries; discarding one keeps the other."""
    registry.add("X1", account_id="acc-1")
    registry.add("X1", account_id="acc-2")
    registry.add("X1")
    assert len(registry) == 3
    registry.discard("X1", account_id="acc-1")
    assert registry.snapshot() == [("acc-2", "X1"), "X1"]


def test_discard_settled_also_forgets_the_entry_without_account(
    registry: StopOrderRegistry,
) -> None:
    """A result for the client's account settles the bare entry too, and nothing else."""
    registry.add("X1")
    registry.add("X1", account_id="acc-1")
    registry.add("X1", account_id="acc-2")
    registry.discard_settled("X1", "acc-1", default_account_id="acc-1")
    assert registry.snapshot() == [("acc-2", "X1")]
    registry.add("Y1")
    registry.discard_settled("Y1", "acc-2", default_account_id="acc-1")
    assert "Y1" in registry


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (("acc-1", "A1", "extra"), "pair, not tuple"),
        (42, "pair, not int"),
        (("acc-1", 7), "order id must be a str"),
        (("", "A1"), "account id"),
        ("a/b", "not allowed in a URL path"),
    ],
)
def test_bad_items_are_refused_with_a_clear_message(item: object, message: str) -> None:
    """A 3-tuple, an int or an unsafe id raises InvalidInputError naming the problem."""
    with pytest.raises(InvalidInputError, match=message):
        StopOrderRegistry([item])  # type: ignore[list-item]


def test_add_refuses_what_could_never_be_cancelled(registry: StopOrderRegistry) -> None:
    """add() refuses a non-str id, an unsafe id and an injected header, and records nothing."""
    with pytest.raises(InvalidInputError, match="order id must be a str, not int"):
        registry.add(42)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError, match="order id"):
        registry.add("a/b")
    with pytest.raises(InvalidInputError, match="account id"):
        registry.add("C1", account_id="x\r\ny")
    assert len(registry) == 0


def test_listeners_hear_every_add(registry: StopOrderRegistry) -> None:
    """A listener gets each added item until it is removed."""
    heard: list[object] = []
    registry.add_listener(heard.append)
    registry.add("A1")
    registry.add("B1", account_id="acc-2")
    registry.remove_listener(heard.append)
    registry.add("C1")
    assert heard == ["A1", ("acc-2", "B1")]


def test_a_durable_registry_survives_reopening(tmp_path: Path) -> None:
    """What was added (and not discarded) is there after close and reopen, also with FULL."""
    path = tmp_path / "stops.db"
    with StopOrderRegistry.open(path) as first:
        first.add("A1")
        first.add("B1", account_id="acc-2")
        first.add("C1")
        first.discard("C1")
    assert repr(first) == f"<StopOrderRegistry {str(path)!r} closed>"
    with StopOrderRegistry.open(path, synchronous="FULL") as second:
        assert second.snapshot() == ["A1", ("acc-2", "B1")]
        assert second.path == path
        assert repr(second) == f"<StopOrderRegistry {str(path)!r} 2 orders>"


def test_two_handles_on_one_file_see_each_others_writes(tmp_path: Path) -> None:
    """The bot's and the watchdog's handles share the file: an add or discard shows at once."""
    path = tmp_path / "stops.db"
    with StopOrderRegistry.open(path) as bot, StopOrderRegistry.open(path) as watchdog:
        bot.add("A1")
        assert "A1" in watchdog
        watchdog.discard_settled("A1", "acc-1", default_account_id="acc-1")
        assert len(bot) == 0


def test_a_closed_registry_says_so(tmp_path: Path) -> None:
    """Using a closed durable registry raises RuntimeError naming the file; close is idempotent."""
    registry = StopOrderRegistry.open(tmp_path / "stops.db")
    registry.close()
    registry.close()
    with pytest.raises(RuntimeError, match=r"stops\.db.* is closed"):
        registry.add("A1")


def test_bad_settings_and_foreign_files_are_refused(tmp_path: Path) -> None:
    """A wrong synchronous level, or an SQLite file of another schema, is refused on open."""
    with pytest.raises(InvalidInputError, match="synchronous"):
        StopOrderRegistry.open(tmp_path / "a.db", synchronous="OFF")  # type: ignore[arg-type]
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("PRAGMA user_version=7")
    conn.close()
    with pytest.raises(InvalidInputError, match="schema version 7"):
        StopOrderRegistry.open(other)


@pytest.mark.parametrize("busy_timeout", [math.inf, math.nan, -1.0, True, "5"])
def test_a_busy_timeout_that_is_not_finite_seconds_is_refused(
    tmp_path: Path, busy_timeout: object
) -> None:
    """busy_timeout must be finite seconds >= 0: inf, nan, negative, bool and str are refused."""
    with pytest.raises(InvalidInputError, match="busy_timeout"):
        StopOrderRegistry.open(tmp_path / "a.db", busy_timeout=busy_timeout)  # type: ignore[arg-type]
    assert not (tmp_path / "a.db").exists()


def _result(order_id: str, outcome: CancelOutcome, account_id: str = "acc-1") -> CancelResult:
    return CancelResult(order_id=order_id, account_id=account_id, outcome=outcome)


def test_forget_settled_forgets_what_is_gone_and_keeps_what_may_be_live(
    registry: StopOrderRegistry,
) -> None:
    """Cancelled, gone and not found orders leave; failed, unknown and not sent ones stay."""
    for order_id in ("C", "G", "N", "F", "U", "S"):
        registry.add(order_id)
    registry.add("X", account_id="acc-2")
    report = CancelReport(
        [
            _result("C", CancelOutcome.CANCELLED),
            _result("G", CancelOutcome.ALREADY_GONE),
            _result("N", CancelOutcome.NOT_FOUND),
            _result("F", CancelOutcome.FAILED),
            _result("U", CancelOutcome.UNKNOWN),
            _result("S", CancelOutcome.NOT_SENT),
            _result("X", CancelOutcome.CANCELLED, account_id="acc-2"),
        ],
        1.0,
    )
    forgotten = registry.forget_settled(report, default_account_id="acc-1")
    assert sorted(r.order_id for r in forgotten) == ["C", "G", "N", "X"]
    assert registry.snapshot() == ["F", "U", "S"]


def test_forget_settled_keeps_not_found_orders_under_the_warning(
    registry: StopOrderRegistry,
) -> None:
    """Most not found and none cancelled (a wrong account?): every not_found order stays."""
    ids = [f"N{i}" for i in range(4)]
    for order_id in [*ids, "G"]:
        registry.add(order_id)
    results = [_result(order_id, CancelOutcome.NOT_FOUND) for order_id in ids]
    report = CancelReport([*results, _result("G", CancelOutcome.ALREADY_GONE)], 1.0)
    assert report.warning is not None
    registry.forget_settled(report, default_account_id="acc-1")
    assert registry.snapshot() == ids


_WRITER = textwrap.dedent(
    """
    import os, sys
    from asyncstop import StopOrderRegistry
    registry = StopOrderRegistry.open(sys.argv[1])
    out = os.fdopen(1, "wb", buffering=0)
    n = 0
    while True:
        order_id = f"ORD{n:08d}"
        registry.add(order_id, account_id=f"acc-{n % 3}")
        if n % 5 == 4:
            registry.discard(f"ORD{n - 1:08d}", account_id=f"acc-{(n - 1) % 3}")
        out.write(f"{n}\\n".encode())  # the ack: add() (and any discard before it) returned
        n += 1
    """
)


def test_sigkill_during_adds_loses_no_acknowledged_add(tmp_path: Path) -> None:
    """A writer killed mid-stream leaves every acked add (and discard) in an intact file."""
    path = tmp_path / "stops.db"
    child = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert child.stdout is not None
    acked = -1
    try:
        while acked < 3000:
            line = child.stdout.readline()
            assert line, child.stderr.read().decode() if child.stderr else ""
            acked = int(line)
        os.kill(child.pid, signal.SIGKILL)
        # Acks already in the pipe were written after their add() returned.
        for line in child.stdout.read().splitlines():
            acked = int(line)
    finally:
        child.kill()
        child.wait()
        for stream in (child.stdout, child.stderr):
            if stream is not None:
                stream.close()
    assert child.returncode == -signal.SIGKILL
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    finally:
        conn.close()
    with StopOrderRegistry.open(path) as reopened:
        kept = set(reopened.snapshot())
    expected = {(f"acc-{n % 3}", f"ORD{n:08d}") for n in range(acked + 1)}
    expected -= {(f"acc-{(n - 1) % 3}", f"ORD{n - 1:08d}") for n in range(acked + 1) if n % 5 == 4}
    # The step in progress at the kill may have discarded the last acked order already.
    in_progress = acked + 1
    maybe_gone = {(f"acc-{acked % 3}", f"ORD{acked:08d}")} if in_progress % 5 == 4 else set()
    assert expected - maybe_gone <= kept
    # At most the add in progress at the kill is there without its ack.
    assert kept - expected <= {(f"acc-{in_progress % 3}", f"ORD{in_progress:08d}")}


def test_checkpoint_moves_the_log_into_the_file(tmp_path: Path) -> None:
    """After checkpoint(), the database file alone (without its log) holds every order."""
    path = tmp_path / "stops.db"
    with StopOrderRegistry.open(path) as registry:
        for n in range(100):
            registry.add(f"ORD{n}")
        registry.checkpoint()
        StopOrderRegistry().checkpoint()  # in memory: nothing to do
        # immutable=1 reads the main file only, as if the log were lost.
        conn = sqlite3.connect(f"file:{path}?immutable=1", uri=True)
        try:
            (count,) = conn.execute("SELECT count(*) FROM stop_orders").fetchone()
        finally:
            conn.close()
    assert count == 100
