"""``python -m asyncstop._cli.demo_bot``: the bot that ``asyncstop demo`` kills with SIGKILL.

It does what a trading bot should do with the stops it places: it reads its
settings, the token among them, from stdin (never its command line or its
environment), arms a watchdog (``asyncstop.Watchdog``), records each stop in a durable
registry, prints one ``ready`` line (JSON, see
:class:`.demo_watchdog.BotReady`) and carries on until its stdin ends, which
it treats as a normal end: it leaves the watchdog's block, which disarms it.
SIGKILL gives it no such chance; that is the point of the demo.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time

import msgspec

from asyncstop import StopOrderRegistry, Watchdog, WatchdogError

from .demo_watchdog import BotConfig, BotReady

__all__ = ["main"]


async def _run(config: BotConfig) -> None:
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    with StopOrderRegistry.open(config.registry) as registry:
        async with Watchdog(
            registry,
            base_url=config.base_url,
            token=config.token,
            account_id=config.account_id,
            **config.watchdog.as_kwargs(),
        ) as watchdog:
            # As a bot does: each stop is registered as its place call returns,
            # once its watchdog is armed.
            started = time.perf_counter()
            for order_id in config.order_ids:
                registry.add(order_id, account_id=config.account_id)
            add_seconds = time.perf_counter() - started
            assert watchdog.pid is not None
            ready = BotReady(
                pid=os.getpid(),
                watchdog_pid=watchdog.pid,
                report_path=str(watchdog.report_path),
                add_seconds=add_seconds,
            )
            sys.stdout.buffer.write(msgspec.json.encode(ready) + b"\n")
            sys.stdout.flush()
            # A real bot trades here; this one waits for the demo to kill it.
            await stdin.read()


def main() -> int:
    """Read the settings line, run the bot; 0 after a normal end, 1 if the watchdog failed."""
    # A bot configures its logging; the watchdog's "gone" ERROR must reach someone.
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s demo-bot[%(process)d] %(levelname)s %(name)s: %(message)s",
    )
    line = sys.stdin.buffer.readline()
    config = msgspec.json.decode(line, type=BotConfig)
    try:
        asyncio.run(_run(config))
    except WatchdogError as err:
        print(f"demo bot: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
