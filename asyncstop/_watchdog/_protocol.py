"""The private pipe between a bot and its watchdog: one JSON message a line, each way.

Bot -> watchdog (the watchdog's stdin): ``Config`` first (it carries the token
and a PostgreSQL registry's DSN, which are never on a command line or in an
environment), then ``Heartbeat``,
``Token``, ``Fire``, ``Disarm`` and ``TakeOver``. Watchdog -> bot (its
stdout): ``Ready`` or ``StartFailed``; for each ``Fire`` its results in
``Results`` chunks and a closing ``Report`` (or ``FireFailed``); and ``Fired``
when it fires by itself (a resumed bot reads it first thing). A report travels
in chunks so that the bot's loop decodes it a few hundred results at a time.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import TYPE_CHECKING, Any, Final

import msgspec

from .._errors import AsyncStopError, error_from_wire, error_to_wire
from ._settings import WatchdogSettings

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
    "Fired",
    "Heartbeat",
    "Ready",
    "RegistryFile",
    "RegistryOwner",
    "Report",
    "Results",
    "StartFailed",
    "TakeOver",
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


class RegistryFile(msgspec.Struct, tag="file", frozen=True):
    """A :class:`~asyncstop.StopOrderRegistry` file."""

    path: str


class RegistryOwner(msgspec.Struct, tag="postgres", frozen=True):
    """An owner's stops in a :class:`~asyncstop.PostgresRegistry` (the DSN may hold a password)."""

    dsn: str
    owner: str

    def __repr__(self) -> str:
        return f"RegistryOwner(owner={self.owner!r})"


class Config(msgspec.Struct, tag="config", kw_only=True):
    """Everything the watchdog needs, sent once as the first line."""

    registry: RegistryFile | RegistryOwner
    #: None: no report file (a PostgreSQL registry's watchdog logs only).
    report_path: str | None
    base_url: str
    token: str
    account_id: str | None
    settings: WatchdogSettings


class Heartbeat(msgspec.Struct, tag="hb"):
    """The bot's loop is alive; ``sent`` is its ``time.monotonic()`` when it wrote this."""

    sent: float


class Token(msgspec.Struct, tag="token"):
    """A fresh bearer token from the bot's provider."""

    token: str


class Fire(msgspec.Struct, tag="fire"):
    """Cancel every order in the registry now and report back (``id`` names the request)."""

    id: int
    include_protective: bool = True


class Disarm(msgspec.Struct, tag="disarm"):
    """The bot is leaving cleanly: exit without cancelling when the pipe closes."""


class TakeOver(msgspec.Struct, tag="take_over"):
    """The bot arms a new watchdog after this one fired: stop firing, release the lock, exit."""


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


class Fired(msgspec.Struct, tag="fired"):
    """The watchdog fired by itself: ``reason`` bot_died or heartbeat_timeout, ``at`` ISO UTC."""

    reason: str
    at: str
    pid: int


class FireFailed(msgspec.Struct, tag="fire_failed"):
    """A fire ended without a report."""

    id: int
    kind: str
    message: str


BotMessage = Config | Heartbeat | Token | Fire | Disarm | TakeOver
WatchdogMessage = Ready | StartFailed | Results | Report | FireFailed | Fired

_encoder: Final = msgspec.json.Encoder()


def encode(message: BotMessage | WatchdogMessage) -> bytes:
    """One message as a line."""
    return _encoder.encode(message) + b"\n"


# -- results, errors included ---------------------------------------------------------------


def _encode_error(obj: Any) -> Any:
    if isinstance(obj, AsyncStopError):
        return error_to_wire(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _decode_error(kind: type, obj: Any) -> Any:
    """Rebuild an error through its class's constructor (``_errors.error_from_wire``)."""
    if not (isinstance(kind, type) and issubclass(kind, AsyncStopError)):
        raise NotImplementedError(f"cannot decode {kind!r}")
    return error_from_wire(obj)


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
