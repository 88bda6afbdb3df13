"""The registry a :class:`~asyncstop.Watchdog` guards, as the bot sees it: a file or an owner.

A :class:`~asyncstop.StopOrderRegistry` file goes to the watchdog process as
its path, and its report file sits beside it. A
:class:`~asyncstop.PostgresRegistry` goes as its DSN and owner, over the same
private pipe as the token (the DSN may hold a password); the watchdog opens
connections of its own, logs its report (there is no file to put it beside),
and records a firing by itself in ``asyncstop_fires``, as the off-host service
does, so that the bot's next lease lists it in ``lease.fires``. Its fence is
the database's for a bot that holds a lease (see :mod:`._guarded`), and this
process's own (:func:`fence_bot_side`) otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import InvalidInputError
from .._logging import logger
from .._postgres._registry import PostgresRegistry, fence, registry_dsn, unfence
from ._protocol import RegistryFile, RegistryOwner

if TYPE_CHECKING:
    from .._registry import StopOrderRegistry

__all__ = ["describe", "fence_bot_side", "leftovers", "unfence_bot_side"]


def describe(
    registry: StopOrderRegistry | PostgresRegistry,
) -> tuple[RegistryFile | RegistryOwner, str, Path | None]:
    """What goes on the pipe, how logs name it (never the DSN), and the report file."""
    if isinstance(registry, PostgresRegistry):
        owner = registry.owner
        return RegistryOwner(dsn=registry_dsn(registry), owner=owner), f"owner {owner!r}", None
    path = getattr(registry, "path", None)
    if path is None:
        raise InvalidInputError(
            "the watchdog reads the registry from its own process: use a durable one, "
            "StopOrderRegistry.open(path) or PostgresRegistry.connect(dsn, owner=...)"
        )
    return RegistryFile(path=str(path)), str(path), Path(f"{path}.watchdog.jsonl")


async def leftovers(
    registry: StopOrderRegistry | PostgresRegistry, account_id: str | None, name: str
) -> tuple[tuple[str | None, str], ...]:
    """The registry's stops before the first start, as (account_id, order_id); logged."""
    stops: list[tuple[str | None, str]]
    if isinstance(registry, PostgresRegistry):
        items = [item for item, _ in await registry.entries()]
        stops = [(None, item) if isinstance(item, str) else item for item in items]
    else:
        stops = [(account, order) for account, order, _ in registry.stops()]
    if stops:
        logger.warning(
            "the registry %s already holds %d stop order(s) from an earlier session "
            "(its watchdog gave up or never ran): this watchdog protects them too; "
            "see watchdog.leftovers",
            name,
            len(stops),
        )
    return tuple((account or account_id, order) for account, order in stops)


def fence_bot_side(registry: StopOrderRegistry | PostgresRegistry, reason: str) -> None:
    """The watchdog fired by itself: a PostgresRegistry's ``add()`` raises WatchdogError.

    (A registry file is fenced in the file, by the watchdog process.)
    """
    if isinstance(registry, PostgresRegistry):
        fence(registry, reason)


def unfence_bot_side(registry: StopOrderRegistry | PostgresRegistry) -> None:
    """A new watchdog is armed: a PostgresRegistry's ``add()`` works again."""
    if isinstance(registry, PostgresRegistry):
        unfence(registry)
