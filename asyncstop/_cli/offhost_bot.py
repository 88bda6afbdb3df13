"""``python -m asyncstop._cli.offhost_bot``: a bot that keeps its stops in PostgreSQL under a lease.

The bot of ``asyncstop demo``'s third part (and of the off-host tests). It
reads one JSON line of settings on stdin (:class:`OffHostBotConfig`; the DSN
never goes on its command line or in its environment), and for each owner
connects a :class:`asyncstop.PostgresRegistry`, takes a lease, and registers
its stops. Then it prints JSON lines on stdout: ``ready`` once every stop is
registered, ``renewed`` after each renewal of the first owner's lease (with
the ``loop.time()`` it was sent at), ``lost`` when a lease is lost. It runs
until its stdin ends, then leaves the leases normally (releasing them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys

import msgspec

from asyncstop import PostgresRegistry

__all__ = ["OffHostBotConfig", "OwnerOrders", "main"]


class OwnerOrders(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One owner's stops: ``[account_id, order_id, protective]`` each."""

    owner: str
    orders: list[tuple[str, str, bool]]


class OffHostBotConfig(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """The bot's settings: one JSON line on its stdin."""

    dsn: str
    ttl: float
    owners: list[OwnerOrders]


def _say(event: str, **fields: object) -> None:
    sys.stdout.buffer.write(msgspec.json.encode({"event": event, **fields}) + b"\n")
    sys.stdout.flush()


async def _run(config: OffHostBotConfig) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    async with contextlib.AsyncExitStack() as stack:
        leases = []
        for owner in config.owners:
            registry = await PostgresRegistry.connect(config.dsn, owner=owner.owner)
            stack.push_async_callback(registry.close)
            lease = await stack.enter_async_context(registry.lease(ttl=config.ttl))
            for account_id, order_id, protective in owner.orders:
                await registry.add(order_id, account_id, protective=protective)
            leases.append(lease)
        _say("ready", pid=os.getpid())
        first = leases[0]
        seen = first.renewals
        ended = asyncio.ensure_future(stdin.read())
        reported_lost = False
        while not ended.done():
            await asyncio.wait({ended}, timeout=0.01)
            if first.renewals != seen:
                seen = first.renewals
                _say("renewed", sent=first.deadline - first.ttl)
            if not reported_lost and any(lease.lost for lease in leases):
                reported_lost = True
                _say("lost", at=loop.time())


def main() -> int:
    """Read the settings line and run the bot until stdin ends."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s offhost-bot[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    config = msgspec.json.decode(sys.stdin.buffer.readline(), type=OffHostBotConfig)
    asyncio.run(_run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
