"""The benchmark harness measures what it claims: its servers, its summaries, its table.

The scenarios themselves run in CI as ``python -m benchmarks --quick``; these
tests cover the parts whose mistakes would not show up as missing numbers.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket

import pytest

from benchmarks.common import Figure
from benchmarks.report import ScenarioResult, format_table
from benchmarks.responsiveness import _percentile
from benchmarks.servers import REPLY_BODY, ServerProcess, ServerSpec, _State, reply_for

from .helpers import DOC_EXAMPLE


def test_reply_body_is_the_documented_example() -> None:
    """The fake servers answer with the 200 example of shared/api/openapi.yaml."""
    assert json.loads(REPLY_BODY) == json.loads(DOC_EXAMPLE)


def test_rate_limit_server_pauses_the_account_and_counts_requests_inside_the_pause() -> None:
    """An empty bucket starts a pause; only arrivals after the grace count as inside it."""
    loop = asyncio.new_event_loop()
    try:
        state = _State(ServerSpec(rate_limit=2.0, burst=2.0, pause=1.0, grace=0.02), loop)
        assert state.admit("a", 0.000) is None
        assert state.admit("a", 0.001) is None
        first_429 = state.admit("a", 0.002)  # the bucket is empty: the pause starts
        assert first_429 is not None
        assert b"Retry-After: 1\r\n" in first_429
        in_flight = state.admit("a", 0.015)  # within the grace: was already in flight
        inside = state.admit("a", 0.502)  # ignored the Retry-After
        assert in_flight is not None
        assert inside is not None
        assert b"Retry-After: 0.500\r\n" in inside
        assert state.admit("b", 0.5) is None  # the limit is per account
        assert state.admit("a", 1.003) is None  # the pause is over, the bucket refilled
        account = state.accounts["a"]
    finally:
        loop.close()
    assert (account.requests, account.ok, account.rejected) == (6, 3, 3)
    assert account.inside_pause == 1
    assert account.pauses == 1


def test_server_process_answers_on_keep_alive_and_is_reaped() -> None:
    """Two requests on one connection get the 200 body for their id; HEAD gets 405; reaped."""
    request = (
        b"DELETE /frontoffice/api/v3/stop-orders/X HTTP/1.1\r\nHost: x\r\naccountId: a\r\n\r\n"
    )
    with ServerProcess(ServerSpec(), core=None) as server:
        with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
            sock.sendall(request + request + b"HEAD /x HTTP/1.1\r\nHost: x\r\n\r\n")
            received = b""
            while received.count(b"HTTP/1.1 ") < 3 or not received.endswith(b"\r\n\r\n"):
                chunk = sock.recv(65536)
                assert chunk, "the server closed the keep-alive connection"
                received += chunk
        stats = server.stats()
        process = server._process
    assert received.count(reply_for(b"X")) == 2
    assert json.loads(reply_for(b"X").split(b"\r\n\r\n", 1)[1])["order"]["orderId"] == "X"
    assert b"HTTP/1.1 405 Method Not Allowed" in received
    assert stats["by_status"] == {"200": 2, "405": 1}
    assert stats["connections"] == 1
    assert process is not None
    assert process.returncode is not None  # reaped: no zombie left behind


def test_figure_summarises_runs_and_judges_the_median() -> None:
    """Median, min and max ignore NaN runs; a target is judged on the median or worst run."""
    figure = Figure(1, "case", "metric", "x", [1.0, math.nan, 3.0, 2.0])
    assert (figure.median, figure.min, figure.max) == (2.0, 1.0, 3.0)
    assert figure.check(">= 2", lambda v: v >= 2).passed is True
    assert figure.check("0 in every run", lambda v: v == 0, on_max=True).passed is False
    empty = Figure(1, "case", "metric", "x", [math.nan])
    assert empty.check(">= 0", lambda v: v >= 0).passed is False


def test_table_shows_every_figure_and_lists_each_miss() -> None:
    """The table has a row per figure and a summary naming every missed target."""
    hit = Figure(3, "fast", "time / (N/R)", "x", [1.0]).check("<= 1.05", lambda v: v <= 1.05)
    miss = Figure(4, "slow", "lag p99", "ms", [9.5]).check("<= 5 ms", lambda v: v <= 5)
    table = format_table([ScenarioResult(3, 1.0, [hit]), ScenarioResult(4, 1.0, [miss])])
    assert "PASS (<= 1.05)" in table
    assert "MISS (<= 5 ms)" in table
    assert "Targets: 1 PASS, 1 MISS" in table
    assert "MISS  4. slow: lag p99 = 9.50 ms (target <= 5 ms)" in table


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0), (0.001, 1.0)],
)
def test_percentile_is_nearest_rank(fraction: float, expected: float) -> None:
    """A reported lag percentile is a lag that really happened, never an interpolation."""
    assert _percentile([float(v) for v in range(100, 0, -1)], fraction) == expected
