"""asyncstop: cancel stop orders at high throughput, and know which are certainly gone.

::

    async with asyncstop.AsyncStopClient(base_url=..., token=..., account_id=...) as client:
        report = await client.cancel_stop_orders(order_ids, deadline=5.0)
        report.pending  # the orders that may still be live

The layers, each importing only those below it (``tests/test_layers.py``)::

    _cli, testing                  the command line; the fake exchange
    _watchdog, _killswitch,        the dead man's switch process; the kill switch;
    _registry, _postgres           the registry of live stops (memory, SQLite or PostgreSQL)
    _client                        AsyncStopClient: settings, lifetime, wiring
    _bulk, _hedge                  lanes, jobs, settling into a report; backup requests
    _attempt                       one order across its attempts, one Deadline rule
    _transport, _account, _auth,   one request -> StopOrder or APIError; 429 pause,
    _retry, _signals, _pool        slow start, pacing; the token; when to retry; signals;
                                   the pool's connector and DNS resolver
    _report, _models, _errors,     outcomes and reports; wire types; the error tree;
    _validation, _logging,         every input rule; the logger; named defaults
    _constants
"""

from __future__ import annotations

from types import FunctionType as _FunctionType

from ._auth import TokenProvider, command_token_provider
from ._client import AsyncStopClient
from ._constants import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_MAX_BODY_SIZE,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_TIMEOUT,
)
from ._errors import (
    AccountNotFoundError,
    APIConnectionError,
    APIError,
    APIStatusError,
    APITimeoutError,
    AsyncStopError,
    AuthenticationError,
    BadRequestError,
    InvalidInputError,
    LeaseLostError,
    OrderNotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ServerError,
    TokenProviderError,
    WatchdogError,
)
from ._killswitch import KillSwitch, OrderSource
from ._models import OrderStatus, StopOrder, TradingAccount
from ._pool import DaemonThreadResolver
from ._postgres import PostgresRegistry
from ._registry import StopOrderRegistry
from ._report import CancelOutcome, CancelReport, CancelResult, OrderItem
from ._transport import Timeout
from ._watchdog import Watchdog, WatchdogFired

__version__ = "0.3.0"

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT",
    "DEFAULT_MAX_BODY_SIZE",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_MAX_RETRY_AFTER",
    "DEFAULT_TIMEOUT",
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "APITimeoutError",
    "AccountNotFoundError",
    "AsyncStopClient",
    "AsyncStopError",
    "AuthenticationError",
    "BadRequestError",
    "CancelOutcome",
    "CancelReport",
    "CancelResult",
    "DaemonThreadResolver",
    "InvalidInputError",
    "KillSwitch",
    "LeaseLostError",
    "OrderItem",
    "OrderNotFoundError",
    "OrderSource",
    "OrderStatus",
    "PermissionDeniedError",
    "PostgresRegistry",
    "RateLimitError",
    "ResponseValidationError",
    "ServerError",
    "StopOrder",
    "StopOrderRegistry",
    "Timeout",
    "TokenProvider",
    "TokenProviderError",
    "TradingAccount",
    "Watchdog",
    "WatchdogError",
    "WatchdogFired",
    "__version__",
    "command_token_provider",
]

# Tracebacks and reprs name the public path (asyncstop.RateLimitError), not the
# private module that defines the class.
for _name in __all__:
    _obj = globals()[_name]
    if isinstance(_obj, type | _FunctionType) and _obj.__module__.startswith("asyncstop._"):
        _obj.__module__ = __name__
del _name, _obj
