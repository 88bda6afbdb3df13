"""Order ids in, pending orders out: ``ORDER_ID`` or ``ACCOUNT_ID,ORDER_ID``, one a line."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterable
from pathlib import Path

from asyncstop import InvalidInputError

from .._validation import check_account_id, check_order_id
from .common import ENV_ACCOUNT_ID, PROG, UsageError, os_reason

__all__ = [
    "check_writable",
    "format_item",
    "parse_ids",
    "parse_order_item",
    "read_ids",
    "write_pending",
]


def parse_order_item(text: str, default_account: str | None) -> tuple[str, str]:
    """Parse ``ORDER_ID`` or ``ACCOUNT_ID,ORDER_ID`` into a checked (account, order) pair."""
    fields = [part.strip() for part in text.split(",")]
    if len(fields) == 1:
        order_id = check_order_id(fields[0])
        if default_account is None:
            raise InvalidInputError(
                f"order {order_id!r} has no account: write ACCOUNT_ID,ORDER_ID, "
                f"or set {ENV_ACCOUNT_ID} or pass --account-id"
            )
        return default_account, order_id
    if len(fields) == 2:
        account_id, order_id = fields
        if not account_id:
            raise InvalidInputError("the account id before the comma is empty")
        if not order_id:
            raise InvalidInputError("the order id after the comma is empty")
        return check_account_id(account_id), check_order_id(order_id)
    raise InvalidInputError(
        f"expected ORDER_ID or ACCOUNT_ID,ORDER_ID, found {len(fields)} comma-separated "
        f"fields in {text!r}"
    )


def parse_ids(
    lines: Iterable[str], source: str, default_account: str | None
) -> list[tuple[str, str]]:
    """Parse an ids file: one order per line, blank lines and ``#`` comments skipped.

    The first malformed line raises :class:`UsageError` naming ``source`` and the
    line number, so that nothing is cancelled from a file that is not what its
    author meant.
    """
    items: list[tuple[str, str]] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            items.append(parse_order_item(line, default_account))
        except InvalidInputError as err:
            raise UsageError(f"{source}, line {number}: {err}; nothing was cancelled") from None
    return items


def read_ids(path: str, default_account: str | None) -> list[tuple[str, str]]:
    """Read and check the whole ids file (``-``: standard input) before anything is sent."""
    if path == "-":
        if sys.stdin.isatty():
            # Otherwise a person who forgot the pipe sees a command that hangs.
            print(
                f"{PROG}: reading order ids from the terminal, one ORDER_ID or "
                "ACCOUNT_ID,ORDER_ID a line; end with Ctrl-D",
                file=sys.stderr,
                flush=True,
            )
        return parse_ids(sys.stdin.read().splitlines(), "<stdin>", default_account)
    try:
        # utf-8-sig: a byte-order mark from a Windows editor is not part of the first id.
        text = Path(path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"cannot read ids file {path}: {os_reason(err)}") from None
    return parse_ids(text.splitlines(), path, default_account)


def format_item(account_id: str, order_id: str) -> str:
    """One line in the form ``--ids`` reads."""
    return f"{account_id},{order_id}"


def write_pending(path: str, pending: Iterable[tuple[str, str]]) -> None:
    """Write the orders that may still be live, one ``account_id,order_id`` a line.

    A regular file is written to a temporary file and moved into place, so that
    ``--ids`` and ``--pending-out`` may name the same file and an interrupted
    write never leaves half a list. Anything else (``/dev/stdout``, a pipe, a
    device) is written in place: moving a file over it would replace it.
    """
    target = Path(path)
    text = "".join(format_item(account, order) + "\n" for account, order in pending)
    if target.exists() and not target.is_file():
        with target.open("w", encoding="utf-8") as stream:
            stream.write(text)
        return
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        temporary.replace(target)
    except OSError:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def check_writable(path: str) -> None:
    """Refuse a --pending-out whose folder does not exist, before anything is sent."""
    folder = Path(path).parent
    if not folder.is_dir():
        raise UsageError(f"--pending-out {path}: folder {folder} does not exist")
    if Path(path).is_dir():
        raise UsageError(f"--pending-out {path} is a folder")
