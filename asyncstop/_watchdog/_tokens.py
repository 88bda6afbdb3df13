"""The bot's side of the watchdog's token: the first one, refreshes ahead of ``exp``, the horizon.

With a token provider the bot fetches a fresh token ahead of the JWT's ``exp``
and passes it on over the pipe, so that the watchdog always holds one valid
for longer than ``heartbeat_timeout + deadline``. Without a ``token_command``,
a dead bot's stops are protected only until the last token's ``exp``
(:attr:`BotTokens.protected_until`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Final

from .._auth import fetch_token
from .._errors import TokenProviderError
from .._logging import logger
from .._validation import check_token_source
from ._protocol import jwt_expiry

if TYPE_CHECKING:
    from .._auth import TokenProvider
    from ._settings import WatchdogSettings

__all__ = ["BotTokens"]

#: A fresh token is fetched at most this long before it is needed.
_REFRESH_AHEAD_MAX: Final = 300.0


def _utc(expiry: float | None) -> dt.datetime | None:
    return None if expiry is None else dt.datetime.fromtimestamp(expiry, dt.UTC)


class BotTokens:
    """The current token, its provider if any, and until when it protects a dead bot."""

    def __init__(self, token: object, settings: WatchdogSettings) -> None:
        self.token: str | None
        self.provider: TokenProvider | None
        self.token, self.provider = check_token_source(token)
        self.settings = settings
        #: The token's exp (UTC) while the watchdog cannot renew it by itself, else None.
        self.protected_until: dt.datetime | None = None

    async def first(self) -> str:
        """The token to start a watchdog with (asks the provider, if there is one)."""
        if self.provider is None:
            assert self.token is not None
            token = self.token
        else:
            token = await fetch_token(self.provider, self.settings.timeout)
            self.token = token
        expiry = jwt_expiry(token)
        need = self.settings.token_need
        if expiry is not None and expiry - time.time() < need:
            logger.warning(
                "the watchdog's token expires in %.0f s, sooner than heartbeat_timeout + deadline "
                "(%.0f s): a watchdog firing after that cannot cancel",
                expiry - time.time(),
                need,
            )
        return token

    def armed_with(self, token: str) -> None:
        """Note the horizon of a watchdog armed with ``token``, and log it without a command."""
        if self.settings.token_command is not None:
            self.protected_until = None
            return
        self.protected_until = _utc(jwt_expiry(token))
        if self.protected_until is not None:
            logger.warning(
                "without token_command, the watchdog can cancel a dead bot's stops only until "
                "%s (its token's exp%s)",
                self.protected_until.isoformat(timespec="seconds"),
                ", renewed by the bot while it lives" if self.provider is not None else "",
            )

    async def refresh(
        self, send: Callable[[str], Awaitable[bool]], fired: Callable[[], bool]
    ) -> None:
        """Fetch a fresh token ahead of ``exp`` and ``send`` it on, until ``fired()`` or no pipe."""
        provider = self.provider
        assert provider is not None
        token = self.token
        assert token is not None
        received = time.time()
        warned = False
        while not fired():
            expiry = jwt_expiry(token)
            if expiry is None:
                return  # no exp claim: nothing to schedule by; a 401 still refreshes
            need = self.settings.token_need
            ahead = min(_REFRESH_AHEAD_MAX, max(0.0, (expiry - received - need) / 2))
            wait = expiry - need - ahead - time.time()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                fresh = await fetch_token(provider, self.settings.timeout)
            except TokenProviderError as err:
                reason = str(err)
            else:
                fresh_expiry = jwt_expiry(fresh)
                reason = "the token provider returned a token that expires no later"
                if fresh_expiry is None or fresh_expiry > expiry:
                    token, received = fresh, time.time()
                    self.token = fresh
                    if not await send(fresh):
                        return  # the heartbeat task reports the broken pipe
                    if self.settings.token_command is None:
                        self.protected_until = _utc(fresh_expiry)
                    warned = False
                    continue
            left = expiry - time.time()
            if not warned:
                logger.warning(
                    "%s; the watchdog's token expires in %.0f s (it needs %.0f s ahead)",
                    reason,
                    left,
                    need,
                )
                warned = True
            await asyncio.sleep(min(30.0, max(1.0, left / 4)))
