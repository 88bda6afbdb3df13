"""Run a :class:`FakeExchange` from the command line: ``python -m asyncstop.testing``.

The one place in ``asyncstop.testing`` that writes to the terminal. It writes to
streams it is given (stdout by default) rather than calling ``print``, so that
the package CLI (``asyncstop fake-exchange``) can reuse it: it registers the
same arguments with :func:`add_fake_exchange_arguments` and runs them with
:func:`run_fake_exchange`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import secrets
import sys
from pathlib import Path
from typing import Final, TextIO

from .._argtypes import count, fraction, positive_float
from .._signals import StopSignals, stop_signals
from ._control import CONTROL_PREFIX
from ._exchange import FakeExchange
from ._faults import Faults

__all__ = [
    "add_fake_exchange_arguments",
    "build_parser",
    "main",
    "parse_duration",
    "run_fake_exchange",
    "serve_forever",
]

_PROG: Final = "python -m asyncstop.testing"
_DEFAULT_PORT: Final = 8080
_MAX_PORT: Final = 65535
#: argparse's status for a usage error; also used when the exchange cannot serve.
_EXIT_USAGE: Final = 2
#: Ends a help line that states its default in words: an empty ``%(default)``
#: field, so that ArgumentDefaultsHelpFormatter does not add "(default: None)".
_STATED: Final = "%(default).0s"


def parse_duration(text: str) -> float:
    """Parse ``"20ms"``, ``"1.5s"``, ``"0.02s"`` or ``"0.02"`` (seconds) into seconds.

    Raises ``ValueError`` for anything else, and for negative or non-finite values.
    """
    cleaned = text.strip().lower()
    scale = 1.0
    if cleaned.endswith("ms"):
        cleaned, scale = cleaned[:-2], 0.001
    elif cleaned.endswith("s"):
        cleaned = cleaned[:-1]
    try:
        seconds = float(cleaned.strip()) * scale
    except ValueError:
        raise ValueError(f"not a duration: {text!r} (try 20ms, 1.5s or 0.02)") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"a duration must be a non-negative finite number: {text!r}")
    return seconds


def _duration_argument(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _port_argument(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= _MAX_PORT:
        raise argparse.ArgumentTypeError(f"a port is from 0 to {_MAX_PORT}, not {port}")
    return port


def add_fake_exchange_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the fake exchange's command-line arguments on ``parser``.

    ``python -m asyncstop.testing`` and ``asyncstop fake-exchange`` both call
    it, so they take the same arguments; every help line states its default.
    Pass the parsed namespace to :func:`run_fake_exchange`. Errors found after
    parsing (a port already in use) are reported as ``<parser.prog>: error: ...``.
    """
    parser.add_argument(
        "--port",
        type=_port_argument,
        default=_DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--orders",
        type=count(0),
        default=1000,
        help="stop orders per account (default: %(default)s)",
    )
    parser.add_argument(
        "--accounts",
        type=count(0),
        default=1,
        help="number of accounts, named acc-1, acc-2, ... (default: %(default)s)",
    )
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token",
        help=f"the accepted bearer token (default: a random one, printed at start){_STATED}",
    )
    tokens.add_argument(
        "--token-file",
        type=Path,
        help=f"read the accepted bearer token from this file, as a bot would{_STATED}",
    )
    parser.add_argument(
        "--latency",
        type=_duration_argument,
        default=0.0,
        help="fixed delay before each answer, e.g. 20ms (default: %(default)s s)",
    )
    parser.add_argument(
        "--fault-rate",
        type=fraction,
        default=0.0,
        help="probability of a fault per request, spread evenly over a 5xx before the cancel, "
        "a 5xx after it and a dropped connection after it (default: %(default)s)",
    )
    parser.add_argument(
        "--rate-limit",
        type=positive_float,
        help=f"max cancels per second per account (default: no limit){_STATED}",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)"
    )
    parser.add_argument(
        "--ids-out",
        type=Path,
        help=f"write account_id,order_id lines to this file (default: standard output){_STATED}",
    )
    parser.set_defaults(fake_exchange_prog=parser.prog)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=prog or _PROG,
        description=(
            "Serve a fake exchange with stop orders to cancel, on 127.0.0.1, "
            "until Ctrl-C or SIGTERM."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_fake_exchange_arguments(parser)
    return parser


async def serve_forever(
    exchange: FakeExchange,
    *,
    ids_out: Path | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``exchange``, describe it on ``out``, serve until SIGINT/SIGTERM or ``stop``, close.

    The description is ``key: value`` lines (``base_url``, ``token``, ``control``:
    the URL of the control surface, ``accounts``, ``orders``), then, unless
    ``ids_out`` is given, one ``account_id,order_id`` line per order; ``ids_out``
    gets those lines instead.
    """
    out = out if out is not None else sys.stdout
    stop = stop if stop is not None else asyncio.Event()
    handlers = StopSignals(lambda _sig: stop.set(), stop_signals(hangup=False))
    # Windows has no loop signal handlers; Ctrl-C then arrives as KeyboardInterrupt.
    handlers.install(required=False)
    try:
        async with exchange:
            id_lines = [f"{order.account_id},{oid}\n" for oid, order in exchange.orders.items()]
            accounts = list(exchange.accounts)
            if ids_out is not None:
                # Written before base_url is shown, so a script that waits for it finds the file.
                await asyncio.to_thread(ids_out.write_text, "".join(id_lines), encoding="utf-8")
            out.write(f"base_url: {exchange.base_url}\n")
            out.write(f"token: {' '.join(sorted(exchange.tokens))}\n")
            out.write(f"control: {exchange.base_url}{CONTROL_PREFIX.rstrip('/')}\n")
            out.write(f"accounts: {','.join(accounts)}\n")
            where = f"written to {ids_out}" if ids_out is not None else "listed below"
            out.write(f"orders: {len(id_lines)} ({where} as account_id,order_id)\n")
            if ids_out is None:
                out.writelines(id_lines)
            out.flush()
            sys.stderr.write("Serving; stop with Ctrl-C or SIGTERM.\n")
            await stop.wait()
    finally:
        handlers.remove()


def run_fake_exchange(args: argparse.Namespace) -> int:
    """Serve the fake exchange that ``args`` (from :func:`add_fake_exchange_arguments`) describe.

    Blocks until SIGINT or SIGTERM, then returns 0. Returns 2 after writing
    ``<prog>: error: <reason>`` to standard error when it cannot serve (the
    port is taken, ``--ids-out`` cannot be written, ``--token-file`` cannot be read).
    """
    prog = getattr(args, "fake_exchange_prog", None) or _PROG
    token = args.token if args.token is not None else secrets.token_urlsafe(24)
    if getattr(args, "token_file", None) is not None:
        try:
            token = args.token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            sys.stderr.write(f"{prog}: error: cannot read --token-file: {err}\n")
            return _EXIT_USAGE
        if not token:
            sys.stderr.write(f"{prog}: error: --token-file {args.token_file} is empty\n")
            return _EXIT_USAGE
    third = args.fault_rate / 3
    exchange = FakeExchange(
        tokens={token},
        port=args.port,
        seed=args.seed,
        faults=Faults(
            error_before=third, error_after=third, drop_after=third, latency=args.latency
        ),
        rate_limit=args.rate_limit,
    )
    for number in range(1, args.accounts + 1):
        exchange.add_stop_orders(args.orders, account_id=f"acc-{number}")
    try:
        asyncio.run(serve_forever(exchange, ids_out=args.ids_out))
    except KeyboardInterrupt:
        return 0
    except OSError as err:
        sys.stderr.write(f"{prog}: error: {err}\n")
        return _EXIT_USAGE
    return 0


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the fake exchange command line; return the exit status (0 after SIGINT/SIGTERM).

    Bad arguments exit with status 2 and an argparse message, as
    ``argparse`` does; see :func:`run_fake_exchange` for the rest.
    """
    return run_fake_exchange(build_parser(prog).parse_args(argv))
