"""The benchmark harness measures what it claims: its servers, its summaries, its table.

The scenarios themselves run in CI as ``python -m benchmarks --quick``; these
tests cover the parts whose mistakes would not show up as missing numbers.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import socket
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from benchmarks.__main__ import SCENARIOS
from benchmarks.common import Figure
from benchmarks.report import (
    FILLS,
    TITLES,
    ScenarioResult,
    _picture,
    _threshold,
    _who,
    format_table,
    main,
    read_results,
    write_json,
    write_plot,
)
from benchmarks.responsiveness import _percentile
from benchmarks.servers import REPLY_BODY, ServerProcess, ServerSpec, _State, reply_for

from .helpers import DOC_EXAMPLE

if TYPE_CHECKING:
    from matplotlib.figure import Figure as Picture
    from matplotlib.lines import Line2D


def test_reply_body_is_the_documented_example() -> None:
    """The fake servers answer with the 200 example of api/openapi.yaml."""
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


def test_every_scenario_has_a_title() -> None:
    """The table, the JSON and the picture can name every scenario the harness runs."""
    assert set(TITLES) == set(SCENARIOS)


@pytest.mark.parametrize(
    ("case", "who"),
    [
        ("asyncio C=64 asyncstop", "asyncstop"),
        ("http fixed C=64 warm hedge=auto", "asyncstop"),
        ("in-loop KillSwitch.trigger()", "asyncstop"),
        ("registry NORMAL", "asyncstop"),
        ("asyncio C=64 (b) aiohttp+msgspec", "other"),
        ("http fixed C=64 (a) aiohttp warm", "other"),
        ("naive asyncio.gather", "other"),
        ("idle loop", "floor"),
        ("theory: ideal p95 hedge, independent second draw", "floor"),
    ],
)
def test_bar_colour_says_who_was_measured(case: str, who: str) -> None:
    """A bar's fill is chosen by whose number it is: asyncstop, another client, or no client."""
    assert _who(Figure(1, case, "metric", "x", [1.0])) == who


@pytest.mark.parametrize(
    ("target", "threshold"),
    [("<= 1.1", 1.1), (">= 0.95", 0.95), ("<= 2048 B", 2048.0), ("<= 10 %", 10.0),
     ("0 in every run", 0.0), ("fast enough", None)],
)  # fmt: skip
def test_target_line_sits_at_the_number_of_the_target(target: str, threshold: float | None) -> None:
    """The target drawn on a row is the number its words compare with."""
    assert _threshold(target) == threshold


#: The picture needs the bench extra (matplotlib); the README's test command installs only dev.
needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="needs the bench extra (matplotlib)"
)


def _texts(picture: Picture) -> list[str]:
    return [text.get_text() for ax in picture.axes for text in ax.texts]


def _xdata(line: Line2D) -> list[float]:
    """A line's x coordinates as a list of floats, whatever array-like matplotlib keeps."""
    import numpy as np

    return [float(x) for x in np.asarray(line.get_xdata(), dtype=float)]


def _panel_bars(picture: Picture, title: str) -> list[tuple[str, str]]:
    """(fill colour, hatch) of each bar of the panel whose title starts with ``title``."""
    from matplotlib.colors import to_hex

    (ax,) = [ax for ax in picture.axes if ax.get_title(loc="left").startswith(title)]
    return [(to_hex(bar.get_facecolor()), bar.get_hatch() or "") for bar in ax.patches]


def _fill(who: str) -> str:
    from matplotlib.colors import to_hex

    return to_hex(FILLS[who])


@needs_matplotlib
def test_picture_colours_mean_the_client_not_the_verdict() -> None:
    """Scenario 2's asyncstop bars are asyncstop's colour whether they pass or miss."""
    figures = [
        Figure(2, "http fixed C=64 warm", "time / bound", "x", [1.2]).check(
            "<= 1.1", lambda v: v <= 1.1
        ),
        Figure(2, "http fixed C=64 cold", "time / bound", "x", [1.3]),
        Figure(2, "http fixed C=64 warm hedge=auto", "time / bound", "x", [1.0]).check(
            "<= 1.1", lambda v: v <= 1.1
        ),
        Figure(2, "http fixed C=64 (a) aiohttp warm", "time / bound", "x", [1.1]),
    ]
    picture = _picture([ScenarioResult(2, 1.0, figures)])
    bars = _panel_bars(picture, "2. Kill switch")
    assert [colour for colour, _ in bars] == [_fill("asyncstop")] * 3 + [_fill("other")]
    assert {"MISS (≤ 1.1)", "PASS (≤ 1.1)"} <= set(_texts(picture))


@needs_matplotlib
def test_picture_marks_every_target_with_pass_or_miss_and_draws_the_target() -> None:
    """Each figure with a target shows its verdict, even one no panel was planned for."""
    ratio = Figure(1, "asyncio C=64 asyncstop", "cancels/s / (b)", "x", [0.8]).check(
        ">= 0.95", lambda v: v >= 0.95
    )
    settled = Figure(6, "N=200 C=64 20 ms", "not cancelled", "orders", [0.0]).check(
        "0 in every run", lambda v: v == 0, on_max=True
    )
    stray = Figure(4, "new client", "new metric", "ms", [3.0]).check("<= 1 ms", lambda v: v <= 1)
    picture = _picture(
        [ScenarioResult(1, 1.0, [ratio]), ScenarioResult(4, 1.0, [stray]),
         ScenarioResult(6, 1.0, [settled])]
    )  # fmt: skip
    texts = _texts(picture)
    assert "MISS (≥ 0.95)" in texts
    assert any("not cancelled" in t and t.endswith("PASS (0 in every run)") for t in texts)
    assert any("new metric" in t and t.endswith("MISS (≤ 1 ms)") for t in texts)
    targets = [_xdata(line) for ax in picture.axes for line in ax.lines]
    assert [0.95, 0.95] in targets


@needs_matplotlib
def test_rate_limit_panel_shows_the_429s_of_a_client_that_finished_sooner() -> None:
    """The faster client that drew 429s has them written beside its time and its bar hatched."""
    figures = [
        Figure(3, "asyncstop rate_limit=200", "time / (N/R)", "x", [1.0]),
        Figure(3, "asyncstop rate_limit=200", "429s received", "", [0.0]),
        Figure(3, "asyncstop rate_limit=200", "requests inside a pause", "", [0.0]),
        Figure(3, "naive asyncio.gather", "time / (N/R)", "x", [0.6]),
        Figure(3, "naive asyncio.gather", "429s received", "", [187.0]),
        Figure(3, "naive asyncio.gather", "requests inside a pause", "", [100.0]),
    ]
    picture = _picture([ScenarioResult(3, 1.0, figures)])
    assert "0.600\N{MULTIPLICATION SIGN}  429s: 187, inside a pause: 100" in _texts(picture)
    assert [hatch for _, hatch in _panel_bars(picture, "3. Time")] == ["", "///"]
    counts = _panel_bars(picture, "3. What each client did")
    assert [colour for colour, _ in counts] == [_fill("asyncstop"), _fill("other")] * 2


@needs_matplotlib
def test_picture_is_written_when_scenarios_failed_or_did_not_run(tmp_path: Path) -> None:
    """A run whose scenarios failed still gets a PNG that says so, and no temporary file."""
    failed = ScenarioResult(1, 1.0, [], "Traceback (most recent call last):\nRuntimeError: boom")
    texts = _texts(_picture([failed]))
    assert "failed: RuntimeError: boom" in texts
    assert "not run" in texts
    path = tmp_path / "quick.png"
    write_plot(path, [failed])
    assert path.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert list(tmp_path.iterdir()) == [path]


def _panel_texts(picture: Picture, title: str) -> list[str]:
    """Every text of the panel whose title starts with ``title``, tick labels included."""
    (ax,) = [ax for ax in picture.axes if ax.get_title(loc="left").startswith(title)]
    return [t.get_text() for t in ax.texts] + [t.get_text() for t in ax.get_yticklabels()]


def _new_scenarios() -> list[ScenarioResult]:
    """Scenarios 6 (outage only), 7 and 8 as their modules report them."""
    outage = "outage 5 s N=1000"
    death = "machine death, 200 stops, ttl 3 s"
    one = "one round log-normal N=200 C=256"
    return [
        ScenarioResult(6, 1.0, [
            Figure(6, outage, "recovery -> last cancel", "s", [0.2]).check(
                "<= 45 s", lambda v: v <= 45),
            Figure(6, outage, "rounds", "rounds", [3.0]),
            Figure(6, outage, "not cancelled", "orders", [0.0]).check(
                "0 in every run", lambda v: v == 0, on_max=True),
            Figure(6, outage, "watchdog CPU in the outage", "%", [31.0]),
            Figure(6, outage, "watchdog CPU between rounds", "%", [0.5]).check(
                "<= 2 %", lambda v: v <= 2),
        ]),
        ScenarioResult(7, 1.0, [
            Figure(7, "add() under a lease", "p50", "ms", [4.0]),
            Figure(7, "add() under a lease", "p99", "ms", [5.5]),
            Figure(7, "1,000 owners' renewals", "renewals per second", "/s", [9977.0]),
            Figure(7, death, "kill -> first DELETE", "s", [1.5]).check(
                ">= 2 (2/3 ttl)", lambda v: v >= 2),
            Figure(7, death, "kill -> last cancel", "s", [2.4]).check(
                "<= 6 (ttl + 3 s)", lambda v: v <= 6, on_max=True),
        ]),
        ScenarioResult(8, 1.0, [
            Figure(8, f"{one} plain", "time", "ms", [415.0]),
            Figure(8, f'{one} hedge="auto"', "time", "ms", [269.0]),
            Figure(8, f'{one} hedge="auto"', "extra requests (hedges)", "%", [12.0]).check(
                "<= 10 %", lambda v: v <= 10),
            Figure(8, f'{one} hedge="auto"', "time / plain", "x", [0.647]).check(
                "<= 0.80", lambda v: v <= 0.80),
            Figure(8, "theory: ideal p95 hedge, independent second draw", "time / plain", "x",
                   [0.688]),
        ]),
    ]  # fmt: skip


@needs_matplotlib
def test_outage_postgres_and_hedging_panels_show_their_figures_and_verdicts() -> None:
    """Outage recovery, PostgreSQL and one-round hedging each get a panel with their targets."""
    picture = _picture(_new_scenarios())
    outage = _panel_texts(picture, "6. Outage recovery")
    assert "watchdog CPU between rounds" in outage
    assert "PASS (≤ 2 %)" in outage
    assert any("recovery → last cancel = 0.20 s" in t and "PASS (≤ 45 s)" in t for t in outage)
    death = _panel_texts(picture, "7. PostgreSQL")
    assert {"MISS (≥ 2 (2/3 ttl))", "PASS (≤ 6 (ttl + 3 s))"} <= set(death)
    assert any("renewals per second = 9,977 /s" in t for t in death)
    ratio = _panel_texts(picture, "8. One round decides")
    assert "0.647\N{MULTIPLICATION SIGN}  269 vs 415 ms plain" in ratio
    assert "PASS (≤ 0.80)" in ratio
    assert [colour for colour, _ in _panel_bars(picture, "8. One round decides")] == [
        _fill("asyncstop"),
        _fill("floor"),
    ]
    assert "MISS (≤ 10 %)" in _panel_texts(picture, '8. What hedge="auto" cost')
    targets = [_xdata(line) for ax in picture.axes for line in ax.lines]
    assert {(2.0, 2.0), (6.0, 6.0), (0.8, 0.8), (10.0, 10.0), (2.0, 2.0)} <= {
        tuple(t) for t in targets
    }
    # the outage's own "not cancelled" is not mistaken for the bot-death panel's
    assert not any("outage" in t for t in _panel_texts(picture, "6. Bot SIGKILLed"))


@needs_matplotlib
def test_new_panels_say_not_run_when_their_scenario_is_missing() -> None:
    """A run without scenarios 6-8 still draws their panels, each saying it was not run."""
    picture = _picture([ScenarioResult(1, 1.0, [Figure(1, "c", "cancels/s", "/s", [1.0])])])
    for title in ("6. Outage recovery", "7. PostgreSQL", "8. One round", '8. What hedge="auto"'):
        (ax,) = [ax for ax in picture.axes if ax.get_title(loc="left").startswith(title)]
        assert [t.get_text() for t in ax.texts] == ["not run"]
        assert not ax.axison


@needs_matplotlib
def test_picture_is_redrawn_from_the_json_of_a_run(tmp_path: Path) -> None:
    """`python -m benchmarks.report run.json` draws the PNG again with the same figures."""
    results = _new_scenarios()
    path = tmp_path / "run.json"
    write_json(path, {"scenarios": {str(r.number): r.as_dict() for r in results}})
    again = read_results(path)
    assert [[f.as_dict() for f in r.figures] for r in again] == [
        [f.as_dict() for f in r.figures] for r in results
    ]
    assert main([str(path)]) == 0
    assert (tmp_path / "run.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
