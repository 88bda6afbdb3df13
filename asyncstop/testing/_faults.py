"""What can go wrong on the fake exchange, and which request it happens to.

:class:`Fault` (one scripted action), :class:`Faults` (the seeded random mix)
and :class:`LongTailLatency` are plain immutable descriptions that
:class:`~asyncstop.testing.FakeExchange` interprets. :class:`FaultDraw` decides,
for each DELETE request past the gate, which fault it meets and how long it
waits; :func:`spread_faults` builds a seeded schedule of faults.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from ._ratelimit import format_seconds

__all__ = [
    "Fault",
    "FaultDraw",
    "FaultKind",
    "Faults",
    "LongTailLatency",
    "checked_faults",
    "checked_outage",
    "spread_faults",
]

FaultKind = Literal[
    "error",
    "drop",
    "hang",
    "reply",
    "redirect",
    "rate_limited",
    "unauthorized",
    "other_order",
    "huge_body",
    "endless_body",
    "gzip_bomb",
    "stale_reply",
]

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

    Each probability applies per DELETE request that passes the gate
    (authentication, the header checks, the account check and the rate limit);
    one uniform number is drawn per such request from the exchange's seeded RNG,
    in arrival order, so the same seed and the same request order give the same
    faults. How many requests pass the gate can depend on timing (429s from the
    token bucket); to make a fault certain, schedule it (:func:`spread_faults`).
    The probabilities must add up to at most 1.

    - ``error_before``: answer ``error_status`` without cancelling.
    - ``error_after``: cancel (if the order is live and the account's), then answer
      ``error_status``.
    - ``drop_before``: close the connection without an answer, without cancelling.
    - ``drop_after``: cancel (if applicable), then close the connection without an answer.
    - ``hang``: never answer; the connection is dropped when the exchange closes.
    - ``rate_limited``: answer 429 with ``Retry-After: retry_after`` (seconds; None
      sends none) and pause the account that long, as :meth:`Fault.rate_limited`.
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
    rate_limited: float = 0.0
    error_status: int = 503
    retry_after: float | None = 1.0
    latency: float | LongTailLatency = 0.0

    def __post_init__(self) -> None:
        probabilities = {
            "error_before": self.error_before,
            "error_after": self.error_after,
            "drop_before": self.drop_before,
            "drop_after": self.drop_after,
            "hang": self.hang,
            "rate_limited": self.rate_limited,
        }
        for name, value in probabilities.items():
            _check_probability(name, value)
        if sum(probabilities.values()) > 1.0 + 1e-9:
            raise ValueError("the fault probabilities must add up to at most 1")
        if not 400 <= self.error_status <= 599:
            raise ValueError(f"error_status must be a 4xx or 5xx status, not {self.error_status!r}")
        if self.retry_after is not None and not (
            isinstance(self.retry_after, int | float)
            and math.isfinite(self.retry_after)
            and self.retry_after >= 0
        ):
            raise ValueError(
                f"retry_after must be a non-negative number of seconds or None, "
                f"not {self.retry_after!r}"
            )
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

    Hand faults to the exchange in one of three ways: ``exchange.inject(...)``
    (a FIFO shared by all requests), ``exchange.inject_for(order_id, ...)`` (only
    requests for that order) or a schedule by request number
    (``FakeExchange(schedule=...)``, ``exchange.inject_at(n, fault)``,
    :func:`spread_faults`). They are consumed by requests that pass the gate
    (authentication, the header checks, the account check and the rate limit),
    and take the exchange's latency like any answer (except ``hang``).

    The odd answers (:meth:`reply`, :meth:`other_order`, :meth:`huge_body`,
    :meth:`endless_body`, :meth:`gzip_bomb`) stand for something that is not
    the exchange answering (a captive portal, a misrouted gateway, a broken
    proxy); all but :meth:`reply` leave the order live unless ``apply=True``.
    """

    kind: FaultKind
    status: int | None = None
    #: Apply the cancel before the fault (``error``, ``drop`` and the odd answers).
    apply: bool = False
    retry_after: str | None = None
    body: bytes | None = None
    headers: tuple[tuple[str, str], ...] = field(default=())
    location: str | None = None
    #: The other order's id (``other_order``).
    order_id: str | None = None
    #: Bytes of body (``huge_body``), decompressed bytes (``gzip_bomb``).
    size: int | None = None
    #: Seconds of idleness before the stale reply is written (``stale_reply``).
    idle: float | None = None

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
        ``headers`` sets it. With ``apply=False`` the order stays live, so::

            Fault.reply(200, b"<html>Sign in</html>", {"Content-Type": "text/html"}, apply=False)
            Fault.reply(200, b"", apply=False)

        are a captive portal's page and an empty 200 while the order is still live.
        """
        if not 200 <= status <= 599:
            raise ValueError(f"a reply status must be between 200 and 599, not {status!r}")
        pairs = tuple((headers or {}).items())
        for name, value in pairs:
            _check_header_value(name, value)
        return cls("reply", status=status, apply=apply, body=body, headers=pairs)

    @classmethod
    def other_order(cls, order_id: str | None = None, *, apply: bool = False) -> Fault:
        """Answer 200 with the documented body of another order (``order.orderId`` differs).

        The other order is ``exchange.orders[order_id]`` when the exchange has
        it; otherwise the asked order's fields under the id ``order_id``, by
        default the documented example's id (or a neighbour of it when that is
        the id asked). Nothing is cancelled unless ``apply=True``.
        """
        if order_id is not None and (not order_id or "/" in order_id):
            raise ValueError(f"order_id must be a non-empty str without '/', not {order_id!r}")
        return cls("other_order", status=200, apply=apply, order_id=order_id)

    @classmethod
    def huge_body(
        cls,
        size: int,
        *,
        status: int = 200,
        content_type: str = "application/json",
        apply: bool = False,
    ) -> Fault:
        """Answer ``status`` with ``size`` bytes of filler, streamed with a Content-Length.

        Nothing is cancelled unless ``apply=True``. The filler is not JSON.
        """
        _check_size(size)
        return cls._streamed("huge_body", size, status, content_type, apply)

    @classmethod
    def endless_body(
        cls, *, status: int = 200, content_type: str = "application/json", apply: bool = False
    ) -> Fault:
        """Answer ``status`` with a chunked body of filler that never ends.

        It streams until the client closes the connection or the exchange closes.
        Nothing is cancelled unless ``apply=True``.
        """
        return cls._streamed("endless_body", None, status, content_type, apply)

    @classmethod
    def gzip_bomb(
        cls,
        size: int,
        *,
        status: int = 200,
        content_type: str = "application/json",
        apply: bool = False,
    ) -> Fault:
        """Answer ``status`` with ``Content-Encoding: gzip``: ``size`` bytes once decompressed.

        On the wire it is about a thousandth of ``size`` (a 1 GiB bomb is about
        1 MB), with a Content-Length. Nothing is cancelled unless ``apply=True``.
        """
        _check_size(size)
        return cls._streamed("gzip_bomb", size, status, content_type, apply)

    @classmethod
    def _streamed(
        cls, kind: FaultKind, size: int | None, status: int, content_type: str, apply: bool
    ) -> Fault:
        if not 200 <= status <= 599:
            raise ValueError(f"a reply status must be between 200 and 599, not {status!r}")
        _check_header_value("content_type", content_type)
        return cls(
            kind, status=status, apply=apply, size=size, headers=(("Content-Type", content_type),)
        )

    @classmethod
    def stale_reply(cls, *, idle: float | None = None, status: int = 200) -> Fault:
        """Answer normally, then write a second, unsolicited answer on the same connection.

        With ``status=200`` the extra answer carries the documented body of this
        request's order, so the client's next request on that connection reads
        an answer about another order; with ``status=404`` it is the documented
        404, which names no order at all. With ``idle=None`` it is written just
        as the next request arrives on the connection (certain, whatever the
        machine's speed); with ``idle=seconds`` it is written that long after
        the real answer, if the connection is idle then (as a broken proxy
        would), else as with None. ``exchange.stale_replies_sent`` counts the
        extra answers written.
        """
        if idle is not None and not (math.isfinite(idle) and idle >= 0):
            raise ValueError(f"idle must be a non-negative number of seconds, not {idle!r}")
        if status not in (200, 404):
            raise ValueError(f"a stale reply is a 200 or a 404, not {status!r}")
        return cls("stale_reply", status=status, idle=idle)

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


def _check_size(size: int) -> None:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative int (bytes), not {size!r}")


def checked_faults(faults: Iterable[object]) -> tuple[Fault, ...]:
    """The faults as a tuple; TypeError for anything that is not a :class:`Fault`."""
    checked: list[Fault] = []
    for fault in faults:
        if not isinstance(fault, Fault):
            raise TypeError(
                f"expected Fault objects (Fault.error(), Fault.drop(), ...), got {fault!r}"
            )
        checked.append(fault)
    return tuple(checked)


def checked_outage(fault: object) -> Fault | None:
    """``fault`` if it can stand for an outage (an error, a drop or a hang that cancels nothing)."""
    if fault is None:
        return None
    (checked,) = checked_faults([fault])
    if checked.kind not in ("error", "drop", "hang") or checked.apply:
        raise ValueError(
            "an outage is Fault.error(status), Fault.drop() or Fault.hang(), cancelling nothing; "
            f"not {checked!r}"
        )
    return checked


def spread_faults(faults: Iterable[Fault], *, within: int, seed: int = 0) -> dict[int, Fault]:
    """A seeded schedule: each fault at its own request number from 1 to ``within``.

    Pass it as ``FakeExchange(schedule=...)``. The numbers depend only on the
    seed and the number of faults, so every fault is certain to fire once at
    least ``within`` requests have passed the gate, whatever the machine's speed::

        schedule = spread_faults([Fault.rate_limited("0.25")] * 3, within=500, seed=1)
    """
    listed = checked_faults(faults)
    if isinstance(within, bool) or not isinstance(within, int) or within < len(listed):
        raise ValueError(
            f"within must be an int of at least the number of faults ({len(listed)}), "
            f"not {within!r}"
        )
    rng = random.Random(f"asyncstop.testing schedule {seed}")
    numbers = rng.sample(range(1, within + 1), len(listed))
    return dict(zip(numbers, listed, strict=True))


_DROP_BEFORE: Final = Fault.drop()
_DROP_AFTER: Final = Fault.drop(after=True)
_HANG: Final = Fault.hang()


def _random_fault(faults: Faults, draw: float) -> Fault | None:
    threshold = faults.error_before
    if draw < threshold:
        return Fault.error(faults.error_status)
    threshold += faults.error_after
    if draw < threshold:
        return Fault.error(faults.error_status, after=True)
    threshold += faults.drop_before
    if draw < threshold:
        return _DROP_BEFORE
    threshold += faults.drop_after
    if draw < threshold:
        return _DROP_AFTER
    threshold += faults.hang
    if draw < threshold:
        return _HANG
    threshold += faults.rate_limited
    if draw < threshold:
        seconds = faults.retry_after
        return Fault.rate_limited(None if seconds is None else format_seconds(float(seconds)))
    return None


class FaultDraw:
    """Which fault a DELETE request past the gate meets, and how long it waits.

    Every such request is numbered (1, 2, ...) and takes exactly one number from
    the fault RNG and, when the latency is a distribution, one from the latency
    RNG, so the random sequence depends only on the seed and the order of
    requests. A fault scheduled for its number wins; then one queued for its
    order; then the shared FIFO; then the random draw. A scheduled fault never
    consumes a queued one: that one waits for the order's next request.
    """

    __slots__ = ("_by_order", "_fault_rng", "_latency_rng", "_schedule", "_script", "drawn")

    def __init__(self, seed: int, schedule: Mapping[int, Fault] | None = None) -> None:
        self._fault_rng = random.Random(f"asyncstop.testing faults {seed}")
        self._latency_rng = random.Random(f"asyncstop.testing latency {seed}")
        self._script: collections.deque[Fault] = collections.deque()
        self._by_order: dict[str, collections.deque[Fault]] = {}
        self._schedule: dict[int, Fault] = {}
        #: Requests numbered so far.
        self.drawn = 0
        for number, fault in (schedule or {}).items():
            self.inject_at(number, fault)

    @property
    def pending(self) -> int:
        """Faults not consumed yet: scheduled, per order and in the FIFO."""
        return (
            len(self._schedule)
            + len(self._script)
            + sum(len(queue) for queue in self._by_order.values())
        )

    def inject(self, faults: Iterable[object]) -> None:
        """Queue faults on the shared FIFO."""
        self._script.extend(checked_faults(faults))

    def inject_for(self, order_id: str, faults: Iterable[object]) -> None:
        """Queue faults for requests about ``order_id``."""
        checked = checked_faults(faults)
        if checked:
            self._by_order.setdefault(order_id, collections.deque()).extend(checked)

    def inject_at(self, number: int, fault: Fault) -> None:
        """Schedule ``fault`` for the request numbered ``number``."""
        checked_faults([fault])
        if isinstance(number, bool) or not isinstance(number, int) or number <= self.drawn:
            raise ValueError(
                f"a request number must be an int after the {self.drawn} requests "
                f"numbered so far, not {number!r}"
            )
        if number in self._schedule:
            raise ValueError(f"request {number} already has a scheduled fault")
        self._schedule[number] = fault

    def draw(self, faults: Faults, order_id: str | None) -> tuple[Fault | None, float]:
        """Number the next request; return its fault (None: answer normally) and its latency."""
        self.drawn += 1
        fault = _random_fault(faults, self._fault_rng.random())
        latency = faults.latency
        delay = (
            float(latency)
            if isinstance(latency, int | float)
            else latency.sample(self._latency_rng)
        )
        scheduled = self._schedule.pop(self.drawn, None) if self._schedule else None
        if scheduled is not None:
            return scheduled, delay
        if order_id is not None and order_id in self._by_order:
            queue = self._by_order[order_id]
            fault = queue.popleft()
            if not queue:
                del self._by_order[order_id]
        elif self._script:
            fault = self._script.popleft()
        return fault, delay
