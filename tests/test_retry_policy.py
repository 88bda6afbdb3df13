"""The retry policy's maths and decisions, as tables."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

import asyncstop
from asyncstop import _retry
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
