"""Logging for the command line: ``-v`` and ``-vv`` on stderr, and a count of the 429s met.

At ``-v`` each kind of record (one message template) is shown a few times and
then only counted, so that a run of 2,000 orders prints a screenful, not a line
per retry; ``-vv`` shows every record.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from typing import Final

from asyncstop import RateLimitError

from .._logging import install_stderr_handler, stderr_handler
from .common import PROG

__all__ = ["CLILogging", "setup_logging"]

#: Records of one template that ``-v`` shows before it only counts them.
REPEATS_SHOWN: Final = 5


class _RepeatLimit(logging.Filter):
    """Lets the first ``limit`` records of each message template through, and counts the rest."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.seen: Counter[tuple[str, str]] = Counter()

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, str(record.msg))
        self.seen[key] += 1
        return self.seen[key] <= self.limit

    def hidden(self) -> list[tuple[str, int]]:
        """(template, records not shown) for each template that went over the limit."""
        return [(msg, n - self.limit) for (_, msg), n in self.seen.items() if n > self.limit]


class _RateLimitCounter(logging.Handler):
    """Counts the retries the client made after an HTTP 429, from its own log records.

    A record about a retry carries the error it retries as an argument; its
    type, not its wording, tells a 429 apart.
    """

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        args = record.args if isinstance(record.args, tuple) else ()
        if any(isinstance(arg, RateLimitError) for arg in args):
            self.count += 1


class CLILogging:
    """What :func:`setup_logging` installed, to be read and removed when the command ends."""

    def __init__(self, verbosity: int) -> None:
        self._log = logging.getLogger("asyncstop")
        self._previous_level = self._log.level
        self._counter = _RateLimitCounter()
        self._log.addHandler(self._counter)
        self._limit: _RepeatLimit | None = None
        self._stderr: logging.Handler | None = None
        # The library's own stderr handler (ASYNCSTOP_LOG's too: never two of them).
        if verbosity > 0:
            installed = stderr_handler() is None
            handler = install_stderr_handler(logging.DEBUG if verbosity > 1 else logging.INFO)
            if verbosity == 1:
                self._limit = _RepeatLimit(REPEATS_SHOWN)
                handler.addFilter(self._limit)
            self._stderr = handler if installed else None
        # INFO at least, so that the 429 counter sees the retry records.
        self._log.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO)

    @property
    def retries_after_429(self) -> int:
        """How many retries followed an HTTP 429 so far."""
        return self._counter.count

    def close(self) -> None:
        """Say what -v left out, then remove the handlers and restore the level."""
        if self._limit is not None:
            for template, count in self._limit.hidden():
                print(
                    f"{PROG}: -v left out {count} more log record(s) like {template!r}; "
                    "-vv shows every one",
                    file=sys.stderr,
                )
        handler = stderr_handler()
        if handler is not None and self._limit is not None:
            handler.removeFilter(self._limit)
        if self._stderr is not None:
            self._log.removeHandler(self._stderr)
        self._log.removeHandler(self._counter)
        self._log.setLevel(self._previous_level)


def setup_logging(verbosity: int) -> CLILogging:
    """Log asyncstop's records to stderr at INFO (-v) or DEBUG (-vv); nothing by default."""
    return CLILogging(verbosity)
