"""The event loop of one command, and the signals that stop it the way Ctrl-C does."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .._signals import StopSignals
from .common import UsageError

__all__ = ["Stopped", "loop_factory", "run_coroutine", "run_until_signal"]

_T = TypeVar("_T")


def loop_factory(use_uvloop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop factory with ``--uvloop`` (a usage error if it is missing), else None."""
    if not use_uvloop:
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional extra
    except ImportError:
        raise UsageError(
            "--uvloop: uvloop is not installed: pip install 'asyncstop[speed]'"
        ) from None
    return uvloop.new_event_loop


def run_coroutine(
    coro: Coroutine[Any, Any, _T], factory: Callable[[], asyncio.AbstractEventLoop] | None
) -> _T:
    """Run ``coro`` on a new event loop from ``factory``; Ctrl-C cancels it (KeyboardInterrupt)."""
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(coro)


@dataclass(frozen=True, slots=True)
class Stopped(Generic[_T]):
    """How :func:`run_until_signal` ended: the work's value, or the signal that cut it short."""

    value: _T | None
    signum: int | None = None


async def run_until_signal(work: Coroutine[Any, Any, _T]) -> Stopped[_T]:
    """Run ``work`` until it ends or SIGINT, SIGTERM or SIGHUP arrives; a signal cancels it.

    ``docker stop``, ``timeout``, systemd and a dropped ssh session send SIGTERM
    or SIGHUP, not SIGINT; each deserves the same orderly end as Ctrl-C: the
    work settles what it started (cancel_stop_orders reports every order before
    it lets a cancellation through), and the caller prints what is known.
    A signal the process ignores (``nohup``, a background job) stays ignored;
    a copy of the signal within half a second (``timeout`` signals the
    command and then its group) is the same request; a second press later
    ends the process at once.
    """
    task = asyncio.ensure_future(work)
    received: list[int] = []

    def on_signal(sig: signal.Signals) -> None:
        received.append(int(sig))
        task.cancel()

    handlers = StopSignals(on_signal)
    # Windows has no loop signal handlers; Ctrl-C then arrives as KeyboardInterrupt.
    handlers.install(required=False)
    try:
        return Stopped(await task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if received and (current is None or not current.cancelling()):
            return Stopped(None, received[0])
        raise
    finally:
        handlers.remove()
