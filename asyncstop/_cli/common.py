"""What every part of the command line shares: its name, exit statuses, environment variables."""

from __future__ import annotations

import argparse
import signal
from typing import TYPE_CHECKING, Final, TypeAlias

__all__ = [
    "ENV_ACCOUNT_ID",
    "ENV_BASE_URL",
    "ENV_TOKEN",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_OUTPUT",
    "EXIT_PENDING",
    "EXIT_STATUS_HELP",
    "EXIT_USAGE",
    "PROG",
    "Subcommands",
    "UsageError",
    "exit_status_for_signal",
    "os_reason",
]

PROG: Final = "asyncstop"

EXIT_OK: Final = 0
#: Some orders may still be live (failed, unknown, not sent, or no result).
EXIT_PENDING: Final = 1
#: A usage or configuration error, or a failed preflight: nothing was sent.
EXIT_USAGE: Final = 2
#: Every order ended not found or already gone and none was cancelled, which
#: usually means a wrong account id or base URL, not that the work was done.
EXIT_NOT_FOUND: Final = 3
#: The orders are settled, but --json, the summary or --pending-out could not be written.
EXIT_OUTPUT: Final = 4
#: 128 + SIGINT, as shells report a command stopped by Ctrl-C.
EXIT_INTERRUPTED: Final = 128 + signal.SIGINT

EXIT_STATUS_HELP: Final = (
    "exit status: 0 no order left live (each cancelled, already gone or not found); "
    "1 some may still be live; "
    "2 usage or configuration error, or the preflight failed (nothing was sent); "
    "3 most orders not found and none cancelled (wrong account id or base URL?); "
    "4 an output (--json, --pending-out, the summary) could not be written; "
    "128+N stopped by signal N (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP) after settling"
)

ENV_BASE_URL: Final = "ASYNCSTOP_BASE_URL"
ENV_ACCOUNT_ID: Final = "ASYNCSTOP_ACCOUNT_ID"
ENV_TOKEN: Final = "ASYNCSTOP_TOKEN"  # noqa: S105 - a variable name, not a secret


#: What ``add_subparsers`` returns: each command module adds its parser to it.
if TYPE_CHECKING:
    Subcommands: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]
else:  # not subscriptable at run time
    Subcommands = argparse._SubParsersAction


class UsageError(Exception):
    """A usage or configuration problem, reported as one line and exit status 2."""


def exit_status_for_signal(signum: int) -> int:
    """128 + the signal's number, as shells report a command a signal stopped."""
    return 128 + signum


def os_reason(err: Exception) -> str:
    """The short reason of an OS error ("No space left on device"), else the error's text."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err)
