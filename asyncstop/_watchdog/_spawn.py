"""The watchdog's process as the bot sees it: a child with a line pipe each way.

Not an ``asyncio.subprocess`` child on purpose: asyncio kills a child that is
still running when its transport is closed or collected, and a watchdog that
fired by itself must outlive a bot that resumes and exits (it keeps cancelling
until every stop is settled). So the child is a ``subprocess.Popen`` in its
own session, its pipes are attached to the loop, and a daemon thread waits for
its exit (as asyncio's own ThreadedChildWatcher does), which neither keeps the
bot's process alive nor leaves a zombie.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from .._logging import logger

__all__ = ["Child", "child_env", "end", "kill"]

#: Seconds a disarmed (or taken over) watchdog gets to exit before it is killed.
EXIT_GRACE: Final = 10.0


class Child:
    """A started watchdog process: ``reader`` (its stdout), ``writer`` (its stdin), its exit."""

    def __init__(
        self,
        popen: subprocess.Popen[bytes],
        reader: asyncio.StreamReader,
        read_transport: asyncio.BaseTransport,
        writer: asyncio.StreamWriter,
        exited: asyncio.Future[int],
    ) -> None:
        self.popen = popen
        self.reader = reader
        self._read_transport = read_transport
        self.writer = writer
        self.exited = exited

    @classmethod
    async def start(cls, argv: Sequence[str], *, env: dict[str, str], limit: int) -> Child:
        """Start ``argv`` in its own session (a terminal's Ctrl-C does not reach it)."""
        loop = asyncio.get_running_loop()
        # As asyncio.create_subprocess_exec does: fork and exec take milliseconds.
        popen = subprocess.Popen(  # noqa: ASYNC220, S603 - our own interpreter, no shell
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
        exited: asyncio.Future[int] = loop.create_future()

        def report(status: int) -> None:
            if not exited.done():
                exited.set_result(status)

        def wait() -> None:
            status = popen.wait()
            with contextlib.suppress(RuntimeError):  # the bot's loop is closed: nobody asks
                loop.call_soon_threadsafe(report, status)

        threading.Thread(target=wait, name=f"asyncstop-watchdog-{popen.pid}", daemon=True).start()
        assert popen.stdout is not None
        assert popen.stdin is not None
        reader = asyncio.StreamReader(limit=limit)
        try:
            read_transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader), popen.stdout
            )
            transport, protocol = await loop.connect_write_pipe(
                asyncio.streams.FlowControlMixin, popen.stdin
            )
        except BaseException:
            popen.kill()
            raise
        writer = asyncio.StreamWriter(transport, protocol, None, loop)
        return cls(popen, reader, read_transport, writer, exited)

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.exited.result() if self.exited.done() else None

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            if self.popen.returncode is None:
                self.popen.kill()

    def close_pipes(self) -> None:
        """Close our ends of both pipes (the child reads end of file)."""
        self.writer.close()
        self._read_transport.close()


async def end(child: Child) -> None:
    """Close the watchdog's pipes and wait for it to exit; kill it after a grace."""
    child.close_pipes()
    try:
        async with asyncio.timeout(EXIT_GRACE):
            await asyncio.shield(child.exited)
    except TimeoutError:
        logger.error("the watchdog %d did not exit: killing it", child.pid)
        await kill(child)


async def kill(child: Child) -> None:
    child.kill()
    child.close_pipes()
    await asyncio.shield(child.exited)


def child_env(token: str) -> dict[str, str]:
    """This environment minus anything holding the token, and this asyncstop first on the path."""
    env = {name: value for name, value in os.environ.items() if token not in value}
    root = str(Path(__file__).resolve().parent.parent.parent)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env
