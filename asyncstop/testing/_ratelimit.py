"""The per-account rate limit of a fake exchange: a token bucket, 429 pauses, and their judge.

One copy, used by :class:`~asyncstop.testing.FakeExchange` and by the
benchmarks' raw servers (``benchmarks/servers.py``).

Each account has a token bucket of ``burst`` tokens refilled at ``rate`` per
second. A request that finds it empty is refused (429) and starts a *pause*: the
``Retry-After`` it is sent says how long. A request of the account that arrives
during the pause is refused too, with the time left; if it arrives too late to
have been sent before its client could read the 429, it is a *violation*.

"Too late" is ``grace`` seconds after the 429, plus, when a :class:`StallMeter`
watches the event loop, every stall of that loop between the 429 and the
arrival. A fake exchange that shares its loop with the client under test is
held up with it: a garbage-collector pass, a long callback or the OS
descheduling the process delays both the client's reading of the 429 and the
server's stamping of requests that were already on their way. Those delays are
measured, not guessed, so the grace can stay small and a client that ignores
pauses is still caught.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import time
from datetime import UTC, datetime
from typing import Final, Literal, NamedTuple

__all__ = [
    "RateLimited",
    "RateLimiter",
    "StallMeter",
    "format_seconds",
    "http_date",
    "pause_seconds",
]

#: How often a watched loop is sampled. Longer intervals count less of a busy
#: (not stalled) loop as stalls; a stall is measured whole either way.
_TICK: Final = 0.01
#: Lateness every timer may have without the loop being stalled.
_SLACK: Final = 0.001


def format_seconds(seconds: float) -> str:
    """``0.2`` -> ``"0.2"``, ``1.0`` -> ``"1"``: the shortest text that reads back as the value."""
    if seconds.is_integer():
        return str(int(seconds))
    text = repr(seconds)
    if "e" in text:  # 1e-05: spell it out, a header is no place for exponents
        text = f"{seconds:.12f}".rstrip("0")
    return text


def _format_remaining(seconds: float) -> str:
    """The rest of a pause, rounded up to the millisecond so a client that obeys is never early."""
    # The tolerance keeps float noise (0.07 * 1000 = 70.00000000000001) from adding a millisecond.
    return format_seconds(math.ceil(seconds * 1000 - 1e-6) / 1000)


def http_date(timestamp: float) -> str:
    """An RFC 9110 HTTP-date (``Tue, 15 Nov 1994 08:12:31 GMT``) for a Unix timestamp."""
    return email.utils.format_datetime(datetime.fromtimestamp(timestamp, UTC), usegmt=True)


def pause_seconds(retry_after: str | None) -> float | None:
    """How long a client obeying this Retry-After value waits; None if it cannot tell."""
    if retry_after is None:
        return None
    try:
        seconds = float(retry_after)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(retry_after)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    if not math.isfinite(seconds) or seconds <= 0:
        return None
    return seconds


class StallMeter:
    """Measures how long an event loop was held up, while a pause needs to know.

    While watching, a timer fires every 10 ms; whatever it fires late (beyond
    1 ms) is added to a running total of stalled seconds. A stall still going on
    counts too: :meth:`mark` includes how late the next tick already is. It runs
    only while some pause is active, and never leaves a task behind: it is one
    timer handle, cancelled by :meth:`stop`.
    """

    __slots__ = ("_due", "_handle", "_loop", "_total", "_until")

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._due = math.inf
        self._until = -math.inf
        self._total = 0.0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Measure stalls of ``loop`` from now on, when asked to :meth:`watch`."""
        self._loop = loop

    def stop(self) -> None:
        """Stop measuring; cancels the timer."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._loop = None
        self._due = math.inf

    def watch(self, now: float, until: float) -> None:
        """Keep measuring at least until loop time ``until``."""
        self._until = max(self._until, until)
        if self._handle is None and self._loop is not None:
            self._schedule(now)

    def mark(self, now: float) -> float:
        """Stalled seconds so far, including the stall in progress at ``now`` if any."""
        return self._total + max(0.0, now - self._due - _SLACK)

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + _TICK
        self._handle = self._loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self._total += max(0.0, now - self._due - _SLACK)
        if now >= self._until:
            self._handle = None
            self._due = math.inf
            return
        self._schedule(now)


class RateLimited(NamedTuple):
    """A request the rate limit refuses: answer 429 with this ``Retry-After``."""

    #: The Retry-After header value.
    retry_after: str
    #: Seconds of the pause left, rounded up to the millisecond.
    remaining: float
    #: True when the request arrived in a pause, too late to have been sent before the 429.
    violation: bool
    #: True when this refusal started the pause.
    started: bool


class _Account:
    """One account's token bucket and current pause."""

    __slots__ = ("date_header", "pause_end", "pause_start", "refilled_at", "stall_mark", "tokens")

    def __init__(self, tokens: float, now: float) -> None:
        self.tokens = tokens
        self.refilled_at = now
        self.pause_start = -math.inf
        self.pause_end = -math.inf
        #: The meter's stalled seconds when the pause started.
        self.stall_mark = 0.0
        #: The HTTP-date sent with the 429 that started the pause (retry_after="date").
        self.date_header: str | None = None


class RateLimiter:
    """Per-account token buckets and 429 pauses; see the module docstring.

    Args:
        rate: requests per second per account, or None for no bucket (pauses
            started by :meth:`pause` still apply).
        burst: the bucket's capacity; default ``max(1, rate)``.
        retry_after: how a 429 states its pause. None: integer seconds (rounded
            up, at least 1) until the bucket has a token again, which is also the
            pause. A number: that many seconds, sent in the shortest form
            (``"0.2"``). ``"date"``: an HTTP-date at least the integer seconds
            ahead; the pause lasts until then.
        grace: seconds after a pause starts during which arrivals are not
            violations (they were sent before the 429 could be read); in the
            grace a request still passes if the bucket has a token.
        stalls: a started meter of the loop the requests are stamped on, whose
            stalls extend the grace; None: the grace alone.
    """

    def __init__(
        self,
        rate: float | None,
        *,
        burst: float | None = None,
        retry_after: float | Literal["date"] | None = None,
        grace: float = 0.02,
        stalls: StallMeter | None = None,
    ) -> None:
        if rate is not None and not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate_limit must be a positive number or None, not {rate!r}")
        if burst is not None and not (math.isfinite(burst) and burst >= 1):
            raise ValueError(f"rate_limit_burst must be at least 1, not {burst!r}")
        if (
            retry_after is not None
            and retry_after != "date"
            and (
                isinstance(retry_after, str)
                or not (math.isfinite(retry_after) and retry_after >= 0)
            )
        ):
            raise ValueError(
                f'retry_after must be None, a non-negative float or "date", not {retry_after!r}'
            )
        if not (math.isfinite(grace) and grace >= 0):
            raise ValueError(f"pause_grace must be a non-negative number, not {grace!r}")
        self.rate = rate
        self.burst = burst if burst is not None else max(1.0, rate or 1.0)
        self.retry_after = retry_after
        self.grace = grace
        self.stalls = stalls
        self._accounts: dict[str, _Account] = {}

    def admit(self, account_id: str, now: float) -> RateLimited | None:
        """None to let a request of ``account_id`` arriving at ``now`` through, else its 429."""
        account = self._accounts.get(account_id)
        if account is None:
            if self.rate is None:
                return None
            account = self._accounts[account_id] = _Account(self.burst, now)
        if now < account.pause_end:
            excuse = self.grace
            if self.stalls is not None:
                excuse += self.stalls.mark(now) - account.stall_mark
            if now >= account.pause_start + excuse:
                return self._remaining(account, now, violation=True)
            if self._take_token(account, now):
                return None
            return self._remaining(account, now, violation=False)
        if self._take_token(account, now):
            return None
        assert self.rate is not None
        if isinstance(self.retry_after, float | int):
            pause = float(self.retry_after)
            self._start(account, now, pause, None)
            return RateLimited(format_seconds(pause), pause, violation=False, started=True)
        seconds = max(1, math.ceil((1.0 - account.tokens) / self.rate))
        if self.retry_after is None:
            self._start(account, now, seconds, None)
            return RateLimited(str(seconds), seconds, violation=False, started=True)
        # "date": the date has whole seconds, so round it up and pause until then.
        wall = time.time()
        until = math.ceil(wall + seconds)
        header = http_date(until)
        self._start(account, now, until - wall, header)
        return RateLimited(header, until - wall, violation=False, started=True)

    def pause(self, account_id: str, now: float, seconds: float) -> None:
        """Start a pause of ``account_id`` now, as a 429 sent by other means asked for."""
        account = self._accounts.get(account_id)
        if account is None:
            account = self._accounts[account_id] = _Account(self.burst, now)
        self._start(account, now, seconds, None)

    def reset(self) -> None:
        """Forget every account's bucket and pause."""
        self._accounts.clear()

    def _start(
        self, account: _Account, now: float, seconds: float, date_header: str | None
    ) -> None:
        account.pause_start = now
        account.pause_end = now + seconds
        account.date_header = date_header
        if self.stalls is not None:
            account.stall_mark = self.stalls.mark(now)
            self.stalls.watch(now, account.pause_end)

    def _take_token(self, account: _Account, now: float) -> bool:
        rate = self.rate
        if rate is None:
            return True
        account.tokens = min(self.burst, account.tokens + (now - account.refilled_at) * rate)
        account.refilled_at = now
        if account.tokens >= 1.0:
            account.tokens -= 1.0
            return True
        return False

    def _remaining(self, account: _Account, now: float, *, violation: bool) -> RateLimited:
        remaining = account.pause_end - now
        rounded = math.ceil(remaining * 1000 - 1e-6) / 1000
        if isinstance(self.retry_after, float | int):
            header = _format_remaining(remaining)
        elif self.retry_after is None:
            header = str(max(1, math.ceil(remaining)))
        else:
            if account.date_header is None:
                account.date_header = http_date(math.ceil(time.time() + remaining))
            header = account.date_header
        return RateLimited(header, rounded, violation=violation, started=False)
