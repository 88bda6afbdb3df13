"""``asyncstop kill --ids FILE``: cancel every stop order listed in a file, with a summary."""

from __future__ import annotations

import argparse
import sqlite3
import sys
from pathlib import Path

from asyncstop import StopOrderRegistry

from .bulk import add_cancel_arguments, read_settings, run_bulk, save_pending
from .common import EXIT_OK, EXIT_OUTPUT, EXIT_STATUS_HELP, PROG, Subcommands, UsageError
from .context import Context
from .ids import read_ids
from .settings import Settings

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands) -> None:
    """Add ``kill`` to the subcommands ``commands``."""
    parser = commands.add_parser(
        "kill",
        epilog=EXIT_STATUS_HELP,
        help="cancel every stop order listed in a file, or held in a durable registry",
        description=(
            "Cancel every stop order listed in FILE: one ORDER_ID or ACCOUNT_ID,ORDER_ID a line; "
            "blank lines and lines starting with # are skipped. The whole file is checked "
            "before anything is sent. Or cancel every order a durable registry holds (what a "
            "dead bot left), and remove from it what is no longer live."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--ids", metavar="FILE", help="the orders to cancel (- reads stdin)")
    source.add_argument(
        "--registry",
        metavar="PATH",
        help=(
            "cancel every order in a durable StopOrderRegistry (what a dead bot left), "
            "and remove from it what is no longer live"
        ),
    )
    parser.add_argument(
        "--keep-protective",
        action="store_true",
        help=(
            "with --registry: leave the stops registered as protective (stop-losses guarding "
            "an open position) live and registered; by default every stop is cancelled"
        ),
    )
    add_cancel_arguments(parser, run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Read and check the whole file (or registry), then cancel every order in it."""
    settings = read_settings(args)
    if args.registry is not None:
        return _run_registry(args, context, settings)
    items = read_ids(args.ids, settings.account_id)
    if not items:
        print(f"{PROG}: {args.ids} lists no orders: nothing to cancel", file=sys.stderr)
        if args.pending_out is not None and not save_pending(args.pending_out, []):
            return EXIT_OUTPUT
        return EXIT_OK
    return run_bulk(args, context, settings, items, title="kill", per_order_lines=False)


def _run_registry(args: argparse.Namespace, context: Context, settings: Settings) -> int:
    path = Path(args.registry)
    if not path.is_file():
        raise UsageError(f"{args.registry}: no such registry file")
    try:
        registry = StopOrderRegistry.open(path)
    except (sqlite3.Error, OSError) as err:
        raise UsageError(f"{args.registry}: not a registry asyncstop can open: {err}") from None
    with registry:
        items: list[tuple[str, str]] = []
        for item in registry.snapshot(protective=False if args.keep_protective else None):
            if isinstance(item, tuple):
                items.append(item)
            elif settings.account_id is None:
                raise UsageError(
                    f"{args.registry} holds order {item!r} without an account: "
                    "set ASYNCSTOP_ACCOUNT_ID or pass --account-id"
                )
            else:
                items.append((settings.account_id, item))
        if not items:
            print(f"{PROG}: {args.registry} holds no orders: nothing to cancel", file=sys.stderr)
            return EXIT_OK
        return run_bulk(
            args, context, settings, items, title="kill", per_order_lines=False, registry=registry
        )
