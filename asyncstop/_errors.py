"""The errors asyncstop raises, rooted in one class.

::

    AsyncStopError
    ├── InvalidInputError (also ValueError): refused before anything was sent
    ├── TokenProviderError: the token provider raised, hung or gave an unusable token
    ├── AccountNotFoundError: preflight: the token may not use this account
    ├── WatchdogError: the watchdog process could not start, died, or gave no report
    ├── LeaseLostError: a PostgreSQL registry's lease expired or was taken over
    └── APIError
        ├── APIStatusError: the exchange answered with an error status
        │   ├── BadRequestError           400
        │   ├── AuthenticationError       401
        │   ├── PermissionDeniedError     403
        │   ├── OrderNotFoundError        404
        │   ├── RateLimitError            429
        │   └── ServerError               5xx
        ├── APIConnectionError: no complete answer arrived
        │   └── APITimeoutError (also TimeoutError)
        └── ResponseValidationError: a 2xx or 404 that is no evidence from the exchange

Other statuses (405, 408, 409, 422, ...) raise a plain ``APIStatusError``.
No error's message, repr or attributes ever contain the bearer token: the
request headers are not kept on errors at all.

:func:`error_to_wire` and :func:`error_from_wire` carry an error across a
process boundary (the watchdog's pipe) as a JSON-ready dict, and rebuild it
through its class's constructor, so every documented attribute survives.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any, ClassVar

import msgspec

from ._constants import MAX_ERROR_BODY_KEPT

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AccountNotFoundError",
    "AsyncStopError",
    "AuthenticationError",
    "BadRequestError",
    "InvalidInputError",
    "LeaseLostError",
    "OrderNotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseValidationError",
    "ServerError",
    "TokenProviderError",
    "WatchdogError",
    "error_from_wire",
    "error_to_wire",
    "forget_traceback",
    "status_error",
]


class AsyncStopError(Exception):
    """Root of every error asyncstop raises on purpose."""

    # What error_to_wire carries besides the message: the constructor's keyword
    # arguments, and the attributes set after construction; each is an
    # attribute of the same name. A subclass with new ones extends these.
    _wire_keywords: ClassVar[tuple[str, ...]] = ()
    _wire_attributes: ClassVar[tuple[str, ...]] = ()


class InvalidInputError(AsyncStopError, ValueError):
    """An argument was refused before any request was sent (bad id, header injection, ...)."""


class TokenProviderError(AsyncStopError):
    """The token provider raised, did not answer in time, or returned an unusable token.

    Nothing was sent with the missing token; in a bulk call the account's
    unsent orders end ``not_sent`` with this error.
    """


class AccountNotFoundError(AsyncStopError):
    """Preflight: the account id is not among the accounts the token may use.

    ``account_id`` is the account asked for; ``available`` the ids the
    exchange listed for the token.
    """

    _wire_keywords: ClassVar[tuple[str, ...]] = ("account_id", "available")

    def __init__(self, message: str, *, account_id: str, available: list[str]) -> None:
        super().__init__(message)
        self.account_id = account_id
        self.available = available


class WatchdogError(AsyncStopError):
    """The watchdog process could not start, died, or ended a fire without a report.

    ``kind`` names the error the watchdog met (``"AuthenticationError"``, ...)
    when it reported one.
    """

    _wire_keywords: ClassVar[tuple[str, ...]] = ("kind",)

    def __init__(self, message: str, *, kind: str | None = None) -> None:
        super().__init__(message)
        self.kind = kind


class LeaseLostError(AsyncStopError):
    """A :class:`~asyncstop.PostgresRegistry`'s lease is lost: the registry refuses new stops.

    Raised by ``add()`` once the bot's lease expired (it could not renew it in
    time) or another holder took the owner over with a higher epoch. The
    database's transaction refuses the row, not only the bot: an off-host
    service may be cancelling this owner's stops already.
    """


class APIError(AsyncStopError):
    """A request to the exchange did not end in a usable success."""

    #: The order the request was about, when there was one.
    order_id: str | None
    _wire_keywords: ClassVar[tuple[str, ...]] = ("order_id",)

    def __init__(self, message: str, *, order_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.order_id = order_id


class APIConnectionError(APIError):
    """No complete answer arrived (refused, reset or dropped connection).

    ``request_sent`` tells whether the request reached the wire: when False
    (refused connection, DNS or TLS failure, no pooled connection in time) the
    exchange saw nothing and the order is untouched; when True the outcome is
    unknown.
    """

    _wire_keywords: ClassVar[tuple[str, ...]] = ("order_id", "request_sent")

    def __init__(
        self, message: str, *, order_id: str | None = None, request_sent: bool = True
    ) -> None:
        super().__init__(message, order_id=order_id)
        self.request_sent = request_sent


class APITimeoutError(APIConnectionError, TimeoutError):
    """The attempt ran out of time before an answer arrived: the outcome is unknown."""


class ResponseValidationError(APIError):
    """A 2xx whose body is not this order's reply, or a 404 that is not the API's JSON answer.

    An HTML page, an empty body, another order's reply, a body over the size
    limit, a proxy's 404 page: an answer from something that is not the
    exchange (a captive portal, a misrouted gateway, a stale reply). It is no evidence that the
    order is gone, so it is retried like a 5xx and, if retries run out, the
    order is reported ``unknown``. ``body`` holds the first bytes (at most
    1 KiB) and ``content_type`` the reply's Content-Type.
    """

    _wire_keywords: ClassVar[tuple[str, ...]] = ("body", "status_code", "order_id", "content_type")

    def __init__(
        self,
        message: str,
        *,
        body: bytes,
        status_code: int,
        order_id: str | None = None,
        content_type: str | None = None,
    ) -> None:
        super().__init__(message, order_id=order_id)
        self.body = body[:MAX_ERROR_BODY_KEPT]
        self.status_code = status_code
        self.content_type = content_type


class _ErrorBody(msgspec.Struct, rename="camel"):
    """The error body of the older B2Trader API; assumed, since the docs list no errors."""

    error_code: int | str | None = None
    message: str | None = None
    errors: list[Any] | None = None


_error_body_decoder = msgspec.json.Decoder(_ErrorBody)


class APIStatusError(APIError):
    """The exchange answered with a non-2xx status.

    ``error_code`` and ``exchange_message`` come from the body when it has the
    ``{"errorCode", "message", "errors"}`` shape; any other body, or none,
    still gives this error with the status and the first KiB of the raw ``body``.
    ``message`` is the full text of the error, as ``str(err)``.
    """

    _wire_keywords: ClassVar[tuple[str, ...]] = (
        "status_code",
        "body",
        "error_code",
        "errors",
        "request_id",
        "order_id",
        "exchange_message",
    )

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        body: bytes = b"",
        error_code: int | str | None = None,
        errors: list[Any] | None = None,
        request_id: str | None = None,
        order_id: str | None = None,
        exchange_message: str | None = None,
    ) -> None:
        super().__init__(message, order_id=order_id)
        self.status_code = status_code
        # An error kept in a report must not keep a whole error page alive.
        self.body = body[:MAX_ERROR_BODY_KEPT]
        self.exchange_message = exchange_message
        self.error_code = error_code
        self.errors = errors if errors is not None else []
        self.request_id = request_id


class BadRequestError(APIStatusError):
    """400: the exchange refused the request as malformed; retrying cannot help."""


class AuthenticationError(APIStatusError):
    """401: the token was refused, and a fresh one (if a provider was given) was refused too."""


class PermissionDeniedError(APIStatusError):
    """403: the token may not act on this account or order."""


class OrderNotFoundError(APIStatusError):
    """404: the exchange has no live stop order with this id for this account.

    ``after_unknown_attempt`` is True when an earlier attempt of the same call
    had an unknown outcome (timeout, dropped connection, 5xx): that attempt most
    likely cancelled the order, so this is the usual sign of success, not of a
    wrong id.
    """

    after_unknown_attempt: bool = False
    _wire_attributes: ClassVar[tuple[str, ...]] = ("after_unknown_attempt",)


class RateLimitError(APIStatusError):
    """429: the exchange asked the client to slow down; ``retry_after`` is its pause in seconds."""

    retry_after: float | None = None
    _wire_attributes: ClassVar[tuple[str, ...]] = ("retry_after",)


class ServerError(APIStatusError):
    """5xx: the exchange failed; it may or may not have applied the cancel."""


_STATUS_CLASSES: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: OrderNotFoundError,
    429: RateLimitError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """Return the exception class for an HTTP error status."""
    if status_code >= 500:
        return ServerError
    return _STATUS_CLASSES.get(status_code, APIStatusError)


def status_error(
    status_code: int,
    body: bytes,
    *,
    reason: str | None = None,
    request_id: str | None = None,
    order_id: str | None = None,
) -> APIStatusError:
    """Build the error for a non-2xx answer, decoding the body tolerantly."""
    error_code: int | str | None = None
    exchange_message: str | None = None
    errors: list[Any] | None = None
    if body:
        try:
            decoded = _error_body_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            error_code, exchange_message, errors = (
                decoded.error_code,
                decoded.message,
                decoded.errors,
            )
    parts = [f"HTTP {status_code}"]
    if reason:
        parts[0] += f" {reason}"
    if order_id is not None:
        parts.append(f"order {order_id}")
    if error_code is not None:
        parts.append(f"errorCode {error_code}")
    if exchange_message:
        parts.append(exchange_message)
    return status_error_class(status_code)(
        ": ".join(parts),
        status_code=status_code,
        body=body,
        error_code=error_code,
        errors=errors,
        request_id=request_id,
        order_id=order_id,
        exchange_message=exchange_message,
    )


def forget_traceback(err: BaseException) -> None:
    """Drop the tracebacks of ``err`` and of the errors chained to it.

    An error kept as a record (in a bulk result, or by tenacity between
    attempts) holds its traceback, whose frames hold the locals that hold the
    error: a reference cycle that only the garbage collector can free. A bulk
    cancel against a failing exchange makes one per failed attempt, and they
    live long enough to reach the oldest generation, whose collection stops
    the event loop while it walks the application's whole heap. The messages,
    statuses and chained causes stay.
    """
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        current.__traceback__ = None
        if current.__cause__ is not None:
            forget_traceback(current.__cause__)
        current = current.__context__


# -- across a process boundary ---------------------------------------------------------------


def error_to_wire(err: AsyncStopError) -> dict[str, Any]:
    """``err`` as a JSON-ready dict that :func:`error_from_wire` rebuilds.

    Holds the class name, the message and every attribute the class declares
    (bytes as base64); no traceback and no chained cause. The bearer token is
    never on an error, so never on the wire.
    """
    cls = type(err)
    fields: dict[str, Any] = {}
    for name in (*cls._wire_keywords, *cls._wire_attributes):
        value = getattr(err, name)
        fields[name] = (
            {"base64": base64.b64encode(value).decode()} if isinstance(value, bytes) else value
        )
    return {"type": cls.__name__, "message": str(err), "fields": fields}


def error_from_wire(wire: Mapping[str, Any]) -> AsyncStopError:
    """Rebuild the error :func:`error_to_wire` gave, through its class's constructor.

    A class this version does not know (a newer sender), or fields its
    constructor refuses, give a plain :class:`AsyncStopError` whose message
    starts with the class name, so nothing is lost silently. Raises
    ``ValueError`` when ``wire`` is not such a dict at all.
    """
    name, message, fields = wire.get("type"), wire.get("message"), wire.get("fields", {})
    if not isinstance(name, str) or not isinstance(message, str) or not isinstance(fields, dict):
        raise ValueError("not an error from error_to_wire")
    cls = _WIRE_CLASSES.get(name)
    if cls is None:
        return AsyncStopError(f"{name}: {message}")
    values = {key: _from_wire_value(value) for key, value in fields.items()}
    try:
        err = cls(message, **{key: values[key] for key in cls._wire_keywords if key in values})
    except (TypeError, ValueError):
        return AsyncStopError(f"{name}: {message}")
    for key in cls._wire_attributes:
        if key in values:
            setattr(err, key, values[key])
    return err


def _from_wire_value(value: Any) -> Any:
    if isinstance(value, dict) and value.keys() == {"base64"} and isinstance(value["base64"], str):
        try:
            return base64.b64decode(value["base64"], validate=True)
        except (binascii.Error, ValueError):
            return b""
    return value


#: The classes error_from_wire may build: every public error of this module, by name.
_WIRE_CLASSES: dict[str, type[AsyncStopError]] = {
    name: obj
    for name, obj in list(globals().items())
    if isinstance(obj, type) and issubclass(obj, AsyncStopError) and not name.startswith("_")
}
