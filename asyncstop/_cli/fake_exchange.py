"""``asyncstop fake-exchange``: serve a fake exchange on 127.0.0.1 to try ``kill`` against.

It prints its URL, its token and the URL of its control surface (counts, new
orders, faults switched on and off while it runs; ``docs/fake-exchange.md``).

The arguments and the server are :mod:`asyncstop.testing`'s own, so that this
command and ``python -m asyncstop.testing`` take the same flags.
"""

from __future__ import annotations

import argparse

from asyncstop.testing import add_fake_exchange_arguments, run_fake_exchange

from .common import Subcommands
from .context import Context

__all__ = ["add_parser", "run"]


def add_parser(commands: Subcommands) -> None:
    """Add ``fake-exchange`` to the subcommands ``commands``."""
    parser = commands.add_parser(
        "fake-exchange",
        help="serve a fake exchange on 127.0.0.1 to try kill against",
        description=(
            "Serve a fake exchange with stop orders to cancel, on 127.0.0.1, until Ctrl-C or "
            "SIGTERM. It prints its base_url, token, control URL and accounts, then the orders "
            "as account_id,order_id lines (or writes them to --ids-out), ready for "
            "`asyncstop kill --ids`. The control URL, for clients on this machine only, shows "
            "the live and cancelled orders per account, adds orders and switches faults "
            "(an outage, latency, 429s) while it runs: see docs/fake-exchange.md."
        ),
    )
    add_fake_exchange_arguments(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """Serve until SIGINT or SIGTERM."""
    del context  # it writes its own description, not results
    return run_fake_exchange(args)
