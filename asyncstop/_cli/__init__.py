"""The ``asyncstop`` command: stop everything from a terminal, or watch the kill switch work.

::

    asyncstop cancel ORDER_ID [ORDER_ID ...]   cancel these stop orders
    asyncstop kill --ids FILE                  cancel every stop order listed in FILE (- : stdin)
    asyncstop kill --registry PATH             cancel every order a (dead) bot's registry holds
    asyncstop fake-exchange --orders 1000      serve a fake exchange to try ``kill`` against
    asyncstop demo                             a kill switch, a SIGKILLed bot's watchdog, and
                                               the off-host service for a dead machine
    asyncstop watchdog --store DSN ...         the off-host service: cancel the stops of
                                               bots whose PostgreSQL lease expired

Exit status: see :data:`common.EXIT_STATUS_HELP` (also the ``--help`` epilog).

Settings come from flags or the environment (``ASYNCSTOP_BASE_URL``,
``ASYNCSTOP_ACCOUNT_ID``, ``ASYNCSTOP_TOKEN``); the token is read from the
environment or ``--token-file`` and never printed. rich (``pip install
'asyncstop[cli]'``) draws the progress bar and the tables; without it the
command prints plain text and works all the same.

One module per command (:mod:`.cancel`, :mod:`.kill`, :mod:`.fake_exchange`,
:mod:`.demo`, with :mod:`.demo_watchdog` and :mod:`.demo_bot` for its second
part), each adding its own parser; :mod:`.settings` reads the exchange
settings, :mod:`.ids` the order ids, :mod:`.bulk` runs a cancel for
``cancel`` and ``kill``, :mod:`.display` draws, :mod:`.logs` sets up ``-v``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from asyncstop import InvalidInputError, __version__

from . import cancel, demo, fake_exchange, kill, watchdog
from .common import (
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_STATUS_HELP,
    EXIT_USAGE,
    PROG,
    UsageError,
    os_reason,
)
from .context import Context
from .logs import setup_logging
from .output import Output

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Reports a usage error in one line, ``asyncstop: error: ...``, and exits 2.

    The subcommands' parsers are of this class too, so that ``asyncstop kill
    --deadline 0`` reads like every other error of the command, not like a
    six-line usage block.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{PROG}: error: {message} (see: {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``asyncstop`` command."""
    parser = _Parser(
        prog=PROG,
        description="Cancel stop orders fast, and know which are certainly gone.",
        epilog=EXIT_STATUS_HELP,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, dest="verbose_top", help=argparse.SUPPRESS
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in (cancel, kill, fake_exchange, demo, watchdog):
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``asyncstop`` command on ``argv`` (default: ``sys.argv[1:]``); return its status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
        if args.command is None:
            parser.print_usage(sys.stderr)
            print(
                f"{PROG}: error: choose a command: cancel, kill, fake-exchange or demo",
                file=sys.stderr,
            )
            return EXIT_USAGE
        # fake-exchange has no -v of its own; the others add the one given before the command.
        args.verbose = getattr(args, "verbose", 0) + args.verbose_top
        return _run(args)
    except (UsageError, InvalidInputError) as err:
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(args: argparse.Namespace) -> int:
    """Run the chosen command with guarded stdout and its logging; add an output failure."""
    out = Output(sys.stdout)
    logging = setup_logging(args.verbose)
    handler: Callable[[argparse.Namespace, Context], int] = args.handler
    try:
        status = handler(args, Context(out=out, logging=logging))
        out.run(lambda stream: None)  # the last buffered output, flushed while still guarded
    finally:
        logging.close()
    if out.error is not None:
        print(
            f"{PROG}: error: cannot write to standard output: {os_reason(out.error)}; "
            "what it should have shown is incomplete",
            file=sys.stderr,
        )
        if status == EXIT_OK:
            return EXIT_OUTPUT
    return status
