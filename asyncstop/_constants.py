"""Defaults and fixed facts of the Cancel Stop order API, named once."""

from __future__ import annotations

from typing import Final, Literal

#: The documented path prefix; the order id is appended as one path segment.
STOP_ORDERS_PATH: Final = "/frontoffice/api/v3/stop-orders/"

#: The documented list of the trading accounts a token may use (the preflight).
ACCOUNTS_PATH: Final = "/frontoffice/api/v3/accounts"

#: The documented request carries the API version as a media-type parameter of
#: Content-Type, even though the DELETE has no body.
API_CONTENT_TYPE: Final = "application/json; x-api-version=4.0"
API_ACCEPT: Final = "*/*"

#: Per-attempt timeout in seconds. aiohttp's own default (300 s) is far too long
#: for a kill switch.
DEFAULT_TIMEOUT: Final = 10.0
#: Time allowed to open one TCP (and TLS) connection, within the attempt timeout.
DEFAULT_CONNECT_TIMEOUT: Final = 5.0
#: Retries after the first attempt; ``max_retries=0`` disables retrying.
DEFAULT_MAX_RETRIES: Final = 3
#: Size of the keep-alive connection pool, and the default bulk concurrency.
DEFAULT_MAX_CONCURRENCY: Final = 64

#: Exponential backoff: ``INITIAL * 2**n`` seconds, capped at ``MAX``, with jitter.
INITIAL_RETRY_DELAY: Final = 0.05
MAX_RETRY_DELAY: Final = 2.0
#: A server's ``Retry-After`` is obeyed up to this many seconds; beyond it the
#: call gives up instead of sleeping through the caller's emergency.
DEFAULT_MAX_RETRY_AFTER: Final = 30.0
#: Pause applied after a 429 that carries no usable ``Retry-After``. Assumed:
#: the API documentation does not describe rate limiting at all.
DEFAULT_RATE_LIMIT_PAUSE: Final = 1.0

#: The proactive rate limit may run this many seconds' worth of requests
#: ahead, to absorb late wake-ups of the event loop (see ``new_limiter``).
RATE_LIMIT_TOLERANCE: Final = 0.01

#: A 429 does not use up ``max_retries`` (the exchange did not act on the
#: request, and the account is paused as it asked); an order is retried after
#: at most this many 429s, and never past the deadline.
MAX_RATE_LIMITED_RETRIES: Final = 20

#: An attempt is not started with less than this left before the deadline: it
#: could not get an answer back in time, and not sending it keeps the report
#: exact (``not_sent`` rather than ``unknown``).
MIN_ATTEMPT_BUDGET: Final = 0.002

#: The environment variable that switches on asyncstop's logging (``debug`` or
#: ``info``) when the application has not configured logging itself.
LOG_ENV_VAR: Final = "ASYNCSTOP_LOG"

#: Reply bodies are read up to this many bytes (after decompression). A Cancel
#: Stop order reply is under 1 KiB; anything far larger is not one, and reading
#: it whole would let a broken gateway fill the bot's memory.
DEFAULT_MAX_BODY_SIZE: Final = 64 * 1024
#: An error kept in a report holds at most this much of its reply body.
MAX_ERROR_BODY_KEPT: Final = 1024

#: The kill switch's ``hedge=`` when none is given: see docs/bulk.md, "Hedged cancels".
DEFAULT_KILL_SWITCH_HEDGE: Final[float | Literal["auto"] | None] = None
