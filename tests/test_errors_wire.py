"""Errors cross a process boundary (the watchdog's pipe) intact: same class, message, attributes."""

from __future__ import annotations

import json

import pytest

import asyncstop
from asyncstop import CancelOutcome, CancelResult
from asyncstop._errors import error_from_wire, error_to_wire, status_error
from asyncstop._watchdog._protocol import decode_results, encode_results


def _rate_limited() -> asyncstop.RateLimitError:
    err = asyncstop.RateLimitError(
        "HTTP 429: slow down", status_code=429, body=b'{"message":"slow down"}', order_id="o-9"
    )
    err.retry_after = 2.5
    return err


def _not_found_after_unknown() -> asyncstop.OrderNotFoundError:
    err = asyncstop.OrderNotFoundError(
        "HTTP 404: order o-4", status_code=404, body=b"{}", order_id="o-4"
    )
    err.after_unknown_attempt = True
    return err


def _status(cls: type[asyncstop.APIStatusError], status: int) -> asyncstop.APIStatusError:
    return cls(
        f"HTTP {status}: order o-1: errorCode E7: refused",
        status_code=status,
        body=b'{"errorCode":"E7","message":"refused","errors":[{"field":"id"}]}\xff',
        error_code="E7",
        errors=[{"field": "id"}],
        request_id="req-1",
        order_id="o-1",
        exchange_message="refused",
    )


#: One instance of every public error class, each attribute set away from its default.
SAMPLES: dict[type[asyncstop.AsyncStopError], asyncstop.AsyncStopError] = {
    asyncstop.AsyncStopError: asyncstop.AsyncStopError("something failed"),
    asyncstop.InvalidInputError: asyncstop.InvalidInputError("order id '' must not be empty"),
    asyncstop.TokenProviderError: asyncstop.TokenProviderError("token command 'vault' failed"),
    asyncstop.AccountNotFoundError: asyncstop.AccountNotFoundError(
        "account acc-9 is not among acc-1, acc-2",
        account_id="acc-9",
        available=["acc-1", "acc-2"],
    ),
    asyncstop.WatchdogError: asyncstop.WatchdogError("refused", kind="AuthenticationError"),
    asyncstop.LeaseLostError: asyncstop.LeaseLostError("the lease of owner bot-1 expired"),
    asyncstop.APIError: asyncstop.APIError("unexpected error", order_id="o-2"),
    asyncstop.APIConnectionError: asyncstop.APIConnectionError(
        "connection refused", order_id="o-3", request_sent=False
    ),
    asyncstop.APITimeoutError: asyncstop.APITimeoutError("read timeout", order_id="o-3"),
    asyncstop.ResponseValidationError: asyncstop.ResponseValidationError(
        "HTTP 404 from something that is not the API",
        body=b"<html>\x00\xff</html>",
        status_code=404,
        order_id="o-5",
        content_type="text/html",
    ),
    asyncstop.APIStatusError: _status(asyncstop.APIStatusError, 422),
    asyncstop.BadRequestError: _status(asyncstop.BadRequestError, 400),
    asyncstop.AuthenticationError: _status(asyncstop.AuthenticationError, 401),
    asyncstop.PermissionDeniedError: _status(asyncstop.PermissionDeniedError, 403),
    asyncstop.OrderNotFoundError: _not_found_after_unknown(),
    asyncstop.RateLimitError: _rate_limited(),
    asyncstop.ServerError: _status(asyncstop.ServerError, 503),
}


def exported_error_classes() -> set[type[BaseException]]:
    """Every exception class that ``asyncstop`` exports."""
    classes = (getattr(asyncstop, name) for name in asyncstop.__all__)
    return {obj for obj in classes if isinstance(obj, type) and issubclass(obj, BaseException)}


def state(err: BaseException) -> tuple[type, tuple[object, ...], dict[str, object]]:
    """What a user can see of an error: its class, its args and every attribute."""
    return type(err), err.args, dict(vars(err))


def test_every_exported_error_class_has_a_round_trip_sample() -> None:
    """A new public error class fails here until it has a sample (and so a round-trip test)."""
    assert exported_error_classes() == set(SAMPLES)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_an_error_survives_the_wire(cls: type[asyncstop.AsyncStopError]) -> None:
    """Through JSON and back, an error keeps its class, message and every attribute."""
    original = SAMPLES[cls]
    assert type(original) is cls
    wire = json.loads(json.dumps(error_to_wire(original)))
    rebuilt = error_from_wire(wire)
    assert state(rebuilt) == state(original)
    assert str(rebuilt) == str(original)


@pytest.mark.parametrize("cls", list(SAMPLES), ids=lambda cls: cls.__name__)
def test_an_error_in_a_watchdog_report_keeps_its_attributes(
    cls: type[asyncstop.AsyncStopError],
) -> None:
    """A result's error decoded from the watchdog's pipe is the same error, attributes and all."""
    result = CancelResult(
        order_id="o-1", account_id="acc-1", outcome=CancelOutcome.UNKNOWN, error=SAMPLES[cls]
    )
    (decoded,) = decode_results(encode_results([result]))
    assert decoded.error is not None
    assert state(decoded.error) == state(SAMPLES[cls])


def test_the_documented_attributes_are_readable_after_the_pipe() -> None:
    """exchange_message, request_sent, content_type and available exist on decoded errors."""
    errors = [
        status_error(503, b'{"message":"down"}', order_id="o-1"),
        asyncstop.APIConnectionError("reset", order_id="o-2"),
        SAMPLES[asyncstop.ResponseValidationError],
        SAMPLES[asyncstop.AccountNotFoundError],
    ]
    results = [
        CancelResult(order_id="o", account_id="a", outcome=CancelOutcome.UNKNOWN, error=err)
        for err in errors
    ]
    decoded = [result.error for result in decode_results(encode_results(results))]
    assert isinstance(decoded[0], asyncstop.ServerError)
    assert decoded[0].exchange_message == "down"
    assert isinstance(decoded[1], asyncstop.APIConnectionError)
    assert decoded[1].request_sent is True
    assert isinstance(decoded[2], asyncstop.ResponseValidationError)
    assert decoded[2].content_type == "text/html"
    assert isinstance(decoded[3], asyncstop.AccountNotFoundError)
    assert decoded[3].available == ["acc-1", "acc-2"]


def test_an_unknown_error_class_keeps_its_name_in_the_message() -> None:
    """An error class this version does not know arrives as AsyncStopError naming it."""
    err = error_from_wire({"type": "QuotaError", "message": "over quota", "fields": {"x": 1}})
    assert type(err) is asyncstop.AsyncStopError
    assert str(err) == "QuotaError: over quota"


def test_fields_the_constructor_refuses_keep_the_name_and_message() -> None:
    """Fields that do not fit the class's constructor give AsyncStopError with name and message."""
    err = error_from_wire({"type": "ServerError", "message": "HTTP 503", "fields": {}})
    assert type(err) is asyncstop.AsyncStopError
    assert str(err) == "ServerError: HTTP 503"


@pytest.mark.parametrize(
    "wire",
    [
        {},
        {"type": "ServerError"},
        {"type": 1, "message": "x"},
        {"type": "X", "message": "m", "fields": []},
    ],
)
def test_a_malformed_wire_error_is_refused(wire: dict[str, object]) -> None:
    """Something that is not error_to_wire's dict raises ValueError instead of a vague error."""
    with pytest.raises(ValueError, match="not an error from error_to_wire"):
        error_from_wire(wire)
