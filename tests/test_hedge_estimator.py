"""The "auto" hedge delay: reply times and the ages of requests still waiting give the delay."""

from __future__ import annotations

from collections import deque

import pytest

from asyncstop._account import AccountBook
from asyncstop._attempt import Canceller
from asyncstop._auth import Auth
from asyncstop._hedge import AUTO_WINDOW, Hedger, estimate_delay, reply_window
from asyncstop._retry import RetryPolicy
from asyncstop._transport import Timeout, Transport

from .helpers import TOKEN


def ms(*values: float) -> list[float]:
    return [v / 1000 for v in values]


def spread(count: int, low: float, high: float) -> list[float]:
    """``count`` reply times evenly from ``low`` to ``high`` ms, in seconds."""
    step = (high - low) / (count - 1)
    return [(low + i * step) / 1000 for i in range(count)]


#: (what it shows, reply times and negated lower bounds, in-flight ages, expected delay in ms)
TABLE: list[tuple[str, list[float], list[float], float | None]] = [
    (
        "too few replies to go by",
        spread(19, 10, 190),
        [],
        None,
    ),
    (
        "20 replies, none waiting: the p95 is the 19th, the median the 10th",
        spread(20, 10, 200),
        [],
        max(190, 2 * 100),
    ),
    (
        "a long tail: the p95 beyond twice the median",
        ms(*[10] * 18, 100, 400),
        [],
        100,
    ),
    (
        "a server without a tail: twice the median",
        ms(*[20] * 40),
        [],
        40,
    ),
    (
        "one round, half answered: the p95 cannot be known yet: twice the longest reply",
        spread(100, 10, 50),
        [0.060] * 100,
        2 * 50,
    ),
    (
        "one round, 94 % answered: still unknown",
        [*ms(*[10] * 150), *spread(38, 11, 300)],
        [0.310] * 12,
        2 * 300,
    ),
    (
        "one round, 95 % answered: the p95 is the latest reply",
        [*ms(*[10] * 150), *spread(40, 11, 300)],
        [0.310] * 10,
        300,
    ),
    (
        "ignoring the requests in flight would have said 95 ms here",
        spread(100, 1, 100),
        [0.120] * 100,
        2 * 100,
    ),
    (
        "young requests in flight (the next round) do not hold the estimate back",
        spread(100, 1, 100),
        [0.0005] * 64,
        max(95, 2 * 50),
    ),
    (
        "a request abandoned at 300 ms (negated) keeps the tail long",
        [*spread(37, 10, 100), *[-0.300] * 3],
        [],
        2 * 100,
    ),
    (
        "lower bounds below a reply time take nothing from the tail above it",
        [*spread(40, 5, 200), *[-0.001] * 40],
        [],
        max(190, 2 * 100),
    ),
    (
        "a warm window knows the delay before this call's first reply",
        [*ms(*[10] * (AUTO_WINDOW - 32)), *spread(32, 100, 410)],
        [0.0001] * 200,
        160,
    ),
]


@pytest.mark.parametrize(
    ("window", "in_flight", "expected_ms"),
    [pytest.param(window, ages, expected, id=why) for why, window, ages, expected in TABLE],
)
def test_the_delay_from_reply_times_and_ages(
    window: list[float], in_flight: list[float], expected_ms: float | None
) -> None:
    """Each row's reply times and in-flight ages give the row's hedge delay."""
    estimate = estimate_delay(window, in_flight)
    if expected_ms is None:
        assert estimate is None
    else:
        assert estimate is not None
        assert estimate.delay == pytest.approx(expected_ms / 1000, rel=1e-6)


def test_an_unknown_quantile_says_so() -> None:
    """Half a round answered: the p95 is not known yet, and the estimate says so."""
    estimate = estimate_delay(spread(100, 10, 50), [0.060] * 100)
    assert estimate is not None
    assert not estimate.known
    assert estimate.quantile == pytest.approx(0.050)  # a lower bound: the longest reply
    known = estimate_delay(spread(20, 10, 200))
    assert known is not None
    assert known.known


def test_an_estimate_says_what_it_was_made_from() -> None:
    """The estimate carries its quantile, median and how many replies and bounds made it."""
    estimate = estimate_delay([*spread(57, 10, 570), -0.9], [0.8, 0.9])
    assert estimate is not None
    assert (estimate.replies, estimate.censored) == (57, 3)
    # The three bounds lie beyond every reply: the p95 is the 57th of 60, the median the 30th.
    assert estimate.quantile == pytest.approx(0.570)
    assert estimate.median == pytest.approx(0.300)
    assert estimate.delay == pytest.approx(0.600)


def _canceller(window: deque[float] | None) -> Canceller:
    """A canceller of real parts that is never opened: Hedger.delay only reads its window."""
    return Canceller(
        transport=Transport(
            "http://127.0.0.1:9",
            timeout=Timeout(total=1.0),
            max_connections=1,
            max_body_size=65536,
            session=None,
        ),
        auth=Auth(TOKEN),
        accounts=AccountBook(None),
        retry_policy=RetryPolicy(max_retries=0, max_retry_after=1.0),
        reply_times=window,
    )


def test_a_fixed_delay_is_the_delay() -> None:
    """hedge=0.25 waits 0.25 s whatever the client has seen."""
    window = reply_window()
    window.extend(ms(*[10] * 50))
    assert Hedger(_canceller(window), 0.25, 0.1).delay() == 0.25


def test_auto_without_history_has_no_delay_yet() -> None:
    """hedge="auto" on a client that has seen no reply waits for replies before any hedge."""
    assert Hedger(_canceller(reply_window()), "auto", 0.1).delay() is None
    assert Hedger(_canceller(None), "auto", 0.1).delay() is None


def test_auto_on_a_warm_client_knows_its_delay_at_once() -> None:
    """hedge="auto" on a client with earlier replies starts from their p95 (or twice the median)."""
    window = reply_window()
    window.extend(spread(20, 10, 200))
    assert Hedger(_canceller(window), "auto", 0.1).delay() == pytest.approx(0.200)
    window = reply_window()
    window.extend(ms(*[10] * 18, 100, 400))
    assert Hedger(_canceller(window), "auto", 0.1).delay() == pytest.approx(0.100)


def test_the_window_keeps_only_the_latest_replies() -> None:
    """The window holds the latest AUTO_WINDOW requests: "auto" follows a slower exchange."""
    window = reply_window()
    window.extend(ms(*[10] * AUTO_WINDOW))
    window.extend(ms(*[100] * AUTO_WINDOW))
    assert Hedger(_canceller(window), "auto", 0.1).delay() == pytest.approx(0.200)
