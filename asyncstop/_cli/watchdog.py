"""``asyncstop watchdog --store DSN``: the off-host service, for another machine and systemd.

It needs asyncpg (``pip install 'asyncstop[postgres]'``); without it the
command says so in one line and exits 2. The service itself is
:class:`asyncstop._watchdog._service.OffHostService`.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from typing import Final

from asyncstop import AsyncStopClient, TokenProviderError, command_token_provider

from .._argtypes import count, positive_float
from .._logging import install_stderr_handler
from .._postgres._db import INSTALL_HINT, import_asyncpg
from .._watchdog._firing import DEFAULT_GIVE_UP_AFTER
from .._watchdog._service import (
    DEFAULT_CLAIM_TTL,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_ROUND_DEADLINE,
    OffHostService,
)
from .common import ENV_ACCOUNT_ID, ENV_BASE_URL, EXIT_OK, EXIT_USAGE, PROG, Subcommands
from .context import Context
from .running import run_until_signal

__all__ = ["add_parser", "run"]

ENV_STORE: Final = "ASYNCSTOP_STORE"
#: Seconds the token command may take.
_TOKEN_TIMEOUT: Final = 30.0

_SYSTEMD_EXAMPLE: Final = """\
systemd unit (/etc/systemd/system/asyncstop-watchdog.service), on a machine
other than the bots', one or more of them:

  [Unit]
  Description=asyncstop off-host watchdog
  After=network-online.target
  Wants=network-online.target

  [Service]
  # The DSN without its password: PGPASSWORD or ~/.pgpass supply it.
  Environment=ASYNCSTOP_STORE=postgresql://asyncstop@db.internal/trading
  ExecStart=/opt/asyncstop/bin/asyncstop watchdog \\
      --base-url https://api.example.com --account-id acc-1 \\
      --token-command "/usr/local/bin/b2-token --profile live"
  Restart=always
  RestartSec=2
  # SIGTERM hands claims in progress back to another service, exit status 0.
  KillSignal=SIGTERM
  User=asyncstop

exit status: 0 stopped by SIGTERM or SIGINT; 2 usage error or asyncpg missing"""


def add_parser(commands: Subcommands) -> None:
    """Add ``watchdog`` to the subcommands ``commands``."""
    parser = commands.add_parser(
        "watchdog",
        help="the off-host service: cancel the stops of bots whose PostgreSQL lease expired",
        description=(
            "Watch every bot's lease in a PostgreSQL registry (asyncstop.PostgresRegistry). "
            "When one expires by the database's clock (the bot's machine died, or lost the "
            "database), claim that bot (FOR UPDATE SKIP LOCKED: run two or more services "
            "for redundancy, each order is cancelled by one of them) and cancel its "
            "registered stops round after round until settled or --give-up-after; "
            "protective stops stay live unless --cancel-protective. Each fire is recorded "
            "in the table asyncstop_fires and logged in one line. Runs until SIGTERM. "
            f"Needs asyncpg: {INSTALL_HINT}."
        ),
        epilog=_SYSTEMD_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--store",
        metavar="DSN",
        help=f"the PostgreSQL DSN, best without a password (PGPASSWORD, ~/.pgpass); "
        f"default: ${ENV_STORE}",
    )
    parser.add_argument("--base-url", help=f"the exchange's base URL (default: ${ENV_BASE_URL})")
    parser.add_argument(
        "--account-id",
        help=f"the account of stops registered without one (default: ${ENV_ACCOUNT_ID})",
    )
    parser.add_argument(
        "--token-command",
        metavar="CMD",
        required=True,
        help="prints the bearer token on stdout; split with shlex, run without a shell",
    )
    parser.add_argument(
        "--give-up-after",
        type=positive_float,
        default=DEFAULT_GIVE_UP_AFTER,
        metavar="S",
        help="seconds one owner's firing keeps retrying (default: %(default)s)",
    )
    parser.add_argument(
        "--round-deadline",
        type=positive_float,
        default=DEFAULT_ROUND_DEADLINE,
        metavar="S",
        help="each firing round's deadline (default: %(default)s)",
    )
    parser.add_argument(
        "--poll-interval",
        type=positive_float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="S",
        help="seconds between two looks for expired leases (default: %(default)s)",
    )
    parser.add_argument(
        "--claim-ttl",
        type=positive_float,
        default=DEFAULT_CLAIM_TTL,
        metavar="S",
        help="seconds another service waits to take over an owner this one claimed and "
        "stopped renewing (it died mid-fire) (default: %(default)s)",
    )
    parser.add_argument(
        "--cancel-protective",
        action="store_true",
        help="cancel protective stops too (by default they stay live: they guard positions)",
    )
    parser.add_argument(
        "--concurrency", type=count(1), default=64, help="requests in flight (default: 64)"
    )
    parser.add_argument("--name", help="this service's name in claims (default: host:pid)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="-v INFO, -vv DEBUG")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace, context: Context) -> int:
    """``asyncstop watchdog``."""
    del context  # a service: it logs, it prints no result
    try:
        import_asyncpg()
    except ImportError:
        print(f"{PROG}: error: watchdog --store needs asyncpg: {INSTALL_HINT}", file=sys.stderr)
        return EXIT_USAGE
    dsn = args.store or os.environ.get(ENV_STORE)
    base_url = args.base_url or os.environ.get(ENV_BASE_URL)
    account_id = args.account_id or os.environ.get(ENV_ACCOUNT_ID) or None
    missing = [flag for flag, value in (("--store", dsn), ("--base-url", base_url)) if not value]
    if missing:
        print(f"{PROG}: error: watchdog needs {' and '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    argv = shlex.split(args.token_command)
    if not argv:
        print(f"{PROG}: error: --token-command is empty", file=sys.stderr)
        return EXIT_USAGE
    if args.verbose == 0:
        install_stderr_handler(logging.WARNING)
    provider = command_token_provider(argv, timeout=_TOKEN_TIMEOUT)

    async def serve() -> None:
        assert base_url is not None
        assert dsn is not None
        async with AsyncStopClient(
            base_url=base_url, token=provider, account_id=account_id
        ) as client:
            service = OffHostService(
                dsn,
                client,
                name=args.name,
                poll_interval=args.poll_interval,
                claim_ttl=args.claim_ttl,
                give_up_after=args.give_up_after,
                round_deadline=args.round_deadline,
                cancel_protective=args.cancel_protective,
                concurrency=args.concurrency,
            )
            await service.run()

    try:
        asyncio.run(run_until_signal(serve()))
    except TokenProviderError as err:
        print(f"{PROG}: error: --token-command: {err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
