"""What can go wrong on the fake exchange: scripted :class:`Fault` and the random :class:`Faults`.

Both are plain immutable descriptions; :class:`~asyncstop.testing.FakeExchange`
interprets them. A scripted fault is consumed by exactly one DELETE request; the
random mix is drawn once per DELETE request from the exchange's seeded RNG.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

__all__ = ["Fault", "FaultKind", "Faults", "LongTailLatency"]

FaultKind = Literal["error", "drop", "hang", "reply", "redirect", "rate_limited", "unauthorized"]

# z-score of the 99th percentile of the standard normal distribution.
_Z99: Final = 2.3263478740408408


def _check_probability(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a probability between 0 and 1, not {value!r}")


def _check_header_value(name: str, value: str) -> None:
    if any(ch in value for ch in "\r\n\x00"):
        raise ValueError(f"{name} must not contain CR, LF or NUL: {value!r}")


@dataclass(frozen=True, slots=True)
class LongTailLatency:
    """A seeded long-tailed latency: lognormal, fitted to a median and a 99th percentile, clipped.

    ``median`` and ``p99`` are seconds; the lognormal has ``mu = ln(median)`` and
    ``sigma = ln(p99 / median) / 2.326`` (the normal z-score of 0.99), so half of
    the draws are below ``median`` and 1 % above ``p99``. Each draw is then clipped
    to ``max`` seconds, so no request waits longer than that.
    """

    median: float = 0.02
    p99: float = 0.2
    max: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.median) and self.median > 0):
            raise ValueError(f"median must be a positive number of seconds, not {self.median!r}")
        if not (math.isfinite(self.p99) and self.p99 >= self.median):
            raise ValueError(f"p99 must be at least the median, not {self.p99!r}")
        if not (math.isfinite(self.max) and self.max >= 0):
            raise ValueError(f"max must be a non-negative number of seconds, not {self.max!r}")

    def sample(self, rng: random.Random) -> float:
        """Draw one latency in seconds from ``rng``."""
        sigma = math.log(self.p99 / self.median) / _Z99
        return min(rng.lognormvariate(math.log(self.median), sigma), self.max)


@dataclass(frozen=True, slots=True, kw_only=True)
class Faults:
    """The random fault mix of a :class:`~asyncstop.testing.FakeExchange`; default: no faults.

    Each probability applies per DELETE request that passes authentication, the
    header checks and the rate limit; one uniform number is drawn per such request
    from the exchange's seeded RNG, in arrival order, so the same seed and the same
    request order give the same faults. The probabilities must add up to at most 1.

    - ``error_before``: answer ``error_status`` without cancelling.
    - ``error_after``: cancel (if the order is live and the account's), then answer
      ``error_status``.
    - ``drop_before``: close the connection without an answer, without cancelling.
    - ``drop_after``: cancel (if applicable), then close the connection without an answer.
    - ``hang``: never answer; the connection is dropped when the exchange closes.
    - ``latency``: seconds to wait before answering, fixed or a :class:`LongTailLatency`
      (drawn from a separate seeded RNG, so changing it does not change the fault sequence).

    The instance is immutable; change the mix of a running exchange by assigning a
    new one to ``exchange.faults`` (``dataclasses.replace`` is handy).
    """

    error_before: float = 0.0
    error_after: float = 0.0
    drop_before: float = 0.0
    drop_after: float = 0.0
    hang: float = 0.0
    error_status: int = 503
    latency: float | LongTailLatency = 0.0

    def __post_init__(self) -> None:
        probabilities = {
            "error_before": self.error_before,
            "error_after": self.error_after,
            "drop_before": self.drop_before,
            "drop_after": self.drop_after,
            "hang": self.hang,
        }
        for name, value in probabilities.items():
            _check_probability(name, value)
        if sum(probabilities.values()) > 1.0 + 1e-9:
            raise ValueError("the fault probabilities must add up to at most 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be a 4xx or 5xx status, not {self.error_status!r}")
        if isinstance(self.latency, int | float) and not (
            math.isfinite(self.latency) and self.latency >= 0
        ):
            raise ValueError(
                f"latency must be a non-negative number of seconds or a LongTailLatency, "
                f"not {self.latency!r}"
            )


@dataclass(frozen=True, slots=True)
class Fault:
    """One scripted action for one DELETE request; build it with the class methods.

    Pass faults to ``exchange.inject(...)`` (a FIFO shared by all requests) or
    ``exchange.inject_for(order_id, ...)`` (only requests for that order). They
    are consumed by requests that pass authentication, the header checks and the
    rate limit, and take the exchange's latency like any answer (except ``hang``).
    """

    kind: FaultKind
    status: int | None = None
    #: Apply the cancel before the fault (``error``, ``drop``, ``reply``).
    apply: bool = False
    retry_after: str | None = None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())
    location: str | None = None

    @classmethod
    def error(
        cls,
        status: int = 503,
        *,
        after: bool = False,
        retry_after: str | None = None,
        body: bytes | None = None,
    ) -> Fault:
        """Answer ``status`` (any 4xx or 5xx); with ``after=True`` cancel the order first.

        ``retry_after`` is sent verbatim as the ``Retry-After`` header. ``body``
        replaces the default JSON error body with raw bytes (Content-Type stays
        ``application/json``; use :meth:`reply` for full control).
        """
        if not 400 <= status <= 599:
            raise ValueError(f"an error status must be 4xx or 5xx, not {status!r}")
        if retry_after is not None:
            _check_header_value("retry_after", retry_after)
        return cls("error", status=status, apply=after, retry_after=retry_after, body=body)

    @classmethod
    def drop(cls, *, after: bool = False) -> Fault:
        """Close the connection without an answer; with ``after=True`` cancel the order first."""
        return cls("drop", apply=after)

    @classmethod
    def hang(cls) -> Fault:
        """Never answer; the connection is dropped when the exchange closes."""
        return cls("hang")

    @classmethod
    def reply(
        cls,
        status: int,
        body: bytes,
        headers: Mapping[str, str] | None = None,
        *,
        apply: bool = True,
    ) -> Fault:
        """Answer ``status`` with the raw ``body`` and ``headers``; ``apply=True`` cancels first.

        For odd answers: a 200 with garbage, a 200 with an undocumented status,
        a 502 with an HTML page. Content-Type is ``application/json`` unless
        ``headers`` sets it.
        """
        if not 200 <= status <= 599:
            raise ValueError(f"a reply status must be between 200 and 599, not {status!r}")
        pairs = tuple((headers or {}).items())
        for name, value in pairs:
            _check_header_value(name, value)
        return cls("reply", status=status, apply=apply, body=body, headers=pairs)

    @classmethod
    def redirect(cls, location: str) -> Fault:
        """Answer 307 with ``Location: location``, without cancelling."""
        if not location:
            raise ValueError("a redirect needs a location")
        _check_header_value("location", location)
        return cls("redirect", status=307, location=location)

    @classmethod
    def rate_limited(cls, retry_after: str | None = "1") -> Fault:
        """Answer 429 regardless of the token bucket, and start the account's pause.

        ``retry_after`` is sent verbatim (``None``: no header). The pause lasts
        that many seconds if it is a number, until that time if it is an HTTP
        date, and not at all otherwise (the client could not know how long to wait).
        """
        if retry_after is not None:
            _check_header_value("retry_after", retry_after)
        return cls("rate_limited", status=429, retry_after=retry_after)

    @classmethod
    def unauthorized(cls) -> Fault:
        """Answer 401 as if the token had been refused (e.g. it just expired)."""
        return cls("unauthorized", status=401)
