"""Input checks that run before anything is sent.

An order id becomes one URL path segment and an account id becomes a header
value, so anything that could change the URL or the headers is refused here.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from ._errors import InvalidInputError

__all__ = ["check_account_id", "check_base_url", "check_order_id", "check_token"]

# RFC 3986 pchar without percent-encoding: unreserved, sub-delims, ":" and "@".
# Everything else (/, ?, #, %, \, whitespace, control and non-ASCII characters)
# would change the path, the query or the request line, or needs encoding that a
# server may decode differently from us.
_SAFE_SEGMENT: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]+")
_SAFE_SEGMENT_CHAR: Final = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@]")
# A header value must not hold CR, LF or any other control character.
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")


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


def check_token(token: object) -> str:
    """Return ``token`` if it is usable in an Authorization header; never echo it."""
    if not isinstance(token, str):
        raise InvalidInputError(f"token must be a str, not {type(token).__name__}")
    if not token or token.strip() != token or " " in token:
        raise InvalidInputError("token must be non-empty and contain no whitespace")
    if _CONTROL.search(token):
        raise InvalidInputError("token contains a control character (CR, LF, ...)")
    if token.lower().startswith("bearer"):
        # A common slip: asyncstop adds the "Bearer " scheme itself.
        raise InvalidInputError('token must be the bare JWT, without the "Bearer " prefix')
    return token


def check_base_url(base_url: object) -> str:
    """Return ``base_url`` without a trailing slash if it is an http(s) URL with a host."""
    if not isinstance(base_url, str):
        raise InvalidInputError(f"base_url must be a str, not {type(base_url).__name__}")
    if _CONTROL.search(base_url) or " " in base_url:
        raise InvalidInputError(f"base_url {base_url!r} contains whitespace or control characters")
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https"):
        raise InvalidInputError(f"base_url {base_url!r} must start with https:// or http://")
    if not parts.hostname:
        raise InvalidInputError(f"base_url {base_url!r} has no host")
    if parts.username or parts.password:
        raise InvalidInputError("base_url must not carry credentials; pass token= instead")
    if parts.query or parts.fragment:
        raise InvalidInputError(f"base_url {base_url!r} must not have a query or fragment")
    return base_url.rstrip("/")
