"""The private pipe between a bot and its watchdog: one JSON message a line, each way.

Bot -> watchdog (the watchdog's stdin): ``Config`` first (it carries the token,
which is never on a command line or in an environment), then ``Heartbeat``,
``Token``, ``Fire`` and ``Disarm``. Watchdog -> bot (its stdout): ``Ready`` or
``StartFailed``, then for each ``Fire`` its results in ``Results`` chunks and a
closing ``Report`` (or ``FireFailed``). A report travels in chunks so that the
bot's loop decodes it a few hundred results at a time.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .. import _errors
from .._errors import AsyncStopError

if TYPE_CHECKING:
    from .._report import CancelResult

__all__ = [
    "CHUNK",
    "LINE_LIMIT",
    "BotMessage",
    "Config",
    "Disarm",
    "Fire",
    "FireFailed",
    "Heartbeat",
    "Ready",
    "Report",
    "Results",
    "StartFailed",
    "Token",
    "WatchdogMessage",
    "decode_results",
    "encode",
    "encode_results",
    "jwt_expiry",
]

#: Results per ``Results`` message: a line of about 40 KiB, decoded in well under a millisecond.
CHUNK: Final = 50
#: The longest line either side reads (a chunk of results with long error messages).
LINE_LIMIT: Final = 4 << 20


class Config(msgspec.Struct, tag="config", kw_only=True):
    """Everything the watchdog needs, sent once as the first line."""

    registry: str
    report_path: str
    base_url: str
    token: str
    account_id: str | None
    heartbeat_timeout: float
    deadline: float | None
    concurrency: int | None
    rate_limit: float | None
    hedge: float | str | None
    max_concurrency: int
    timeout: float
    preflight: bool
    warm_up: bool


class Heartbeat(msgspec.Struct, tag="hb"):
    """The bot's loop is alive; ``sent`` is its ``time.monotonic()`` when it wrote this."""

    sent: float


class Token(msgspec.Struct, tag="token"):
    """A fresh bearer token from the bot's provider."""

    token: str


class Fire(msgspec.Struct, tag="fire"):
    """Cancel every order in the registry now and report back (``id`` names the request)."""

    id: int


class Disarm(msgspec.Struct, tag="disarm"):
    """The bot is leaving cleanly: exit without cancelling when the pipe closes."""


class Ready(msgspec.Struct, tag="ready"):
    """Preflight passed and connections are warm."""

    pid: int


class StartFailed(msgspec.Struct, tag="start_failed"):
    """The watchdog could not get ready (bad token, account or URL, no connection)."""

    kind: str
    message: str


class Results(msgspec.Struct, tag="results"):
    """A chunk of a fire's results, in report order (encoded ``CancelResult`` objects)."""

    id: int
    results: msgspec.Raw


class Report(msgspec.Struct, tag="report"):
    """The end of a fire's report."""

    id: int
    elapsed: float
    source_error: str | None = None


class FireFailed(msgspec.Struct, tag="fire_failed"):
    """A fire ended without a report."""

    id: int
    kind: str
    message: str


BotMessage = Config | Heartbeat | Token | Fire | Disarm
WatchdogMessage = Ready | StartFailed | Results | Report | FireFailed

_encoder: Final = msgspec.json.Encoder()


def encode(message: BotMessage | WatchdogMessage) -> bytes:
    """One message as a line."""
    return _encoder.encode(message) + b"\n"


# -- results, errors included ---------------------------------------------------------------

# Attributes of asyncstop's errors worth carrying across; bytes travel as base64.
_ERROR_ATTRIBUTES: Final = (
    "order_id",
    "status_code",
    "error_code",
    "request_id",
    "after_unknown_attempt",
    "retry_after",
    "account_id",
)


def _encode_error(obj: Any) -> Any:
    if isinstance(obj, BaseException):
        attributes = {
            name: value
            for name in _ERROR_ATTRIBUTES
            if isinstance(value := getattr(obj, name, None), str | int | float | bool)
        }
        body = getattr(obj, "body", None)
        if isinstance(body, bytes):
            attributes["body"] = base64.b64encode(body[:1024]).decode()
        return {"type": type(obj).__name__, "message": str(obj), "attributes": attributes}
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _decode_error(kind: type, obj: Any) -> Any:
    """Rebuild an error as the class it was (any public asyncstop error), with its attributes."""

    if not (isinstance(kind, type) and issubclass(kind, AsyncStopError)):
        raise NotImplementedError(f"cannot decode {kind!r}")
    name, message = str(obj.get("type", "")), str(obj.get("message", ""))
    cls = getattr(_errors, name, None)
    if not (isinstance(cls, type) and issubclass(cls, AsyncStopError)):
        cls = AsyncStopError
        message = f"{name}: {message}" if name else message
    err = cls.__new__(cls)
    Exception.__init__(err, message)
    attributes: dict[str, Any] = dict(obj.get("attributes") or {})
    body = attributes.pop("body", None)
    # What the error's __init__ would have set, so that every documented
    # attribute exists; the report keeps no traceback.
    fields: dict[str, Any] = {}
    if issubclass(cls, _errors.APIError):
        fields.update(message=message, order_id=None)
    if issubclass(cls, _errors.APIStatusError | _errors.ResponseValidationError):
        fields.update(status_code=0, body=b"")
    if issubclass(cls, _errors.APIStatusError):
        fields.update(error_code=None, errors=[], request_id=None)
    fields.update(attributes)
    if isinstance(body, str):
        try:
            fields["body"] = base64.b64decode(body)
        except (binascii.Error, ValueError):
            fields["body"] = b""
    for key, value in fields.items():
        setattr(err, key, value)
    return err


_result_encoder: Final = msgspec.json.Encoder(enc_hook=_encode_error)
_result_decoders: dict[str, msgspec.json.Decoder[list[CancelResult]]] = {}


def encode_results(results: list[CancelResult]) -> msgspec.Raw:
    """A chunk of results as raw JSON for a ``Results`` message."""
    return msgspec.Raw(_result_encoder.encode(results))


def decode_results(raw: msgspec.Raw) -> list[CancelResult]:
    """The results of a ``Results`` message."""
    decoder = _result_decoders.get("results")
    if decoder is None:
        from .._report import CancelResult  # noqa: PLC0415 - kept off the bot's import path

        decoder = _result_decoders["results"] = msgspec.json.Decoder(
            list[CancelResult], dec_hook=_decode_error
        )
    return decoder.decode(raw)


# -- tokens ---------------------------------------------------------------------------------


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (seconds since the epoch), read without verifying it.

    Only the watchdog's refresh schedule depends on it: the exchange still checks
    the signature. None when the token is not a JWT or has no numeric ``exp``.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    payload = parts[1]
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (binascii.Error, ValueError):
        return None
    exp = claims.get("exp") if isinstance(claims, dict) else None
    if isinstance(exp, int | float) and not isinstance(exp, bool):
        return float(exp)
    return None
