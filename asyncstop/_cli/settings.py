"""Where to send cancels and as whom: the exchange flags, from the command line or the environment.

A setting is checked by the same rule wherever it comes from: a base URL in
``ASYNCSTOP_BASE_URL`` is refused for the same stray space as on ``--base-url``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from asyncstop import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, InvalidInputError

from .._argtypes import count, positive_float
from .._validation import check_account_id, check_base_url, check_token
from .common import ENV_ACCOUNT_ID, ENV_BASE_URL, ENV_TOKEN, UsageError, os_reason

__all__ = ["Settings", "add_exchange_arguments", "resolve_settings"]


@dataclass(frozen=True, slots=True)
class Settings:
    """Where to send cancels, and as whom."""

    base_url: str
    token: str = field(repr=False)
    account_id: str | None = None


def add_exchange_arguments(parser: argparse.ArgumentParser) -> None:
    """The "exchange" group: base URL, account, token, and the limits of each attempt."""
    group = parser.add_argument_group("exchange")
    group.add_argument("--base-url", help=f"the exchange's base URL (env {ENV_BASE_URL})")
    group.add_argument(
        "--account-id", help=f"account of order ids given without one (env {ENV_ACCOUNT_ID})"
    )
    tokens = group.add_mutually_exclusive_group()
    tokens.add_argument(
        "--token-file",
        metavar="PATH",
        help=f"read the bearer token from this file (default: env {ENV_TOKEN})",
    )
    tokens.add_argument(
        "--token", help="the bearer token itself (discouraged: visible in the process list)"
    )
    group.add_argument(
        "--timeout",
        type=positive_float,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="time limit of each attempt (default: %(default)s)",
    )
    group.add_argument(
        "--max-retries",
        type=count(0),
        default=DEFAULT_MAX_RETRIES,
        metavar="N",
        help="retries after the first attempt, 0 for none (default: %(default)s)",
    )
    group.add_argument(
        "--no-preflight",
        dest="preflight",
        action="store_false",
        help="send no GET /accounts check of the token, account and base URL before cancelling "
        "(for a gateway that blocks that endpoint)",
    )


def resolve_settings(args: argparse.Namespace, env: Mapping[str, str]) -> Settings:
    """Read the base URL, the account and the token from the flags, then the environment."""
    base_url, source = _flag_or_env(args.base_url, "--base-url", env, ENV_BASE_URL)
    if base_url is None:
        raise UsageError(f"no base URL: set {ENV_BASE_URL} or pass --base-url")
    try:
        base_url = check_base_url(base_url)
    except InvalidInputError as err:
        raise UsageError(f"{source}: {err}") from None

    account_id, source = _flag_or_env(args.account_id, "--account-id", env, ENV_ACCOUNT_ID)
    if account_id is not None:
        try:
            check_account_id(account_id)
        except InvalidInputError as err:
            raise UsageError(f"{source}: {err}") from None

    return Settings(base_url=base_url, token=_resolve_token(args, env), account_id=account_id)


def _flag_or_env(
    flag_value: str | None, flag: str, env: Mapping[str, str], variable: str
) -> tuple[str | None, str]:
    """The flag's value if given, else the variable's (empty counts as unset), and which it was.

    Neither is stripped: a value with a stray space is refused by its check,
    wherever it came from, rather than quietly repaired in one place only.
    """
    if flag_value is not None:
        return flag_value, flag
    return env.get(variable) or None, variable


def _resolve_token(args: argparse.Namespace, env: Mapping[str, str]) -> str:
    if args.token is not None:
        print(
            "asyncstop: warning: --token is visible to other users of this machine in the "
            f"process list; prefer {ENV_TOKEN} or --token-file",
            file=sys.stderr,
        )
        token, source = args.token.strip(), "--token"
    elif args.token_file is not None:
        source = f"token file {args.token_file}"
        try:
            token = Path(args.token_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as err:
            raise UsageError(f"cannot read {source}: {os_reason(err)}") from None
        if not token:
            raise UsageError(f"{source} is empty")
    else:
        token, source = env.get(ENV_TOKEN, "").strip(), ENV_TOKEN
        if not token:
            raise UsageError(f"no token: set {ENV_TOKEN} or pass --token-file")
    try:
        return check_token(token)
    except InvalidInputError as err:
        # check_token never echoes the token, so its message is safe to print.
        raise UsageError(f"{source}: {err}") from None
