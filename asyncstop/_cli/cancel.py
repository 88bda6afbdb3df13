"""``asyncstop cancel ORDER_ID ...``: cancel a few stop orders and print one line per order."""

from __future__ import annotations

import argparse

from asyncstop import InvalidInputError

from .bulk import add_cancel_arguments, read_settings, run_bulk
from .common import EXIT_STATUS_HELP, Subcommands, UsageError
from .context import Context
from .ids import parse_order_item

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands) -> None:
    """Add ``cancel`` to the subcommands ``commands``."""
    parser = commands.add_parser(
        "cancel",
        epilog=EXIT_STATUS_HELP,
        help="cancel these stop orders",
        description=(
            "Cancel the given stop orders and print one line per order (with --json: "
            "one JSON object per order, and the summary on stderr)."
        ),
    )
    parser.add_argument(
        "order_ids",
        nargs="+",
        metavar="ORDER_ID",
        help="a stop order id, or ACCOUNT_ID,ORDER_ID for an account other than --account-id",
    )
    add_cancel_arguments(parser, run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Check every ORDER_ID, then cancel them all."""
    settings = read_settings(args)
    items = []
    for position, text in enumerate(args.order_ids, start=1):
        try:
            items.append(parse_order_item(text, settings.account_id))
        except InvalidInputError as err:
            raise UsageError(
                f"ORDER_ID {position} ({text!r}): {err}; nothing was cancelled"
            ) from None
    return run_bulk(args, context, settings, items, title="cancel", per_order_lines=True)
