"""Run a :class:`FakeExchange` from the command line: ``python -m asyncstop.testing``.

The one place in ``asyncstop.testing`` that writes to the terminal. It writes to
streams it is given (stdout by default) rather than calling ``print``, so that
the package CLI (``asyncstop fake-exchange``) can reuse :func:`main` as it is.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import signal
import sys
from pathlib import Path
from typing import TextIO

from .._argtypes import count, fraction, positive_float
from ._exchange import FakeExchange
from ._faults import Faults

__all__ = ["main", "parse_duration", "serve_forever"]

_DEFAULT_PORT = 8080


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


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of :func:`main`."""
    parser = argparse.ArgumentParser(
        prog=prog or "python -m asyncstop.testing",
        description=(
            "Serve a fake exchange with stop orders to cancel, on 127.0.0.1, "
            "until Ctrl-C or SIGTERM."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=_DEFAULT_PORT, help="port to listen on; 0 picks a free one"
    )
    parser.add_argument("--orders", type=count(0), default=1000, help="stop orders per account")
    parser.add_argument("--accounts", type=count(0), default=1, help="accounts acc-1, acc-2, ...")
    parser.add_argument("--token", help="the accepted bearer token (default: a random one)")
    parser.add_argument(
        "--latency",
        type=_duration_argument,
        default=0.0,
        help="fixed delay before each answer, e.g. 20ms",
    )
    parser.add_argument(
        "--fault-rate",
        type=fraction,
        default=0.0,
        help="probability of a fault per request, spread evenly over a 5xx before the cancel, "
        "a 5xx after it and a dropped connection after it",
    )
    parser.add_argument(
        "--rate-limit", type=positive_float, help="max cancels per second per account"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice")
    parser.add_argument(
        "--ids-out",
        type=Path,
        help="write account_id,order_id lines to this file instead of standard output",
    )
    return parser


async def serve_forever(
    exchange: FakeExchange,
    *,
    ids_out: Path | None = None,
    out: TextIO | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Start ``exchange``, describe it on ``out``, serve until SIGINT/SIGTERM or ``stop``, close.

    The description is ``key: value`` lines (``base_url``, ``token``, ``accounts``,
    ``orders``), then, unless ``ids_out`` is given, one ``account_id,order_id``
    line per order; ``ids_out`` gets those lines instead.
    """
    out = out if out is not None else sys.stdout
    stop = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Windows has no loop signal handlers; Ctrl-C then arrives as KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
            handled.append(signum)
    try:
        async with exchange:
            id_lines = [f"{order.account_id},{oid}\n" for oid, order in exchange.orders.items()]
            accounts = sorted({order.account_id for order in exchange.orders.values()})
            if ids_out is not None:
                # Written before base_url is shown, so a script that waits for it finds the file.
                await asyncio.to_thread(ids_out.write_text, "".join(id_lines), encoding="utf-8")
            out.write(f"base_url: {exchange.base_url}\n")
            out.write(f"token: {' '.join(sorted(exchange.tokens))}\n")
            out.write(f"accounts: {','.join(accounts)}\n")
            where = f"written to {ids_out}" if ids_out is not None else "listed below"
            out.write(f"orders: {len(id_lines)} ({where} as account_id,order_id)\n")
            if ids_out is None:
                out.writelines(id_lines)
            out.flush()
            sys.stderr.write("Serving; stop with Ctrl-C or SIGTERM.\n")
            await stop.wait()
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


def main(argv: list[str] | None = None, *, prog: str | None = None) -> int:
    """Run the fake exchange command line; return the exit status (0 after SIGINT/SIGTERM)."""
    args = build_parser(prog).parse_args(argv)
    token = args.token if args.token is not None else secrets.token_urlsafe(24)
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
        sys.stderr.write(f"error: {err}\n")
        return 1
    return 0
