"""The one signal policy: the kill switch, the command line, the testing runner, the watchdog.

:class:`StopSignals` puts handlers for SIGINT, SIGTERM (and SIGHUP where asked)
on the running loop with ``loop.add_signal_handler``, so a handler never runs
inside code that holds a lock or waits, and never blocks the loop. One policy:

* **A signal the parent ignored stays ignored.** ``nohup`` ignores SIGHUP and
  a shell ignores SIGINT for a background job; a program that took them back
  would die (or fire) where its user meant it to go on.
* **A duplicate is the same request.** Supervisors deliver one stop more than
  once: coreutils ``timeout`` sends its signal to the child and then to its
  process group; systemd's ``KillMode=control-group`` signals every process of
  the unit, and with ``SendSIGHUP=yes`` follows SIGTERM with SIGHUP at once;
  shell wrappers forward to the group; a closing terminal hangs up the shell
  and the shell hangs up its jobs. So any of the handled signals arriving within
  :data:`SAME_REQUEST_WINDOW` (0.5 s) of the signal that made the request is
  that same request, whichever of them it is: SIGINT then SIGTERM 10 ms apart
  is one stop, not a stop and a second press. A person does not press Ctrl-C
  twice within half a second and expect two different things: at worst the
  second press has to come again, a moment later.
* **A second press ends the process at once.** A signal that comes later, while
  the first request is still being served, restores the signal's default action
  and raises it again: the process dies by that signal (also SIGINT, whose
  Python handler would raise ``KeyboardInterrupt`` into code that may wait).
  The watchdog process, which must outlive the bot, asks instead to be told of
  each request (``second_press="call"``).

The window is judged when the loop runs the handler, not when the kernel
delivered the signal: two signals that arrive while the loop is busy are
handled in the same turn and are one request; a loop stalled for longer than
the window between the two can only make a duplicate count as a second press,
which ends the process as a second press would have.

Where the loop cannot take signal handlers (Windows, a loop outside the main
thread) :meth:`StopSignals.install` raises, or with ``required=False`` installs
nothing (Ctrl-C then arrives as ``KeyboardInterrupt``).
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal

from ._logging import logger

__all__ = ["SAME_REQUEST_WINDOW", "StopSignals", "stop_signals"]

#: Seconds after a request's signal during which another handled signal is the
#: same request (a supervisor's copy), not a second press.
SAME_REQUEST_WINDOW: Final = 0.5


def stop_signals(*, hangup: bool = True) -> tuple[signal.Signals, ...]:
    """SIGINT and SIGTERM, and SIGHUP where it exists (unless ``hangup`` is False)."""
    found = [signal.SIGINT, signal.SIGTERM]
    if hangup and hasattr(signal, "SIGHUP"):
        found.append(signal.SIGHUP)
    return tuple(found)


class StopSignals:
    """Handlers for stopping signals on the running loop, with the one policy above.

    ``on_request(sig)`` runs (in the loop) for the first signal, and, with
    ``second_press="call"``, for every later one outside the window too; with
    ``second_press="exit"`` (the default) a later one ends the process by its
    default action instead. Duplicates within :data:`SAME_REQUEST_WINDOW` are
    logged at DEBUG and otherwise dropped.
    """

    def __init__(
        self,
        on_request: Callable[[signal.Signals], object],
        signals: Iterable[signal.Signals] | None = None,
        *,
        second_press: Literal["exit", "call"] = "exit",
    ) -> None:
        self._on_request = on_request
        self.signals: tuple[signal.Signals, ...] = (
            stop_signals() if signals is None else tuple(signals)
        )
        self._second_press = second_press
        self._installed: list[tuple[asyncio.AbstractEventLoop, signal.Signals]] = []
        #: The signal of the request being served, until :meth:`reset`.
        self.received: signal.Signals | None = None
        self._last_request_at: float | None = None

    @property
    def installed(self) -> tuple[signal.Signals, ...]:
        """The signals whose handlers are in place (an ignored one never is)."""
        return tuple(sig for _, sig in self._installed)

    def install(self, *, required: bool = True) -> None:
        """Handle the signals on the running loop, except those the process ignores.

        Raises ``NotImplementedError`` (Windows) or ``RuntimeError`` (not the
        main thread) where the loop cannot take handlers, having installed
        none; with ``required=False`` it then installs none and returns.
        """
        loop = asyncio.get_running_loop()
        for sig in self.signals:
            if signal.getsignal(sig) is signal.SIG_IGN:
                logger.info("%s is ignored by this process: left ignored", sig.name)
                continue
            try:
                loop.add_signal_handler(sig, self._handle, sig)
            except (NotImplementedError, RuntimeError, ValueError):
                self.remove()
                if required:
                    raise
                return
            self._installed.append((loop, sig))

    def remove(self) -> None:
        """Give the signals back their default handling; idempotent."""
        installed, self._installed = self._installed, []
        for loop, sig in installed:
            if not loop.is_closed():
                loop.remove_signal_handler(sig)

    def reset(self) -> None:
        """Serve the next signal as a new request (a copy of the last one is still dropped)."""
        self.received = None

    def _handle(self, sig: signal.Signals) -> None:
        now = time.monotonic()
        if self._last_request_at is not None and now - self._last_request_at < SAME_REQUEST_WINDOW:
            logger.debug("%s received again at once: the same request", sig.name)
            return
        if self.received is not None and self._second_press == "exit":
            logger.error("%s received while stopping: exiting at once", sig.name)
            self.remove()
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)
            return
        self.received = sig
        self._last_request_at = now
        self._on_request(sig)
