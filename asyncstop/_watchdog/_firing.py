"""Persistent firing: cancel a store's stops round after round until each is settled.

A watchdog that fires by itself has nobody left to decide what comes next, so
it does not stop at one bulk cancel: an exchange in trouble (a flood of 503s,
timeouts) is exactly when bots die. :func:`fire_until_settled` runs rounds::

    outcome = await fire_until_settled(
        client, store,                   # an open AsyncStopClient; a FiringStore
        give_up_after=3600.0,            # seconds from the first round (None: never)
        round_deadline=10.0,             # each round's bulk-cancel deadline
        cancel_protective=False,         # leave stop-losses live (they stay in the store)
        on_round=record,                 # called (or awaited) after every round
    )
    outcome.ok                           # nothing may still be live
    outcome.pending                      # the last result of each order that may be

Each round reads ``await store.pending()`` afresh, cancels what may still be
live with ``client.cancel_stop_orders`` (bounded by ``round_deadline`` and by
the time left before ``give_up_after``), and hands the settled results to
``await store.settle(results)``. It ends when nothing is left to retry, or
gives up once ``give_up_after`` seconds have passed since it started.

* **Settled** means ``cancelled``, ``already_gone`` or ``not_found``; but under
  the report's not-found warning (most orders not found, none cancelled: a
  wrong account id or base URL) ``not_found`` is not settled. Those orders
  stay in the store and are not sent again: asking again cannot find them.
* **Refused** orders (``failed``: a 400, a 403, an invalid item) are logged
  once at ERROR, stay in the store and are not retried: the exchange said no
  and will say no again. A ``failed`` caused by a refused token (401) *is*
  retried, since a token provider may cure it by the next round.
* **Everything else** (``unknown``, ``not_sent``) is sent again next round.
* **Between rounds** it sleeps ``backoff_base * 2**(round - 1)`` seconds,
  jittered to between half and all of that (:func:`round_delay`), capped at
  ``max_backoff`` (30 s), and never less than the longest ``Retry-After`` a
  429 of the round asked for. The client keeps each account's 429 pause
  across rounds, so no request of the next round goes out inside one.
* **Each round** is logged at WARNING with its counts, and ``on_round`` gets a
  :class:`FiringRound` (a report file line, a database row).
* **Protective stops** (stop-losses guarding an open position) are not sent
  unless ``cancel_protective``; they stay in the store and are counted in
  :attr:`FiringOutcome.protective_left`.

The store is async so that a database store (PostgreSQL) fits as well as the
SQLite or in-memory :class:`~asyncstop.StopOrderRegistry`
(:class:`RegistryStore` adapts one). The caller owns the client and the store,
and wraps the call in ``asyncio.timeout()`` if it wants another bound.
Cancelling the call cancels the round in progress; nothing is left running.
"""

from __future__ import annotations

import asyncio
import inspect
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, Literal, NamedTuple, Protocol

from .._errors import AuthenticationError, RateLimitError
from .._logging import logger
from .._registry import mark_protective
from .._report import CancelOutcome, CancelReport, CancelResult

if TYPE_CHECKING:
    from .._client import AsyncStopClient
    from .._registry import StopOrderRegistry
    from .._report import OrderItem

__all__ = [
    "DEFAULT_BACKOFF_BASE",
    "DEFAULT_GIVE_UP_AFTER",
    "MAX_BACKOFF",
    "FiringOutcome",
    "FiringRound",
    "FiringStore",
    "RegisteredStop",
    "RegistryStore",
    "fire_until_settled",
    "round_delay",
]

#: Seconds a watchdog that fired by itself keeps trying before it gives up.
DEFAULT_GIVE_UP_AFTER: Final = 3600.0
#: The first pause between rounds, in seconds (it doubles each round).
DEFAULT_BACKOFF_BASE: Final = 1.0
#: The longest pause between two rounds, Retry-After aside.
MAX_BACKOFF: Final = 30.0
#: Ids named in one log record of refused orders; the rest are counted.
_IDS_LOGGED: Final = 10

_SETTLED: Final = frozenset(
    {CancelOutcome.CANCELLED, CancelOutcome.ALREADY_GONE, CancelOutcome.NOT_FOUND}
)


class RegisteredStop(NamedTuple):
    """One stop order in a store: ``account_id`` None means the client's own account."""

    account_id: str | None
    order_id: str
    protective: bool = False

    @property
    def item(self) -> OrderItem:
        """The bulk-cancel item for this stop."""
        return self.order_id if self.account_id is None else (self.account_id, self.order_id)


class FiringStore(Protocol):
    """Where persistent firing reads the stops to cancel and drops the settled ones."""

    async def pending(self) -> Sequence[RegisteredStop]:
        """Every stop that may still be live, protective ones included."""
        ...

    async def settle(self, results: Sequence[CancelResult]) -> None:
        """Drop the stops these results settled.

        Each result names the account its request was for; a stop stored
        without an account was sent for the client's ``account_id``.
        """
        ...


class RegistryStore:
    """A :class:`~asyncstop.StopOrderRegistry` (in memory or SQLite) as a :class:`FiringStore`."""

    __slots__ = ("default_account_id", "registry")

    def __init__(self, registry: StopOrderRegistry, *, default_account_id: str | None) -> None:
        self.registry = registry
        self.default_account_id = default_account_id

    async def pending(self) -> Sequence[RegisteredStop]:
        return [RegisteredStop(*entry) for entry in self.registry.stops()]

    async def settle(self, results: Sequence[CancelResult]) -> None:
        self.registry.discard_settled_many(
            [(r.order_id, r.account_id) for r in results],
            default_account_id=self.default_account_id,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class FiringRound:
    """What one round did: given to ``on_round`` and logged."""

    #: 1 for the first round.
    number: int
    #: The round's bulk-cancel report (empty when nothing was sent).
    report: CancelReport
    #: Orders that may still be live after this round and will be sent again.
    retrying: tuple[CancelResult, ...]
    #: Orders refused for good so far (``failed``, not-found under the warning).
    refused: tuple[CancelResult, ...]
    #: Protective stops left live in the store on purpose.
    protective_left: int
    #: Seconds until the next round, or None when this was the last.
    next_delay: float | None
    #: True when this was the last round because ``give_up_after`` passed.
    gave_up: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class FiringOutcome:
    """How persistent firing ended."""

    #: Rounds run (0 when the store held nothing to cancel).
    rounds: int
    #: Seconds from the start to the end.
    elapsed: float
    #: True when ``give_up_after`` passed with orders still to retry.
    gave_up: bool
    #: The final outcome of each order fired at, by outcome.
    counts: dict[CancelOutcome, int] = field(default_factory=dict)
    #: The last result of each order that may still be live (refused ones included).
    pending: tuple[CancelResult, ...] = ()
    #: Those of :attr:`pending` refused for good (not retried).
    refused: tuple[CancelResult, ...] = ()
    #: Protective stops left live in the store on purpose.
    protective_left: tuple[RegisteredStop, ...] = ()

    @property
    def ok(self) -> bool:
        """True when no order fired at may still be live (protective ones left aside)."""
        return not self.pending


def round_delay(number: int, rng: random.Random, *, base: float, cap: float = MAX_BACKOFF) -> float:
    """Seconds to wait after round ``number``: ``base * 2**(number-1)``, capped, then jittered.

    The jitter draws between half and all of it, so that watchdogs of many
    bots that died together do not return to the exchange in step.
    """
    ceiling = min(cap, base * 2.0 ** min(number - 1, 60))
    return ceiling * rng.uniform(0.5, 1.0)


def _key(account_id: str | None, order_id: str, default: str | None) -> tuple[str, str]:
    """One key per order on the exchange: a stop stored without an account is the client's."""
    return (account_id if account_id is not None else (default or ""), order_id)


def _retry_after(results: Sequence[CancelResult]) -> float:
    longest = 0.0
    for result in results:
        err = result.error
        if isinstance(err, RateLimitError) and err.retry_after is not None:
            longest = max(longest, err.retry_after)
    return longest


async def fire_until_settled(
    client: AsyncStopClient,
    store: FiringStore,
    *,
    give_up_after: float | None,
    round_deadline: float | None,
    cancel_protective: bool,
    concurrency: int | None = None,
    rate_limit: float | None = None,
    hedge: float | Literal["auto"] | None = None,
    on_round: Callable[[FiringRound], object] | None = None,
    backoff_base: float = DEFAULT_BACKOFF_BASE,
    max_backoff: float = MAX_BACKOFF,
    rng: random.Random | None = None,
) -> FiringOutcome:
    """Cancel the store's stops round after round until settled or ``give_up_after`` passed.

    See the module docstring for the rules. ``client`` must be open.
    """
    rng = rng if rng is not None else random.Random()
    default = client.account_id
    started = time.monotonic()
    final: dict[tuple[str, str], CancelResult] = {}
    refused: dict[tuple[str, str], CancelResult] = {}
    protective: list[RegisteredStop] = []
    number = 0
    gave_up = False
    while True:
        stops = await store.pending()
        protective = [s for s in stops if s.protective and not cancel_protective]
        targets = [
            s
            for s in stops
            if (cancel_protective or not s.protective)
            and _key(s.account_id, s.order_id, default) not in refused
        ]
        if not targets:
            break
        left = None if give_up_after is None else give_up_after - (time.monotonic() - started)
        if left is not None and left <= 0:
            gave_up = True
            break
        number += 1
        deadline = round_deadline if left is None else min(left, round_deadline or left)
        report = await client.cancel_stop_orders(
            [s.item for s in targets],
            deadline=deadline,
            concurrency=concurrency,
            rate_limit=rate_limit,
            hedge=hedge,
        )
        marked = frozenset(_key(s.account_id, s.order_id, default) for s in targets if s.protective)
        if marked:
            report.results[:] = mark_protective(report.results, marked)
        warned = report.warning is not None
        settled: list[CancelResult] = []
        retrying: list[CancelResult] = []
        newly_refused: list[CancelResult] = []
        for result in report.results:
            key = _key(result.account_id, result.order_id, default)
            final[key] = result
            if result.outcome in _SETTLED and not (
                warned and result.outcome is CancelOutcome.NOT_FOUND
            ):
                settled.append(result)
            elif result.outcome is CancelOutcome.NOT_FOUND or (
                result.outcome is CancelOutcome.FAILED
                and not isinstance(result.error, AuthenticationError)
            ):
                if key not in refused:
                    refused[key] = result
                    newly_refused.append(result)
            else:
                retrying.append(result)
        if settled:
            await store.settle(settled)
        if newly_refused:
            _log_refused(newly_refused, report.warning)
        left = None if give_up_after is None else give_up_after - (time.monotonic() - started)
        delay: float | None = None
        if retrying:
            delay = max(
                round_delay(number, rng, base=backoff_base, cap=max_backoff),
                _retry_after(retrying),
            )
            if left is not None:
                if left <= 0:
                    gave_up = True
                    delay = None
                else:
                    delay = min(delay, left)
        record = FiringRound(
            number=number,
            report=report,
            retrying=tuple(retrying),
            refused=tuple(refused.values()),
            protective_left=len(protective),
            next_delay=delay,
            gave_up=gave_up,
        )
        _log_round(record)
        if on_round is not None:
            done = on_round(record)
            if inspect.isawaitable(done):
                await done
        if delay is None:
            break
        await asyncio.sleep(delay)
    if gave_up:
        logger.error(
            "persistent firing gave up after %.0f s (give_up_after): %d order(s) may still be "
            "live and stay in the store",
            time.monotonic() - started,
            sum(1 for k, r in final.items() if k in refused or r.outcome not in _SETTLED),
        )
    counts = dict.fromkeys(CancelOutcome, 0)
    pending: list[CancelResult] = []
    for key, result in final.items():
        counts[result.outcome] += 1
        if key in refused or result.outcome not in _SETTLED:
            pending.append(result)
    return FiringOutcome(
        rounds=number,
        elapsed=time.monotonic() - started,
        gave_up=gave_up,
        counts=counts,
        pending=tuple(pending),
        refused=tuple(refused.values()),
        protective_left=tuple(protective),
    )


def _log_round(record: FiringRound) -> None:
    counts = ", ".join(f"{v} {k.value}" for k, v in record.report.counts.items() if v)
    if record.next_delay is not None:
        then = f"next round in {record.next_delay:.1f} s"
    elif record.gave_up:
        then = "giving up (give_up_after)"
    else:
        then = "done"
    logger.warning(
        "firing round %d: %s; %d may still be live and are retried, %d refused, "
        "%d protective left live; %s",
        record.number,
        counts or "nothing sent",
        len(record.retrying),
        len(record.refused),
        record.protective_left,
        then,
    )


def _log_refused(results: Sequence[CancelResult], warning: str | None) -> None:
    first = results[0]
    ids = ", ".join(r.order_id for r in results[:_IDS_LOGGED])
    more = f" and {len(results) - _IDS_LOGGED} more" if len(results) > _IDS_LOGGED else ""
    why = (
        warning
        if warning is not None and first.outcome is CancelOutcome.NOT_FOUND
        else f"{type(first.error).__name__}: {first.error}"
    )
    logger.error(
        "%d order(s) refused for good, kept in the store and not sent again (%s%s): %s",
        len(results),
        ids,
        more,
        why,
    )
