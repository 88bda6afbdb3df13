"""What the fake exchange answers: the documented bodies, the assumed errors, and the odd answers.

The success bodies follow the documentation (``cancel-stop-order.txt``,
``get-accounts.txt``); the error bodies are the older B2Trader API's shape,
assumed because the docs list no errors. The odd answers (huge, endless and
gzip-bomb bodies, an unsolicited second answer) are what broken proxies and
gateways send.
"""

from __future__ import annotations

import asyncio
import struct
import zlib
from collections.abc import Callable
from functools import cache
from http import HTTPStatus
from typing import Final

import msgspec
from aiohttp import web

from ._faults import Fault

__all__ = [
    "API_CONTENT_TYPE",
    "BODY_BAD_CONTENT_TYPE",
    "BODY_HAS_BODY",
    "BODY_NO_ACCEPT",
    "BODY_NO_ACCOUNT",
    "crc32_of_repeats",
    "drop",
    "error",
    "json_response",
    "not_found",
    "raw_ok",
    "reply",
    "stream",
    "too_many",
    "unauthorized",
]

#: The documented request's Content-Type (the API version rides on it), checked exactly.
API_CONTENT_TYPE: Final = "application/json; x-api-version=4.0"
_JSON: Final = "application/json; charset=utf-8"
_JSON_HEADERS: Final = {"Content-Type": _JSON}


def _error_body(error_code: int, message: str, errors: list[dict[str, str]] | None = None) -> bytes:
    """The error body of the older B2Trader API (assumed: the docs list no errors)."""
    return msgspec.json.encode(
        {"errorCode": error_code, "message": message, "errors": errors or []}
    )


def _field_error(key: str, code: str, message: str) -> list[dict[str, str]]:
    return [{"key": key, "code": code, "message": message}]


_BODY_UNAUTHORIZED: Final = _error_body(10005, "Unauthorized")
BODY_NO_ACCOUNT: Final = _error_body(
    10001,
    "accountId header is required",
    _field_error("accountId", "required", "The accountId header is required."),
)
BODY_BAD_CONTENT_TYPE: Final = _error_body(
    10001,
    "Invalid request headers",
    _field_error("Content-Type", "invalid", f"Content-Type must be '{API_CONTENT_TYPE}'."),
)
BODY_NO_ACCEPT: Final = _error_body(
    10001,
    "Invalid request headers",
    _field_error("Accept", "required", "The Accept header is required."),
)
BODY_HAS_BODY: Final = _error_body(
    10001,
    "Invalid request body",
    _field_error("body", "not_allowed", "This request takes no body."),
)
_BODY_NOT_FOUND: Final = _error_body(
    10002, "Object not found", _field_error("orderId", "not_found", "Stop order not found")
)
_BODY_TOO_MANY: Final = _error_body(10029, "Too many requests")


def json_response(status: int, body: bytes) -> web.Response:
    """``status`` with a JSON ``body``."""
    return web.Response(status=status, body=body, headers=_JSON_HEADERS)


def unauthorized() -> web.Response:
    """401 for a missing or refused bearer token."""
    return web.Response(
        status=401,
        body=_BODY_UNAUTHORIZED,
        headers={"Content-Type": _JSON, "WWW-Authenticate": "Bearer"},
    )


def not_found() -> web.Response:
    """404: no live stop order with this id on this account (or a forbidden account)."""
    return json_response(404, _BODY_NOT_FOUND)


def too_many(retry_after: str | None) -> web.Response:
    """429, with ``Retry-After`` when given."""
    response = json_response(429, _BODY_TOO_MANY)
    if retry_after is not None:
        response.headers["Retry-After"] = retry_after
    return response


def drop(request: web.BaseRequest) -> web.StreamResponse:
    """Close the connection so the client sees it end with no answer at all.

    aiohttp then tries to write the returned response, finds the transport
    gone and gives up quietly; nothing reaches the client.
    """
    request.protocol.force_close()
    return web.Response()


def error(fault: Fault) -> web.Response:
    """The answer of :meth:`Fault.error`."""
    assert fault.status is not None
    response = json_response(
        fault.status, fault.body if fault.body is not None else _default_error_body(fault.status)
    )
    if fault.retry_after is not None:
        response.headers["Retry-After"] = fault.retry_after
    return response


def _default_error_body(status: int) -> bytes:
    # errorCode 10000 ("internal error") is invented: the docs list no errors.
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    return _error_body(10000, phrase)


def reply(fault: Fault, body: bytes | None = None) -> web.Response:
    """The answer of :meth:`Fault.reply` (or ``body`` with the fault's status)."""
    assert fault.status is not None
    headers = dict(fault.headers)
    if not any(name.lower() == "content-type" for name in headers):
        headers.update(_JSON_HEADERS)
    return web.Response(
        status=fault.status, body=fault.body if body is None else body, headers=headers
    )


def raw_ok(body: bytes) -> bytes:
    """A complete HTTP/1.1 200 answer with a JSON ``body``, as bytes for a transport."""
    return _raw(200, "OK", body)


def raw_not_found() -> bytes:
    """The documented 404 answer, complete, as bytes for a transport."""
    return _raw(404, "Not Found", _BODY_NOT_FOUND)


def _raw(status: int, reason: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


# -- streamed bodies -------------------------------------------------------------

#: Filler of huge and endless bodies, and what a gzip bomb decompresses to.
_FILLER_BYTE: Final = b"x"
_CHUNK: Final = 1 << 16
_FILLER: Final = _FILLER_BYTE * _CHUNK
#: A gzip bomb repeats one compressed block of this many decompressed bytes.
_BOMB_BLOCK: Final = 1 << 20
#: Compressed blocks per write: about 64 KiB on the wire.
_BOMB_BLOCKS_PER_WRITE: Final = 64
#: A gzip member header: magic, deflate, no flags, no mtime, no extra flags, unknown OS.
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_CRC_POLY: Final = 0xEDB88320


@cache
def _bomb_block() -> bytes:
    """One block of filler, deflated and fully flushed: identical output every time it is sent."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(_FILLER_BYTE * _BOMB_BLOCK) + compressor.flush(zlib.Z_FULL_FLUSH)


def _bomb_tail(remainder: int) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(_FILLER_BYTE * remainder) + compressor.flush(zlib.Z_FINISH)


def _crc_multiply(a: int, b: int) -> int:
    """a * b modulo the CRC-32 polynomial, both in the reflected bit order zlib uses."""
    product = 0
    bit = 1 << 31  # x**0
    while a:
        if a & bit:
            product ^= b
            a ^= bit
        bit >>= 1
        b = (b >> 1) ^ _CRC_POLY if b & 1 else b >> 1
    return product


def _crc_shift(crc: int, length: int) -> int:
    """The CRC-32 ``crc`` of some bytes, followed by ``length`` more bytes (times x**(8*length))."""
    power, base, exponent = 1 << 31, 1 << 30, 8 * length  # x**0, x**1
    while exponent:
        if exponent & 1:
            power = _crc_multiply(power, base)
        base = _crc_multiply(base, base)
        exponent >>= 1
    return _crc_multiply(power, crc)


def crc32_of_repeats(block: bytes, count: int) -> int:
    """``zlib.crc32(block * count)`` without building or reading ``block * count``."""
    # crc32(a + b) == shift(crc32(a), len(b)) ^ crc32(b): double a run of blocks bit by bit.
    crc, run_crc, run_length = 0, zlib.crc32(block), len(block)
    while count:
        if count & 1:
            crc = _crc_shift(crc, run_length) ^ run_crc
        run_crc = _crc_shift(run_crc, run_length) ^ run_crc
        run_length *= 2
        count >>= 1
    return crc


def _gzip_bomb(size: int) -> tuple[int, int, bytes]:
    """(full blocks, wire length, tail with trailer) of a gzip member of ``size`` filler bytes."""
    blocks, remainder = divmod(size, _BOMB_BLOCK)
    crc = _crc_shift(crc32_of_repeats(_FILLER_BYTE * _BOMB_BLOCK, blocks), remainder) ^ zlib.crc32(
        _FILLER_BYTE * remainder
    )
    tail = _bomb_tail(remainder) + struct.pack("<II", crc, size & 0xFFFFFFFF)
    return blocks, len(_GZIP_HEADER) + blocks * len(_bomb_block()) + len(tail), tail


async def stream(
    request: web.BaseRequest, fault: Fault, closing: Callable[[], bool]
) -> tuple[web.StreamResponse, bool]:
    """Send the body of a huge, endless or gzip-bomb fault; return (response, whole body sent).

    Writing stops early when the client goes away or ``closing()`` turns true.
    Each write yields to the loop, so a client reading in the same loop keeps up.
    """
    assert fault.status is not None
    response = web.StreamResponse(status=fault.status, headers=dict(fault.headers))
    pieces: list[bytes] = []
    blocks = 0
    if fault.kind == "huge_body":
        assert fault.size is not None
        response.content_length = fault.size
    elif fault.kind == "gzip_bomb":
        assert fault.size is not None
        blocks, length, tail = _gzip_bomb(fault.size)
        response.headers["Content-Encoding"] = "gzip"
        response.content_length = length
        pieces = [_GZIP_HEADER, tail]
    else:
        response.enable_chunked_encoding()
    try:
        await response.prepare(request)
        if fault.kind == "huge_body":
            assert fault.size is not None
            left = fault.size
            while left > 0 and not closing():
                piece = _FILLER if left >= _CHUNK else _FILLER[:left]
                await response.write(piece)
                left -= len(piece)
                await asyncio.sleep(0)
            complete = left == 0
        elif fault.kind == "gzip_bomb":
            await response.write(pieces[0])
            while blocks > 0 and not closing():
                batch = min(blocks, _BOMB_BLOCKS_PER_WRITE)
                await response.write(_bomb_block() * batch)
                blocks -= batch
                await asyncio.sleep(0)
            complete = blocks == 0 and not closing()
            if complete:
                await response.write(pieces[1])
        else:
            while not closing():
                await response.write(_FILLER)
                await asyncio.sleep(0)
            complete = False
        if complete:
            await response.write_eof()
    except OSError:  # the client went away (aiohttp raises ConnectionResetError subclasses)
        complete = False
    if not complete:
        request.protocol.force_close()
    return response, complete
