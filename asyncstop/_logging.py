"""The ``asyncstop`` logger, its token-redacting filter, and the ASYNCSTOP_LOG switch."""

from __future__ import annotations

import logging
import os
import re
from typing import Final

from ._constants import LOG_ENV_VAR

__all__ = ["RedactingFilter", "logger", "setup_logging_from_env"]

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


def setup_logging_from_env() -> None:
    """Attach a stderr handler to the ``asyncstop`` logger if ASYNCSTOP_LOG asks for one.

    ``ASYNCSTOP_LOG=debug`` or ``info``; anything else, or unset, leaves logging
    to the application. Runs at most once.
    """
    level_name = os.environ.get(LOG_ENV_VAR, "").strip().upper()
    if level_name not in ("DEBUG", "INFO") or any(
        isinstance(h, _EnvHandler) for h in logger.handlers
    ):
        return
    handler = _EnvHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(level_name)


# On the logger itself, so that the application's own handlers get redacted records too.
logger.addFilter(RedactingFilter())
# A library's records go where the application sends them, and nowhere when it
# has configured no logging: without a handler here, Python's last-resort
# handler would print every WARNING (a kill switch firing) to stderr.
logger.addHandler(logging.NullHandler())


class _EnvHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler installed by ASYNCSTOP_LOG, told apart from the application's own."""
