"""The retry policy's maths and decisions, as tables."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import tenacity

import asyncstop
from asyncstop import _retry
from asyncstop._constants import MAX_RATE_LIMITED_RETRIES
from asyncstop._errors import status_error


@pytest.mark.parametrize(
    ("retry_number", "jitter", "expected"),
    [
        (1, 0.0, 0.025),
        (1, 1.0, 0.05),
        (2, 0.0, 0.05),
        (2, 0.5, 0.075),
        (3, 1.0, 0.2),
        (6, 1.0, 1.6),
        (7, 1.0, 2.0),  # capped at MAX_RETRY_DELAY
        (30, 0.0, 1.0),
    ],
)
def test_backoff_is_exponential_with_equal_jitter(
    monkeypatch: pytest.MonkeyPatch, retry_number: int, jitter: float, expected: float
) -> None:
    """Backoff doubles per retry from 50 ms, caps at 2 s, and jitter spans the upper half."""
    monkeypatch.setattr(_retry, "jitter", lambda: jitter)
    assert _retry.backoff_delay(retry_number) == pytest.approx(expected)


NOW = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("2", 2.0),
        ("0", 0.0),
        (" 1 ", 1.0),
        ("0.25", 0.25),
        ("Tue, 24 Nov 2026 12:00:05 GMT", 5.0),
        ("Tue, 24 Nov 2026 11:59:00 GMT", 0.0),  # in the past: no pause
        ("-1", None),
        ("soon", None),
        ("inf", None),
        ("nan", None),
        ("", None),
        (None, None),
    ],
)
def test_retry_after_parsing(header: str | None, expected: float | None) -> None:
    """Retry-After is read as seconds, fractional seconds or an HTTP date; junk is ignored."""
    assert _retry.parse_retry_after(header, now=NOW) == expected


@pytest.mark.parametrize(
    ("error", "retryable", "unknown"),
    [
        (asyncstop.APIConnectionError("reset"), True, True),
        (asyncstop.APITimeoutError("slow"), True, True),
        (status_error(408, b""), True, False),
        (status_error(409, b""), True, False),
        (status_error(429, b""), True, False),
        (status_error(500, b""), True, True),
        (status_error(503, b""), True, True),
        (status_error(599, b""), True, True),
        (status_error(400, b""), False, False),
        (status_error(401, b""), False, False),
        (status_error(403, b""), False, False),
        (status_error(404, b""), False, False),
        (status_error(422, b""), False, False),
        (asyncstop.ResponseValidationError("x", body=b"", status_code=200), True, True),
        (asyncstop.APIConnectionError("refused", request_sent=False), True, False),
    ],
)
def test_which_errors_are_retried_and_which_leave_the_outcome_unknown(
    error: Exception, retryable: bool, unknown: bool
) -> None:
    """Drops, timeouts, 408, 409, 429, 5xx and stray 2xx retry; unknown only if it was sent."""
    assert _retry.is_retryable(error) is retryable
    assert _retry.outcome_unknown(error) is unknown


def retry_after(seconds: float | None) -> asyncstop.RateLimitError:
    """A 429 whose Retry-After asked for ``seconds`` (None: no header)."""
    err = status_error(429, b"")
    assert isinstance(err, asyncstop.RateLimitError)
    err.retry_after = seconds
    return err


S503 = status_error(503, b"")
# The backoff with jitter pinned at 0.5: 3/4 of the step (50 ms doubling, 2 s cap).
B1, B2, B3, B4 = 0.0375, 0.075, 0.15, 0.3


@pytest.mark.parametrize(
    ("max_retries", "errors", "expected"),
    [
        # Backoff per counted failure, and the stop after max_retries of them.
        (3, [S503, S503, S503, S503], [B1, B2, B3, None]),
        (1, [S503, S503], [B1, None]),
        # max_retries=0 disables retries, 429s included.
        (0, [S503], [None]),
        (0, [retry_after(1.0)], [None]),
        # Final statuses end at once.
        (3, [status_error(400, b"")], [None]),
        (3, [status_error(403, b"")], [None]),
        (3, [S503, status_error(422, b"")], [B1, None]),
        # Retry-After wins over the backoff, and a 429 does not use up max_retries.
        (1, [S503, retry_after(1.5), retry_after(0.25), S503], [B1, 1.5, 0.25, None]),
        # A 429 without Retry-After waits the backoff of the attempt under way.
        (3, [retry_after(None), S503, retry_after(None)], [B1, B1, B2]),
        # Retry-After over max_retry_after (30 s here) ends the retries.
        (3, [retry_after(30.0), retry_after(31.0)], [30.0, None]),
        (3, [S503, retry_after(31.0)], [B1, None]),
        # Timeouts, drops, 408, 409 and stray 2xx are counted like a 5xx.
        (
            4,
            [
                asyncstop.APITimeoutError("slow"),
                asyncstop.APIConnectionError("refused", request_sent=False),
                status_error(408, b""),
                status_error(409, b""),
                asyncstop.ResponseValidationError("html", body=b"<html>", status_code=200),
            ],
            [B1, B2, B3, B4, None],
        ),
    ],
)
async def test_the_policy_decides_each_failure_from_its_table(
    monkeypatch: pytest.MonkeyPatch,
    max_retries: int,
    errors: list[Exception],
    expected: list[float | None],
) -> None:
    """Each failure in turn gets the wait (or the stop) the policy promises."""
    monkeypatch.setattr(_retry, "jitter", lambda: 0.5)
    policy = _retry.RetryPolicy(max_retries=max_retries, max_retry_after=30.0)
    decision = None
    waits = []
    for err in errors:
        wait, decision = policy.next_wait(decision, err, latest_start=None)
        waits.append(wait)
        if wait is None:
            break
    assert waits == pytest.approx(expected)


async def test_429s_are_bounded_per_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """An order that meets nothing but 429s stops after MAX_RATE_LIMITED_RETRIES of them."""
    monkeypatch.setattr(_retry, "jitter", lambda: 0.5)
    policy = _retry.RetryPolicy(max_retries=3, max_retry_after=30.0)
    decision = None
    waits = []
    for _ in range(MAX_RATE_LIMITED_RETRIES + 1):
        wait, decision = policy.next_wait(decision, retry_after(0.1), latest_start=None)
        waits.append(wait)
    assert waits == [0.1] * MAX_RATE_LIMITED_RETRIES + [None]


@pytest.mark.parametrize(
    ("time_to_latest_start", "error", "retried"),
    [
        (10.0, S503, True),
        (0.01, S503, False),  # the 37.5 ms backoff would pass the last start
        (2.0, retry_after(1.0), True),
        (0.5, retry_after(1.0), False),  # a 429's pause is bounded by the deadline too
    ],
)
async def test_no_retry_is_planned_past_the_deadline(
    monkeypatch: pytest.MonkeyPatch, time_to_latest_start: float, error: Exception, retried: bool
) -> None:
    """A retry whose wait would end after the last moment an attempt may start is not planned."""
    monkeypatch.setattr(_retry, "jitter", lambda: 0.5)
    policy = _retry.RetryPolicy(max_retries=3, max_retry_after=30.0)
    latest_start = asyncio.get_running_loop().time() + time_to_latest_start
    wait, _ = policy.next_wait(None, error, latest_start=latest_start)
    assert (wait is not None) is retried


def test_the_policy_is_made_of_tenacity_strategies() -> None:
    """The retry, wait and stop rules are tenacity strategy objects that tenacity can evaluate."""
    policy = _retry.RetryPolicy(max_retries=2, max_retry_after=30.0)
    assert isinstance(policy.retrying.retry, tenacity.retry_if_exception)
    assert isinstance(policy.retrying.wait, tenacity.wait.wait_base)
    assert isinstance(policy.retrying.stop, tenacity.stop_after_attempt)
    state = tenacity.RetryCallState(policy.retrying, None, (), {})
    state.outcome = tenacity.Future.construct(1, retry_after(4.0), has_exception=True)
    assert policy.retrying.retry(state) is True
    assert policy.retrying.wait(state) == 4.0


@pytest.mark.parametrize("max_retry_after", [0.0, 0.01])
async def test_max_retry_after_caps_only_the_servers_pause(
    monkeypatch: pytest.MonkeyPatch, max_retry_after: float
) -> None:
    """A small max_retry_after refuses a long Retry-After but keeps the backoff's retries."""
    monkeypatch.setattr(_retry, "jitter", lambda: 0.5)
    policy = _retry.RetryPolicy(max_retries=3, max_retry_after=max_retry_after)
    wait, decision = policy.next_wait(None, S503, latest_start=None)
    assert wait == pytest.approx(B1)
    wait, decision = policy.next_wait(decision, retry_after(None), latest_start=None)
    assert wait == pytest.approx(B2)
    wait, _ = policy.next_wait(decision, retry_after(1.0), latest_start=None)
    assert wait is None
