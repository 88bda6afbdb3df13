"""The off-host service (``asyncstop watchdog --store DSN``): fire for owners whose lease expired.

It runs on another machine than the bots, for as long as systemd keeps it.
Every ``poll_interval`` it looks for an owner whose lease expired by the
database's clock, and claims it in one transaction (``SELECT ... FOR UPDATE
SKIP LOCKED``): the owner's epoch is raised, which fences the dead bot's
writes, and the claim names this service and expires after ``claim_ttl``
unless renewed. Two or more services can run against one database: a claimed
owner is skipped by the others, so each order is cancelled by one service
only. A service that dies while firing stops renewing its claim; another
takes the owner over when the claim expires.

The stops of the claimed epoch and older are cancelled with the persistent
firing (:func:`._firing.fire_until_settled`): rounds until settled or
``give_up_after``, protective stops left live unless ``cancel_protective``.
Each fire is recorded in ``asyncstop_fires`` (the counts, what may still be
live, protective stops left) and logged in one line naming the owner.
Cancelling :meth:`OffHostService.run` (SIGTERM) hands claims in progress back
at once, so another service goes on with them.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from .._logging import logger
from .._postgres._db import Database, db_errors, ensure_schema
from .._report import CancelOutcome, report_record
from ._firing import DEFAULT_GIVE_UP_AFTER, FiringRound, RegisteredStop, fire_until_settled

if TYPE_CHECKING:
    import asyncpg

    from .._client import AsyncStopClient
    from .._report import CancelResult
    from ._firing import FiringOutcome

__all__ = [
    "DEFAULT_CLAIM_TTL",
    "DEFAULT_POLL_INTERVAL",
    "DEFAULT_ROUND_DEADLINE",
    "RECORD_END",
    "RECORD_START",
    "OffHostService",
    "OwnerStore",
    "default_service_name",
    "fire_record",
]

#: Seconds between two looks for expired leases.
DEFAULT_POLL_INTERVAL: Final = 0.5
#: Seconds a service's claim on an owner lives without renewal.
DEFAULT_CLAIM_TTL: Final = 30.0
#: Each firing round's bulk-cancel deadline.
DEFAULT_ROUND_DEADLINE: Final = 10.0
#: Ids of orders that may still be live kept in a fire's record.
_IDS_RECORDED: Final = 1000
#: Seconds to hand a claim back on the way out.
_HANDBACK_TIMEOUT: Final = 2.0

_FIND: Final = """
    SELECT owner, epoch, fire_epoch, expires_at < clock_timestamp() AS expired
    FROM asyncstop_owners
    WHERE (claim_expires_at IS NULL AND expires_at < clock_timestamp())
       OR claim_expires_at < clock_timestamp()
    ORDER BY coalesce(claim_expires_at, expires_at)
    LIMIT 1
    FOR UPDATE SKIP LOCKED
"""
_CLAIM_EXPIRED: Final = """
    UPDATE asyncstop_owners SET fire_epoch = epoch, epoch = epoch + 1, expires_at = NULL,
        claimed_by = $2, claim_expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE owner = $1 RETURNING fire_epoch
"""
_CLAIM_STALLED: Final = """
    UPDATE asyncstop_owners SET
        claimed_by = $2, claim_expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE owner = $1 RETURNING fire_epoch
"""
RECORD_START: Final = """
    INSERT INTO asyncstop_fires (owner, epoch, service) VALUES ($1, $2, $3) RETURNING id
"""
_RENEW_CLAIM: Final = """
    UPDATE asyncstop_owners SET claim_expires_at = clock_timestamp() + make_interval(secs => $3)
    WHERE owner = $1 AND claimed_by = $2 RETURNING 1
"""
RECORD_END: Final = """
    UPDATE asyncstop_fires SET finished_at = clock_timestamp(), record = $2::jsonb WHERE id = $1
"""
_UNCLAIM: Final = """
    UPDATE asyncstop_owners SET claimed_by = NULL, claim_expires_at = NULL, fire_epoch = NULL
    WHERE owner = $1 AND claimed_by = $2
"""
_HAND_BACK: Final = """
    UPDATE asyncstop_owners SET claim_expires_at = clock_timestamp()
    WHERE owner = $1 AND claimed_by = $2
"""
_PENDING: Final = """
    SELECT account_id, order_id, protective FROM asyncstop_stop_orders
    WHERE owner = $1 AND ($2::bigint IS NULL OR epoch <= $2) ORDER BY seq
"""
_SETTLE: Final = """
    DELETE FROM asyncstop_stop_orders
    WHERE owner = $1 AND account_id = $2 AND order_id = $3
      AND ($4::bigint IS NULL OR epoch <= $4)
"""


def default_service_name() -> str:
    """``host:pid``: how a claim names the service that holds it."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class _Claim:
    owner: str
    fire_epoch: int
    fire_id: int


class OwnerStore:
    """An owner's stops in PostgreSQL as a FiringStore: those of ``fire_epoch`` and older.

    ``fire_epoch`` None takes every stop of the owner (the local watchdog's
    firing). A service's claim bounds it, so that a new lease's stops are not
    fired at.
    """

    def __init__(
        self, db: Database, owner: str, fire_epoch: int | None, default_account_id: str | None
    ) -> None:
        self._db = db
        self._owner = owner
        self._epoch = fire_epoch
        self._default = default_account_id

    async def pending(self) -> Sequence[RegisteredStop]:
        rows = await self._db.run(lambda conn: conn.fetch(_PENDING, self._owner, self._epoch))
        return [
            RegisteredStop(row["account_id"] or None, row["order_id"], row["protective"])
            for row in rows
        ]

    async def settle(self, results: Sequence[CancelResult]) -> None:
        owner, epoch = self._owner, self._epoch
        keys = []
        for result in results:
            keys.append((owner, result.account_id, result.order_id, epoch))
            if result.account_id == self._default:
                keys.append((owner, "", result.order_id, epoch))
        if keys:
            await self._db.run(lambda conn: conn.executemany(_SETTLE, keys))


class OffHostService:
    """Watches every owner's lease in ``dsn`` and cancels the stops of the expired ones.

    ``client`` is an open :class:`~asyncstop.AsyncStopClient` (its token from a
    command, typically); its ``account_id`` is used for stops registered
    without one. :meth:`run` goes on until cancelled. The DSN is never logged.
    """

    def __init__(
        self,
        dsn: str,
        client: AsyncStopClient,
        *,
        name: str | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        claim_ttl: float = DEFAULT_CLAIM_TTL,
        give_up_after: float | None = DEFAULT_GIVE_UP_AFTER,
        round_deadline: float = DEFAULT_ROUND_DEADLINE,
        cancel_protective: bool = False,
        concurrency: int | None = None,
    ) -> None:
        self._db = Database(dsn, max_connections=8)
        self.client = client
        self.name = name or default_service_name()
        self.poll_interval = poll_interval
        self.claim_ttl = claim_ttl
        self.give_up_after = give_up_after
        self.round_deadline = round_deadline
        self.cancel_protective = cancel_protective
        self.concurrency = concurrency
        #: Fires finished by this service since it started.
        self.fires = 0

    async def run(self) -> None:
        """Claim and fire until cancelled; database errors are logged and retried."""
        try:
            await self._wait_for_schema()
            logger.warning("off-host service %r watching the leases", self.name)
            failing = False
            async with asyncio.TaskGroup() as firing:
                while True:
                    try:
                        claim = await self._db.run(self._claim_one)
                    except db_errors() as err:
                        # The first failure of a run at ERROR: no lease is watched meanwhile.
                        logger.log(
                            logging.DEBUG if failing else logging.ERROR,
                            "off-host service: the database did not answer (%s: %s); "
                            "no lease is watched until it does",
                            type(err).__name__,
                            err,
                        )
                        failing = True
                        claim = None
                    else:
                        if failing:
                            logger.warning("off-host service: the database answers again")
                        failing = False
                    if claim is not None:
                        firing.create_task(self._fire(claim), name=f"asyncstop-fire-{claim.owner}")
                        continue
                    await asyncio.sleep(self.poll_interval)
        finally:
            await self._db.close()

    async def _wait_for_schema(self) -> None:
        failures = 0
        while True:
            try:
                await self._db.run(ensure_schema)
                return
            except db_errors() as err:
                # The first failure at ERROR, then one a minute: no lease is watched meanwhile.
                logger.log(
                    logging.ERROR if failures % 60 == 0 else logging.DEBUG,
                    "off-host service: cannot reach the database (%s: %s); retrying every second",
                    type(err).__name__,
                    err,
                )
                failures += 1
                await asyncio.sleep(max(self.poll_interval, 1.0))

    async def _claim_one(self, conn: asyncpg.Connection) -> _Claim | None:
        async with conn.transaction():
            row = await conn.fetchrow(_FIND)
            if row is None:
                return None
            claim_sql = _CLAIM_EXPIRED if row["expired"] else _CLAIM_STALLED
            fire_epoch = await conn.fetchval(claim_sql, row["owner"], self.name, self.claim_ttl)
            fire_id = await conn.fetchval(RECORD_START, row["owner"], fire_epoch, self.name)
        how = "lease expired" if row["expired"] else "a stalled claim taken over"
        logger.warning(
            "owner %r claimed (%s): cancelling its stops of epoch %d and older",
            row["owner"],
            how,
            fire_epoch,
        )
        return _Claim(row["owner"], int(fire_epoch), int(fire_id))

    async def _fire(self, claim: _Claim) -> None:
        store = OwnerStore(self._db, claim.owner, claim.fire_epoch, self.client.account_id)
        last_round: list[FiringRound] = []
        loop = asyncio.get_running_loop()
        renewer = loop.create_task(self._keep_claim(claim))
        firing = loop.create_task(
            fire_until_settled(
                self.client,
                store,
                give_up_after=self.give_up_after,
                round_deadline=self.round_deadline,
                cancel_protective=self.cancel_protective,
                concurrency=self.concurrency,
                on_round=last_round.append,
            )
        )
        try:
            done, _ = await asyncio.wait({firing, renewer}, return_when=asyncio.FIRST_COMPLETED)
            if firing not in done:
                # The claim was lost (taken over after it expired): stop, the other goes on.
                firing.cancel()
                await asyncio.gather(firing, return_exceptions=True)
                logger.error("owner %r: the claim was lost while firing; stopped", claim.owner)
                return
            outcome = firing.result()
        except asyncio.CancelledError:
            firing.cancel()
            await asyncio.gather(firing, return_exceptions=True)
            await asyncio.shield(self._hand_back(claim))
            raise
        except Exception as err:
            logger.error(
                "owner %r: firing failed (%s: %s); the claim expires and is taken again",
                claim.owner,
                type(err).__name__,
                err,
            )
            return
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        record = fire_record(claim.owner, claim.fire_epoch, self.name, outcome, last_round)
        _log_fire(claim, outcome)
        try:
            await self._db.run(lambda conn: self._finish(conn, claim, record))
        except db_errors() as err:
            logger.error(
                "owner %r: the fire's record could not be written (%s); the claim expires",
                claim.owner,
                type(err).__name__,
            )
            return
        self.fires += 1

    async def _finish(
        self, conn: asyncpg.Connection, claim: _Claim, record: dict[str, Any]
    ) -> None:
        async with conn.transaction():
            await conn.execute(RECORD_END, claim.fire_id, json.dumps(record))
            await conn.execute(_UNCLAIM, claim.owner, self.name)

    async def _keep_claim(self, claim: _Claim) -> None:
        """Renew the claim every claim_ttl/3; return if it was taken over or cannot be kept."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.claim_ttl
        while True:
            await asyncio.sleep(self.claim_ttl / 3)
            sent = loop.time()
            try:
                kept = await self._db.run(
                    lambda conn: conn.fetchval(
                        _RENEW_CLAIM, claim.owner, self.name, self.claim_ttl
                    ),
                    limit=max(0.1, deadline - sent),
                )
            except db_errors():
                if loop.time() >= deadline:
                    return
                continue
            if kept is None:
                return
            deadline = sent + self.claim_ttl

    async def _hand_back(self, claim: _Claim) -> None:
        try:
            await self._db.run(
                lambda conn: conn.execute(_HAND_BACK, claim.owner, self.name),
                limit=_HANDBACK_TIMEOUT,
            )
        except db_errors():
            return
        logger.warning("owner %r: claim handed back for another service to go on", claim.owner)


def fire_record(
    owner: str, epoch: int, service: str, outcome: FiringOutcome, rounds: list[FiringRound]
) -> dict[str, Any]:
    """The JSON row of one fire: counts, what may still be live, protective stops left.

    ``epoch`` is the owner's epoch the fire was for; ``service`` who fired (a
    service's name, or ``watchdog host:pid`` for a bot's own watchdog).
    """
    pending = [[r.account_id, r.order_id] for r in outcome.pending]
    return {
        "owner": owner,
        "epoch": epoch,
        "service": service,
        "ok": outcome.ok,
        "rounds": outcome.rounds,
        "elapsed": round(outcome.elapsed, 6),
        "gave_up": outcome.gave_up,
        "counts": {k.value: v for k, v in outcome.counts.items()},
        "pending_count": len(pending),
        "pending": pending[:_IDS_RECORDED],
        "protective_left": [
            [s.account_id, s.order_id] for s in outcome.protective_left[:_IDS_RECORDED]
        ],
        "last_round": report_record(rounds[-1].report, max_ids=_IDS_RECORDED) if rounds else None,
    }


def _log_fire(claim: _Claim, outcome: FiringOutcome) -> None:
    counts = outcome.counts
    logger.warning(
        "fired for owner %r (epoch %d): %d cancelled, %d already gone, %d not found, "
        "%d may still be live, %d protective left live; %d round(s) in %.1f s%s",
        claim.owner,
        claim.fire_epoch,
        counts.get(CancelOutcome.CANCELLED, 0),
        counts.get(CancelOutcome.ALREADY_GONE, 0),
        counts.get(CancelOutcome.NOT_FOUND, 0),
        len(outcome.pending),
        len(outcome.protective_left),
        outcome.rounds,
        outcome.elapsed,
        " (gave up)" if outcome.gave_up else "",
    )
