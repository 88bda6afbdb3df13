"""The Watchdog's settings, defined once: defaults, checks, and the form that crosses the pipe.

:class:`asyncstop.Watchdog` takes them as keyword arguments and builds one
:class:`WatchdogSettings` (checked on construction); the watchdog process gets
the same struct in its ``Config`` line; ``asyncstop demo``'s bot gets it in its
settings line and passes it on with ``Watchdog(..., **settings.as_kwargs())``.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from .._constants import DEFAULT_KILL_SWITCH_HEDGE, DEFAULT_MAX_CONCURRENCY, DEFAULT_TIMEOUT
from .._errors import InvalidInputError
from .._validation import check_bulk_settings, check_count, check_seconds
from ._firing import DEFAULT_GIVE_UP_AFTER

__all__ = [
    "DEFAULT_GIVE_UP_AFTER",
    "DEFAULT_HEARTBEAT_INTERVAL",
    "DEFAULT_HEARTBEAT_TIMEOUT",
    "DEFAULT_START_TIMEOUT",
    "DEFAULT_TOKEN_COMMAND_TIMEOUT",
    "WatchdogSettings",
]

#: Seconds between two heartbeats of the bot's loop.
DEFAULT_HEARTBEAT_INTERVAL: Final = 0.5
#: Seconds without a heartbeat after which the watchdog fires. Longer than the
#: stalls a healthy Python bot has (a 3 s garbage-collector pass or blocking call
#: is common, and a false fire cancels every stop and fences the registry), short
#: enough that a truly frozen bot's stops are not left unguarded for long.
DEFAULT_HEARTBEAT_TIMEOUT: Final = 10.0
#: Each cancel run's deadline in seconds (a fire(), one round of persistent firing).
DEFAULT_DEADLINE: Final = 10.0
#: Seconds to wait for the watchdog's preflight and warm-up.
DEFAULT_START_TIMEOUT: Final = 30.0
#: Seconds a token command may take before it is killed.
DEFAULT_TOKEN_COMMAND_TIMEOUT: Final = 10.0


class WatchdogSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of a Watchdog but the registry, the base URL, the token and the account.

    See :class:`asyncstop.Watchdog` for what each means. Building one checks
    it: a bad value raises :class:`~asyncstop.InvalidInputError` at once, not
    in an emergency.
    """

    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    heartbeat_timeout: float = DEFAULT_HEARTBEAT_TIMEOUT
    deadline: float | None = DEFAULT_DEADLINE
    concurrency: int | None = None
    rate_limit: float | None = None
    hedge: float | str | None = DEFAULT_KILL_SWITCH_HEDGE
    fire_on_error: bool = True
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    preflight: bool = True
    warm_up: bool = True
    start_timeout: float = DEFAULT_START_TIMEOUT
    give_up_after: float | None = DEFAULT_GIVE_UP_AFTER
    cancel_protective_on_death: bool = False
    token_command: tuple[str, ...] | None = None
    token_command_timeout: float = DEFAULT_TOKEN_COMMAND_TIMEOUT

    def __post_init__(self) -> None:
        check_seconds("heartbeat_interval", self.heartbeat_interval)
        check_seconds("heartbeat_timeout", self.heartbeat_timeout)
        if not self.heartbeat_timeout > self.heartbeat_interval:
            raise InvalidInputError(
                f"heartbeat_timeout ({self.heartbeat_timeout!r}) must be longer than "
                f"heartbeat_interval ({self.heartbeat_interval!r})"
            )
        check_bulk_settings(
            deadline=self.deadline,
            concurrency=self.concurrency,
            rate_limit=self.rate_limit,
            hedge=self.hedge,
        )
        check_count("max_concurrency", self.max_concurrency, minimum=1)
        check_seconds("timeout", self.timeout)
        check_seconds("start_timeout", self.start_timeout)
        if self.give_up_after is not None:
            check_seconds("give_up_after", self.give_up_after)
        check_seconds("token_command_timeout", self.token_command_timeout)
        for name in ("fire_on_error", "preflight", "warm_up", "cancel_protective_on_death"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"{name} must be a bool")
        command = self.token_command
        if command is not None and (
            not command or not all(isinstance(arg, str) and arg for arg in command)
        ):
            raise InvalidInputError(
                "token_command must be a non-empty list of non-empty str arguments, such as "
                '["vault", "read", "-field=jwt", "secret/b2"] (no shell is used)'
            )

    def as_kwargs(self) -> dict[str, Any]:
        """The settings as ``Watchdog(...)`` keyword arguments."""
        return msgspec.structs.asdict(self)

    @property
    def token_need(self) -> float:
        """Seconds a token must stay valid: until a fire's deadline after the last heartbeat."""
        return self.heartbeat_timeout + (self.deadline if self.deadline is not None else 0.0)
