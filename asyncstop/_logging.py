"""The ``asyncstop`` logger, its token-redacting filter, and the ASYNCSTOP_LOG switch."""

from __future__ import annotations

import logging
import os
import re
import sys
from typing import Final, TextIO

from ._constants import LOG_ENV_VAR

__all__ = [
    "STDERR_FORMAT",
    "RedactingFilter",
    "install_stderr_handler",
    "logger",
    "setup_logging_from_env",
    "stderr_handler",
]

logger: Final = logging.getLogger("asyncstop")

_BEARER: Final = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")
_AUTH_HEADER: Final = re.compile(r"(?i)('?authorization'?\s*[:=]\s*'?)[^'\n,}]+")


class RedactingFilter(logging.Filter):
    """Replaces bearer tokens and Authorization header values in log records with ``***``.

    asyncstop never logs a token itself; this filter is the second line of
    defence for messages built from headers, and it is attached to every
    handler asyncstop installs (the command line's and ASYNCSTOP_LOG's).
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = _AUTH_HEADER.sub(r"\1***", _BEARER.sub(r"\1***", message))
        if redacted != message:
            record.msg, record.args = redacted, None
        return True


#: The format of asyncstop's stderr handler unless its installer gives another.
STDERR_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def install_stderr_handler(
    level: int | str = logging.WARNING, *, fmt: str | None = None
) -> logging.Handler:
    """Attach asyncstop's one stderr handler to the ``asyncstop`` logger, and return it.

    The handler redacts tokens (:class:`RedactingFilter`) and shows records of
    ``level`` and above; the logger is lowered to ``level`` if it would drop
    them. ASYNCSTOP_LOG, the command line's ``-v`` and the watchdog process all
    install it here. Idempotent: a later call returns the handler already
    attached, lowers its level to ``level`` if that is lower, and sets its
    format when ``fmt`` is given, so records are never written twice.
    """
    numeric = logging.getLevelName(level) if isinstance(level, str) else level
    if not isinstance(numeric, int):
        raise ValueError(f"unknown logging level {level!r}")
    handler = stderr_handler()
    if handler is None:
        handler = _StderrHandler()
        handler.setLevel(numeric)
        handler.setFormatter(logging.Formatter(fmt or STDERR_FORMAT))
        handler.addFilter(RedactingFilter())
        logger.addHandler(handler)
    else:
        handler.setLevel(min(handler.level, numeric))
        if fmt is not None:
            handler.setFormatter(logging.Formatter(fmt))
    if logger.getEffectiveLevel() > numeric:
        logger.setLevel(numeric)
    return handler


def stderr_handler() -> logging.Handler | None:
    """The handler :func:`install_stderr_handler` attached, if it is attached."""
    return next((h for h in logger.handlers if isinstance(h, _StderrHandler)), None)


def setup_logging_from_env() -> None:
    """Install the stderr handler (:func:`install_stderr_handler`) if ASYNCSTOP_LOG asks for it.

    ``ASYNCSTOP_LOG=debug`` or ``info``; anything else, or unset, leaves logging
    to the application. Idempotent.
    """
    level_name = os.environ.get(LOG_ENV_VAR, "").strip().upper()
    if level_name in ("DEBUG", "INFO"):
        install_stderr_handler(level_name)


# On the logger itself, so that the application's own handlers get redacted records too.
logger.addFilter(RedactingFilter())
# A library's records go where the application sends them, and nowhere when it
# has configured no logging: without a handler here, Python's last-resort
# handler would print every WARNING (a kill switch firing) to stderr.
logger.addHandler(logging.NullHandler())


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler asyncstop installs, told apart from the application's own.

    It writes to the ``sys.stderr`` of the moment of each record (not the one
    at install time), as Python's last-resort handler does.
    """

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        """StreamHandler sets it in ``__init__``; the property always reads sys.stderr."""
