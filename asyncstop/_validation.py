"""Every input rule, in one place, applied before anything is sent.

An order id becomes one URL path segment, an account id and a token become
header values, and the base URL becomes every request's URL, so anything that
could change the URL or the headers is refused here. Numbers are refused when
they would make a call hang or misbehave (a bool where an int is meant, an
infinite rate). Each public entry point calls these functions; nothing else
decides what input is acceptable.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final
from urllib.parse import urlsplit

from ._constants import STOP_ORDERS_PATH
from ._errors import InvalidInputError

__all__ = [
    "check_account_id",
    "check_base_url",
    "check_bulk_settings",
    "check_count",
    "check_hedge",
    "check_order_id",
    "check_order_item",
    "check_seconds",
    "check_token",
    "check_token_source",
    "split_order_item",
]

# RFC 3986 pchar without percent-encoding: unreserved, sub-delims, ":" and "@".
# Everything else (/, ?, #, %, \, whitespace, control and non-ASCII characters)
# would change the path, the query or the request line, or needs encoding that a
# server may decode differently from us.
_SAFE_SEGMENT: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")
_SAFE_SEGMENT_CHAR: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]")
# A header value must not hold CR, LF or any other control character.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
# The first segment of the documented API path: a base URL that already holds it
# would build /frontoffice/api/v3/frontoffice/api/v3/..., whose 404s look like
# "order already gone".
_API_ROOT: Final = "/" + STOP_ORDERS_PATH.strip("/").split("/", 1)[0] + "/"


def check_order_id(order_id: object) -> str:
    """Return ``order_id`` if it is a non-empty str that is safe as one URL path segment."""
    if not isinstance(order_id, str):
        raise InvalidInputError(f"order id must be a str, not {type(order_id).__name__}")
    if _SAFE_SEGMENT.fullmatch(order_id) and order_id not in (".", ".."):
        return order_id
    if not order_id:
        raise InvalidInputError("order id must not be empty")
    if order_id in (".", ".."):
        raise InvalidInputError(f"order id {order_id!r} would change the URL path")
    bad = next(ch for ch in order_id if not _SAFE_SEGMENT_CHAR.fullmatch(ch))
    raise InvalidInputError(
        f"order id {order_id!r} contains {bad!r}, which is not allowed in a URL path "
        "segment (refused: /, ?, #, %, \\, whitespace, control and non-ASCII characters)"
    )


def check_account_id(account_id: object) -> str:
    """Return ``account_id`` if it is a non-empty str that is safe as a header value."""
    if not isinstance(account_id, str):
        raise InvalidInputError(f"account id must be a str, not {type(account_id).__name__}")
    if not account_id or account_id.strip() != account_id:
        raise InvalidInputError(
            f"account id {account_id!r} must be non-empty, without surrounding whitespace"
        )
    if _CONTROL.search(account_id):
        raise InvalidInputError(
            f"account id {account_id!r} contains a control character (CR, LF, ...), "
            "which would inject a header"
        )
    return account_id


def check_order_item(item: object, default_account_id: str | None) -> tuple[str, str]:
    """Return the ``(account_id, order_id)`` an order item names.

    An item is an order id (for ``default_account_id``) or an ``(account_id,
    order_id)`` pair; anything else, or a bare id without a default account,
    is refused.
    """
    account_id, order_id = split_order_item(item)
    if account_id is not None:
        return account_id, order_id
    if default_account_id is None:
        raise InvalidInputError(
            f"order {item!r} has no account: give (account_id, order_id) pairs "
            "or set account_id on the client"
        )
    return default_account_id, order_id


def split_order_item(item: object) -> tuple[str | None, str]:
    """Return ``(account_id, order_id)`` for a pair, ``(None, order_id)`` for a bare id.

    Both ids are checked; anything but a str or a 2-tuple is refused.
    """
    if isinstance(item, str):
        return None, check_order_id(item)
    if isinstance(item, tuple) and len(item) == 2:
        return check_account_id(item[0]), check_order_id(item[1])
    shown = repr(item) if len(repr(item)) <= 80 else repr(item)[:77] + "..."
    raise InvalidInputError(
        "each order must be an order id str or an (account_id, order_id) pair, "
        f"not {type(item).__name__} {shown}"
    )


def check_token(token: object) -> str:
    """Return ``token`` if it is usable in an Authorization header; never echo it."""
    if not isinstance(token, str):
        raise InvalidInputError(f"token must be a str, not {type(token).__name__}")
    if token.strip().lower().startswith("bearer"):
        # A common slip: asyncstop adds the "Bearer " scheme itself. Checked
        # first, since the space after "Bearer" would otherwise hide the cause.
        raise InvalidInputError('token must be the bare JWT, without the "Bearer " prefix')
    if not token or token.strip() != token or " " in token:
        raise InvalidInputError("token must be non-empty and contain no whitespace")
    if _CONTROL.search(token):
        raise InvalidInputError("token contains a control character (CR, LF, ...)")
    return token


def check_token_source(token: object) -> tuple[str | None, Any]:
    """Split ``token`` into (a checked static token, None) or (None, the provider callable)."""
    if isinstance(token, str):
        return check_token(token), None
    if callable(token):
        return None, token
    raise InvalidInputError("token must be a str or an async callable returning a str")


def check_base_url(base_url: object) -> str:
    """Return ``base_url`` without a trailing slash if it is an http(s) URL of the exchange's host.

    Refused, each with the fix in the message: another scheme, no host, a bad
    port, credentials, a query or a fragment (even an empty one), and a path
    that already holds the API prefix.
    """
    if not isinstance(base_url, str):
        raise InvalidInputError(f"base_url must be a str, not {type(base_url).__name__}")
    if _CONTROL.search(base_url) or " " in base_url:
        raise InvalidInputError(
            f"base_url {base_url!r} contains whitespace or control characters; remove them"
        )
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(f"base_url {base_url!r} must start with https:// or http://")
    if not parts.hostname:
        raise InvalidInputError(f"base_url {base_url!r} has no host")
    if "@" in parts.netloc:
        raise InvalidInputError("base_url must not carry credentials; pass token= instead")
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise InvalidInputError(
            f"base_url {base_url!r} has an invalid port; use a number from 1 to 65535"
        )
    if "?" in base_url or "#" in base_url:
        raise InvalidInputError(
            f"base_url {base_url!r} must not have a query or fragment; "
            "give only scheme://host[:port], e.g. https://api.example.com"
        )
    if _API_ROOT in parts.path.rstrip("/") + "/":
        raise InvalidInputError(
            f"base_url {base_url!r} already holds the API path; give only "
            f"scheme://host[:port], asyncstop adds {STOP_ORDERS_PATH}{{orderId}} itself"
        )
    return base_url.rstrip("/")


def check_count(name: str, value: object, *, minimum: int) -> int:
    """Return ``value`` if it is an int (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InvalidInputError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value


def check_seconds(name: str, value: object, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float if it is a finite number > 0 (or >= 0 with ``allow_zero``).

    Used for times and rates alike: an infinite rate or time makes a call wait
    forever or never, and a bool is a slip, not a number.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number, not {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInputError(f"{name} must be a finite number {bound}, not {value!r}")
    return number


def check_hedge(hedge: object) -> float | str | None:
    """Return ``hedge`` if it is None (off), ``"auto"``, or a finite number of seconds > 0."""
    if hedge is None or hedge == "auto":
        return hedge
    if isinstance(hedge, str):
        raise InvalidInputError(f'hedge must be None, "auto" or seconds > 0, not {hedge!r}')
    return check_seconds("hedge (seconds)", hedge)


def check_bulk_settings(
    *,
    deadline: float | None,
    concurrency: int | None,
    rate_limit: float | None,
    hedge: object = None,
) -> None:
    """Refuse bad bulk-cancel settings (shared by the bulk call, the kill switch and the CLI)."""
    check_hedge(hedge)
    if concurrency is not None:
        check_count("concurrency", concurrency, minimum=1)
    if deadline is not None:
        check_seconds("deadline", deadline, allow_zero=True)
    if rate_limit is not None:
        check_seconds("rate_limit (requests/s)", rate_limit)
