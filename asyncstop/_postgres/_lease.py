"""The lease: a bot's claim to be alive, renewed in PostgreSQL and judged by its clock.

Three rules make it safe when the bot, its network or its machine fails:

* **Expiry by the database's clock.** A renewal sets ``expires_at =
  clock_timestamp() + ttl`` on the server; an off-host service fires only once
  the server's own clock has passed it. No two machines' clocks are compared.
* **The bot knows first.** The bot counts its lease lost ``ttl`` after it *sent*
  its last renewal that succeeded. The server ran that renewal after it was
  sent, so its ``expires_at`` is later: a bot cut off from the database learns
  it lost the lease before any service may fire for it.
* **Fencing by epoch.** Each new lease, and each claim by a service, raises the
  owner's epoch. ``add()`` inserts its row only while the owner's epoch is the
  lease's and its ``expires_at`` is in the future, in the same statement, with
  the owner's row locked: a bot that lost its lease cannot register a stop
  that a service will not see.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final

from .._errors import InvalidInputError, LeaseLostError
from .._logging import logger
from ._db import Database, db_errors

if TYPE_CHECKING:
    import asyncpg

    from ._registry import PostgresRegistry

__all__ = ["DEFAULT_LEASE_TTL", "Lease"]

#: Seconds a lease lives without a renewal.
DEFAULT_LEASE_TTL: Final = 10.0
#: Renewals per ttl: one every ttl/3, so two may fail before the lease is lost.
_RENEWALS_PER_TTL: Final = 3
#: Seconds between attempts after a failed renewal (capped by ttl/10).
_RETRY_PAUSE: Final = 0.2

_ACQUIRE: Final = """
    INSERT INTO asyncstop_owners (owner, epoch, ttl, expires_at, holder, leased_at)
    VALUES ($1, 1, $2, clock_timestamp() + make_interval(secs => $2), $3, clock_timestamp())
    ON CONFLICT (owner) DO UPDATE SET
        epoch = asyncstop_owners.epoch + 1,
        ttl = EXCLUDED.ttl,
        expires_at = EXCLUDED.expires_at,
        holder = EXCLUDED.holder,
        leased_at = EXCLUDED.leased_at
    RETURNING epoch
"""
_PREVIOUS: Final = """
    SELECT expires_at > clock_timestamp() AS live, claimed_by, leased_at
    FROM asyncstop_owners WHERE owner = $1
"""
# The fires that hit the previous holder: recorded since it took its lease.
_FIRES_SINCE: Final = """
    SELECT record FROM asyncstop_fires
    WHERE owner = $1 AND claimed_at >= $2 AND record IS NOT NULL ORDER BY id
"""
_RENEW: Final = """
    UPDATE asyncstop_owners SET expires_at = clock_timestamp() + make_interval(secs => ttl)
    WHERE owner = $1 AND epoch = $2 AND expires_at > clock_timestamp()
    RETURNING 1
"""
_RELEASE: Final = """
    UPDATE asyncstop_owners SET expires_at = NULL WHERE owner = $1 AND epoch = $2 RETURNING 1
"""


class Lease:
    """A bot's lease on its owner name; ``async with registry.lease(ttl=10.0) as lease:``.

    Entering takes the lease (over any earlier holder: a new lease has a higher
    epoch, and the old holder's ``add()`` then raises
    :class:`~asyncstop.LeaseLostError`) and starts renewing it every ttl/3 on
    its own connection. :attr:`lost` turns True, and :meth:`wait_lost`
    returns, once ``ttl`` has passed since the last renewal that succeeded was
    sent, or as soon as the database refuses a renewal or an ``add()``. Leaving
    the block normally releases the lease: no service fires, the orders stay
    registered. Leaving it with an exception only stops renewing, so the lease
    expires and an off-host service cancels the owner's stops.
    """

    def __init__(self, registry: PostgresRegistry, dsn: str, *, ttl: float) -> None:
        if not (isinstance(ttl, int | float) and 0.3 <= ttl <= 86400):
            raise InvalidInputError(f"lease ttl must be 0.3 to 86400 seconds, not {ttl!r}")
        self.registry = registry
        self.owner = registry.owner
        self.ttl = float(ttl)
        #: The owner's epoch this lease holds (0 before entering).
        self.epoch = 0
        #: Renewals that succeeded.
        self.renewals = 0
        #: Why the lease was lost, once it is.
        self.lost_reason: str | None = None
        #: True when entering took over a lease that was still live.
        self.took_over = False
        #: The records of the fires for this owner since its previous lease was taken
        #: (oldest first), by an off-host service or by the bot's own watchdog (whose
        #: ``service`` is ``watchdog host:pid``): what a bot that comes back needs to know.
        self.fires: list[dict[str, Any]] = []
        self._db = Database(dsn, max_connections=1)
        self._deadline = 0.0
        self._lost = asyncio.Event()
        self._renewer: asyncio.Task[None] | None = None
        self._entered = False

    # -- state ------------------------------------------------------------------------------

    @property
    def deadline(self) -> float:
        """The ``loop.time()`` at which the bot counts the lease lost without a renewal."""
        return self._deadline

    @property
    def lost(self) -> bool:
        """True once the lease is lost (judged by the bot's own deadline or the database)."""
        if self._lost.is_set():
            return True
        if self._entered and asyncio.get_running_loop().time() >= self._deadline:
            self._set_lost(f"no renewal succeeded within the ttl of {self.ttl:g} s")
            return True
        return False

    async def wait_lost(self) -> None:
        """Return once the lease is lost (at once if it is)."""
        if not self.lost:
            await self._lost.wait()

    def check(self) -> None:
        """Raise LeaseLostError if the lease is lost."""
        if self.lost:
            raise LeaseLostError(
                f"the lease of owner {self.owner!r} is lost ({self.lost_reason}): "
                "take a new lease before registering stops"
            )

    def _set_lost(self, reason: str) -> None:
        if self._lost.is_set():
            return
        self.lost_reason = reason
        self._lost.set()
        logger.error(
            "lease of owner %r (epoch %d) lost: %s; add() raises LeaseLostError, and an "
            "off-host service may be cancelling this owner's stops",
            self.owner,
            self.epoch,
            reason,
        )

    def refused(self) -> LeaseLostError:
        """The database refused a write of this lease: it is lost; the error to raise."""
        self._set_lost("the database refused it: the lease expired or was taken over")
        return LeaseLostError(
            f"the lease of owner {self.owner!r} is lost (the database refused epoch "
            f"{self.epoch}): take a new lease before registering stops"
        )

    # -- lifetime ---------------------------------------------------------------------------

    async def __aenter__(self) -> Lease:
        if self._entered or self._lost.is_set():
            raise RuntimeError("a lease is entered once; take a new one with registry.lease()")
        self.registry._lease_entering(self)
        try:
            loop = asyncio.get_running_loop()
            holder = f"{socket.gethostname()}:{os.getpid()}"

            async def acquire(conn: asyncpg.Connection) -> tuple[int, bool, str | None]:
                async with conn.transaction():
                    previous = await conn.fetchrow(_PREVIOUS + " FOR UPDATE", self.owner)
                    epoch = await conn.fetchval(_ACQUIRE, self.owner, self.ttl, holder)
                    if previous is not None and previous["leased_at"] is not None:
                        rows = await conn.fetch(_FIRES_SINCE, self.owner, previous["leased_at"])
                        self.fires = [json.loads(row["record"]) for row in rows]
                live = bool(previous and previous["live"])
                return int(epoch), live, previous["claimed_by"] if previous else None

            sent = loop.time()
            self.epoch, self.took_over, claimed_by = await self._db.run(acquire)
            self._deadline = sent + self.ttl
            self._entered = True
        except BaseException:
            self.registry._lease_left(self)
            await self._db.close()
            raise
        if self.took_over:
            logger.warning(
                "lease of owner %r taken over from a live holder (epoch %d): its adds now fail",
                self.owner,
                self.epoch,
            )
        for fire in self.fires:
            counts = ", ".join(f"{n} {k}" for k, n in fire.get("counts", {}).items() if n)
            logger.warning(
                "owner %r: since its previous lease, %r fired for it: %s; "
                "%s may still be live, %d protective left live (lease.fires)",
                self.owner,
                fire.get("service"),
                counts or "nothing sent",
                fire.get("pending_count"),
                len(fire.get("protective_left", ())),
            )
        if claimed_by is not None:
            logger.warning(
                "owner %r: the service %r is cancelling the stops registered before this lease",
                self.owner,
                claimed_by,
            )
        logger.info(
            "lease of owner %r taken (epoch %d, ttl %g s)", self.owner, self.epoch, self.ttl
        )
        self._renewer = loop.create_task(self._renew_forever(), name="asyncstop-lease")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
        try:
            if exc_type is None and not self.lost:
                await self._release()
            elif exc_type is not None and not self._lost.is_set():
                logger.warning(
                    "lease of owner %r left with %s: not released; it expires within %g s "
                    "and an off-host service then cancels the owner's stops",
                    self.owner,
                    exc_type.__name__,
                    self.ttl,
                )
        finally:
            self._set_lost_quietly("the lease was left")
            self.registry._lease_left(self)
            await self._db.close()

    def _set_lost_quietly(self, reason: str) -> None:
        if not self._lost.is_set():
            self.lost_reason = reason
            self._lost.set()

    async def _release(self) -> None:
        try:
            released = await self._db.run(
                lambda conn: conn.fetchval(_RELEASE, self.owner, self.epoch)
            )
        except db_errors() as err:
            logger.error(
                "lease of owner %r could not be released (%s): it expires within %g s and "
                "an off-host service then cancels the owner's stops",
                self.owner,
                type(err).__name__,
                self.ttl,
            )
            return
        if released is None:
            logger.warning("lease of owner %r was taken over before it was released", self.owner)
        else:
            logger.info("lease of owner %r released (epoch %d)", self.owner, self.epoch)

    async def _renew_forever(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.ttl / _RENEWALS_PER_TTL
        next_at = self._deadline - self.ttl + interval
        failing = False
        while not self.lost:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            sent = loop.time()
            if sent >= self._deadline:
                self.lost  # noqa: B018 - reading it records the loss
                return
            try:
                async with asyncio.timeout_at(self._deadline):
                    renewed = await self._db.run(
                        lambda conn: conn.fetchval(_RENEW, self.owner, self.epoch),
                        limit=self._deadline - sent,
                    )
            except db_errors() as err:
                if loop.time() >= self._deadline:
                    self._set_lost(
                        f"no renewal succeeded within the ttl of {self.ttl:g} s "
                        f"(last: {type(err).__name__})"
                    )
                    return
                # The first failure of a run at WARNING; the retries (5 a second) at DEBUG.
                logger.log(
                    logging.DEBUG if failing else logging.WARNING,
                    "lease of owner %r: renewal failed (%s: %s); retrying until %.1f s "
                    "before the lease counts as lost",
                    self.owner,
                    type(err).__name__,
                    err,
                    self._deadline - loop.time(),
                )
                failing = True
                next_at = loop.time() + min(_RETRY_PAUSE, self.ttl / 10)
                continue
            if renewed is None:
                self._set_lost("the database refused the renewal: it expired or was taken over")
                return
            self._deadline = sent + self.ttl
            self.renewals += 1
            next_at = sent + interval
            if failing:
                failing = False
                logger.warning("lease of owner %r renewed again: it is held", self.owner)

    def __repr__(self) -> str:
        state = "lost" if self._lost.is_set() else "held" if self._entered else "new"
        return f"<Lease owner={self.owner!r} epoch={self.epoch} ttl={self.ttl:g} {state}>"
