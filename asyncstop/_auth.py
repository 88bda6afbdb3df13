"""The bearer token: a static one, or a provider asked once at open and once per refresh."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._errors import InvalidInputError
from ._logging import logger
from ._validation import check_token

__all__ = ["Auth", "TokenProvider"]

#: An async callable that returns a fresh bearer token (the bare JWT).
TokenProvider = Callable[[], Awaitable[str]]


class Auth:
    """Holds the current token and its generation; refreshes it once for all who saw it fail.

    The generation counts refreshes: a request remembers the generation its
    headers were built with, and after a 401 only the first request of that
    generation asks the provider; the others find the token already renewed.
    """

    __slots__ = ("_lock", "_provider", "_token", "generation")

    def __init__(self, token: str | TokenProvider) -> None:
        if isinstance(token, str):
            self._token: str | None = check_token(token)
            self._provider: TokenProvider | None = None
        elif callable(token):
            self._token, self._provider = None, token
        else:
            raise InvalidInputError("token must be a str or an async callable returning a str")
        self.generation = 0
        self._lock: asyncio.Lock | None = None

    @property
    def can_refresh(self) -> bool:
        """True when a provider can be asked for a new token after a 401."""
        return self._provider is not None

    @property
    def authorization(self) -> str:
        """The Authorization header value; only valid once :meth:`start` has run."""
        token = self._token
        if token is None:
            raise RuntimeError("no token yet: the client is not open")
        return "Bearer " + token

    async def start(self) -> None:
        """Fetch the first token from the provider, if there is one."""
        self._lock = asyncio.Lock()
        if self._provider is not None and self._token is None:
            self._token = check_token(await self._provider())

    async def refresh(self, seen_generation: int) -> None:
        """Replace the token refused at ``seen_generation``, unless another request already did."""
        assert self._provider is not None, "only a provider's token can be refreshed"
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.generation != seen_generation:
                return
            logger.info("HTTP 401: asking the token provider for a fresh token")
            self._token = check_token(await self._provider())
            self.generation += 1

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "static token"
        return f"<Auth {kind} generation={self.generation}>"
