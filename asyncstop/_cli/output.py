"""Standard output that a closed pipe or a full disk cannot turn into a traceback."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import IO

__all__ = ["Output"]


class Output:
    """Runs writes to one stream, and remembers how the stream failed instead of raising.

    A reader that went away (``| head``) is not an error: the orders were still
    cancelled, so the command goes quiet and its exit status still reports them.
    Any other failure (a full disk) is kept in :attr:`error`, for one line on
    stderr and a non-zero exit status at the end.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        #: True once the reader has closed its end of the pipe.
        self.reader_gone = False
        #: The first write error that was not a closed pipe.
        self.error: OSError | None = None

    @property
    def usable(self) -> bool:
        """False after any failed write: later output would fail the same way."""
        return not self.reader_gone and self.error is None

    def run(self, write: Callable[[IO[str]], object]) -> None:
        """Call ``write(stream)`` and flush, unless a write has failed before."""
        if not self.usable:
            return
        try:
            write(self.stream)
            self.stream.flush()
        except BrokenPipeError:
            self.reader_gone = True
            self._silence()
        except OSError as err:
            self.error = err
            self._silence()

    def _silence(self) -> None:
        # Python flushes stdout once more at exit; pointed at the null device, that
        # flush cannot print "Exception ignored ... BrokenPipeError" after our summary.
        with contextlib.suppress(OSError, ValueError):
            fd = self.stream.fileno()
            null = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(null, fd)
            finally:
                os.close(null)
