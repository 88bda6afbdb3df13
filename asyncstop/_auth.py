"""The bearer token: a static one, or a provider asked once at open and once per refresh."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from ._errors import InvalidInputError, TokenProviderError
from ._logging import logger
from ._validation import check_token, check_token_source

__all__ = ["Auth", "TokenProvider"]

#: An async callable that returns a fresh bearer token (the bare JWT).
TokenProvider = Callable[[], Awaitable[str]]


class Auth:
    """Holds the current token and its generation; refreshes it once for all who saw it fail.

    The generation counts refreshes: a request remembers the generation its
    headers were built with, and after a 401 only the first request of that
    generation asks the provider; the others find the token already renewed.
    """

    __slots__ = ("_failed", "_lock", "_provider", "_token", "generation")

    def __init__(self, token: str | TokenProvider) -> None:
        self._token: str | None
        self._provider: TokenProvider | None
        self._token, self._provider = check_token_source(token)
        self.generation = 0
        self._lock: asyncio.Lock | None = None
        #: Why the provider failed for the current generation, if it did.
        self._failed: str | None = None

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

    async def start(self, limit: float) -> None:
        """Fetch the first token from the provider, if there is one, within ``limit`` seconds."""
        self._lock = asyncio.Lock()
        if self._provider is not None and self._token is None:
            self._token = await self._ask_provider(limit)

    async def refresh(self, seen_generation: int, *, limit: float | None) -> None:
        """Replace the token refused at ``seen_generation``, unless another request already did.

        The provider is asked once per refused generation, however many
        requests saw the 401, and within ``limit`` seconds. If it fails, every
        request of that generation gets the same :class:`TokenProviderError`
        without asking again: a broken provider costs one call and one log
        record, not one per order.
        """
        assert self._provider is not None, "only a provider's token can be refreshed"
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.generation != seen_generation:
                return
            if self._failed is not None:
                raise TokenProviderError(self._failed)
            logger.info("HTTP 401: asking the token provider for a fresh token")
            try:
                self._token = await self._ask_provider(limit)
            except TokenProviderError as err:
                self._failed = str(err)
                raise
            self.generation += 1

    async def _ask_provider(self, limit: float | None) -> str:
        assert self._provider is not None
        try:
            async with asyncio.timeout(limit):
                token = await self._provider()
            return check_token(token)
        except TimeoutError:
            reason = f"the token provider did not answer within {limit:.3g}s"
        except InvalidInputError as err:
            reason = f"the token provider returned an unusable token: {err}"
        except Exception as err:  # the provider is the application's code
            reason = f"the token provider raised {type(err).__name__}"
        logger.error("%s; no request is sent without a token", reason)
        raise TokenProviderError(reason)

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "static token"
        return f"<Auth {kind} generation={self.generation}>"
