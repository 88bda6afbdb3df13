"""The fake exchange's gate: what is refused at once, before any latency or fault.

A real API gateway answers these without reaching the order book, so they take
no latency and draw no fault. For a DELETE, in order:

1. 401 without ``Authorization: Bearer <token>`` with an accepted token;
2. 400 without an ``accountId`` header;
3. 400 on a header or body violation (``strict_headers``): Content-Type not
   exactly ``application/json; x-api-version=4.0``, no Accept, or a body;
4. 404 (the not-found body) for an account the token may not use: an exchange
   that scopes orders by account cannot find another account's order, and says
   so the same way (journaled ``account_not_allowed``);
5. 429 from the account's rate limit or 429 pause.

``GET /frontoffice/api/v3/accounts`` has steps 1 and, with ``strict_headers``,
no Accept or a body (it takes no ``accountId``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

from aiohttp import web
from multidict import CIMultiDictProxy

from . import _replies
from ._journal import JournalEntry, Outcome
from ._ratelimit import RateLimiter

__all__ = ["Gate", "Refusal"]

_BEARER = "Bearer "


class Refusal(NamedTuple):
    """What the gate answers instead of letting a request through."""

    status: int
    outcome: Outcome
    response: web.Response
    #: A 429 for a request that arrived inside a pause, too late to have been sent before it.
    violation: bool = False


class Gate:
    """Tokens, the accounts each may use, the header rules and the rate limit.

    Args:
        tokens: the accepted tokens, or a mapping from each to the account ids
            it may use (a token given without a list may use every account).
        strict_headers: enforce the documented request headers.
        limiter: the per-account rate limit.
    """

    __slots__ = ("limiter", "strict_headers", "token_accounts", "tokens")

    def __init__(
        self,
        tokens: Iterable[str] | Mapping[str, Iterable[str]],
        *,
        strict_headers: bool,
        limiter: RateLimiter,
    ) -> None:
        if isinstance(tokens, str):
            raise TypeError("tokens must be a collection of tokens, not a single str")
        self.tokens: set[str] = set(tokens)
        self.token_accounts: dict[str, list[str]] = {}
        if isinstance(tokens, Mapping):
            for token, account_ids in tokens.items():
                if isinstance(account_ids, str):
                    raise TypeError(
                        "each token's accounts must be a collection of account ids, not a str"
                    )
                self.token_accounts[token] = list(account_ids)
        self.strict_headers = strict_headers
        self.limiter = limiter

    def token(self, headers: CIMultiDictProxy[str]) -> str | None:
        """The accepted bearer token the request carries, or None."""
        authorization = headers.get("Authorization")
        if authorization is None or not authorization.startswith(_BEARER):
            return None
        token = authorization[len(_BEARER) :]
        return token if token in self.tokens else None

    def may_use(self, token: str, account_id: str) -> bool:
        """Whether ``token`` may use ``account_id``."""
        allowed = self.token_accounts.get(token)
        return allowed is None or account_id in allowed

    def check_delete(self, request: web.BaseRequest, entry: JournalEntry) -> Refusal | None:
        """None to let a DELETE through to the faults, else the refusal to answer now."""
        if not entry.authorized:
            return Refusal(401, Outcome.UNAUTHORIZED, _replies.unauthorized())
        account_id = entry.account_id
        if account_id is None:
            return Refusal(
                400, Outcome.BAD_REQUEST, _replies.json_response(400, _replies.BODY_NO_ACCOUNT)
            )
        if self.strict_headers:
            problem = _header_problem(request, content_type=True)
            if problem is not None:
                return Refusal(400, Outcome.BAD_REQUEST, _replies.json_response(400, problem))
        if self.token_accounts:
            token = self.token(request.headers)
            if token is not None and not self.may_use(token, account_id):
                return Refusal(404, Outcome.ACCOUNT_NOT_ALLOWED, _replies.not_found())
        refusal = self.limiter.admit(account_id, entry.time)
        if refusal is not None:
            return Refusal(
                429,
                Outcome.RATE_LIMITED,
                _replies.too_many(refusal.retry_after),
                refusal.violation,
            )
        return None

    def check_accounts(self, request: web.BaseRequest, entry: JournalEntry) -> Refusal | None:
        """None to let ``GET /accounts`` through, else the refusal to answer now."""
        if not entry.authorized:
            return Refusal(401, Outcome.UNAUTHORIZED, _replies.unauthorized())
        if self.strict_headers:
            problem = _header_problem(request, content_type=False)
            if problem is not None:
                return Refusal(400, Outcome.BAD_REQUEST, _replies.json_response(400, problem))
        return None


def _header_problem(request: web.BaseRequest, *, content_type: bool) -> bytes | None:
    """The 400 body for a request that breaks the documented form, or None."""
    headers = request.headers
    if content_type and headers.get("Content-Type") != _replies.API_CONTENT_TYPE:
        return _replies.BODY_BAD_CONTENT_TYPE
    if "Accept" not in headers:
        return _replies.BODY_NO_ACCEPT
    if request.body_exists:
        return _replies.BODY_HAS_BODY
    return None
