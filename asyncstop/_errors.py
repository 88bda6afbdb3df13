"""The errors asyncstop raises, rooted in one class.

::

    AsyncStopError
    ├── InvalidInputError (also ValueError): refused before anything was sent
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
        └── ResponseValidationError: a 2xx body that could not be decoded

Other statuses (405, 408, 409, 422, ...) raise a plain ``APIStatusError``.
No error's message, repr or attributes ever contain the bearer token: the
request headers are not kept on errors at all.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AsyncStopError",
    "AuthenticationError",
    "BadRequestError",
    "InvalidInputError",
    "OrderNotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseValidationError",
    "ServerError",
    "forget_traceback",
    "status_error",
]


class AsyncStopError(Exception):
    """Root of every error asyncstop raises on purpose."""


class InvalidInputError(AsyncStopError, ValueError):
    """An argument was refused before any request was sent (bad id, header injection, ...)."""


class APIError(AsyncStopError):
    """A request to the exchange did not end in a usable success."""

    #: The order the request was about, when there was one.
    order_id: str | None

    def __init__(self, message: str, *, order_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.order_id = order_id


class APIConnectionError(APIError):
    """No complete answer arrived (refused, reset or dropped connection): the outcome is unknown."""


class APITimeoutError(APIConnectionError, TimeoutError):
    """The attempt ran out of time before an answer arrived: the outcome is unknown."""


class ResponseValidationError(APIError):
    """The exchange answered 2xx, but the body could not be decoded; ``body`` holds the raw bytes.

    A 2xx means the exchange accepted the cancel, so bulk calls still report such
    an order as cancelled and attach this error for the record.
    """

    def __init__(
        self, message: str, *, body: bytes, status_code: int, order_id: str | None = None
    ) -> None:
        super().__init__(message, order_id=order_id)
        self.body = body
        self.status_code = status_code


class _ErrorBody(msgspec.Struct, rename="camel"):
    """The error body of the older B2Trader API; assumed, since the docs list no errors."""

    error_code: int | str | None = None
    message: str | None = None
    errors: list[Any] | None = None


_error_body_decoder = msgspec.json.Decoder(_ErrorBody)


class APIStatusError(APIError):
    """The exchange answered with a non-2xx status.

    ``error_code`` and the exchange's ``message`` come from the body when it has
    the ``{"errorCode", "message", "errors"}`` shape; any other body, or none,
    still gives this error with the status and the raw ``body``.
    """

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
    ) -> None:
        super().__init__(message, order_id=order_id)
        self.status_code = status_code
        self.body = body
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


class RateLimitError(APIStatusError):
    """429: the exchange asked the client to slow down; ``retry_after`` is its pause in seconds."""

    retry_after: float | None = None


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
