"""The connection pool's own pieces: a connector that sets stray answers aside, a DNS resolver.

:class:`CleanConnector` is aiohttp's TCP connector, except that it never
hands out a pooled connection holding an answer nobody asked for.
:class:`DaemonThreadResolver` looks host names up in daemon threads, so that
a lookup the system's resolver never answers cannot keep the process or the
event loop's executor from ending. :mod:`._transport` builds its sessions
from both.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from ._logging import logger

if TYPE_CHECKING:
    from aiohttp.connector import Connection
    from aiohttp.tracing import Trace

__all__ = ["CleanConnector", "DaemonThreadResolver"]


class CleanConnector(aiohttp.TCPConnector):
    """A pool that never hands out a connection holding a reply nobody asked for.

    aiohttp parses whatever arrives on a pooled, idle connection and queues it
    as the next response on that connection: a broken proxy or gateway that
    writes a second answer while the connection sits in the pool would have the
    next request read it as its own. For a 2xx the order id in the body exposes
    it; a 404 carries no id, and would be read as "this order does not exist"
    while the order is live. So a connection with unread data (aiohttp's
    ``should_close``) is closed when taken from the pool, and another is used.
    A reply that arrives after the next request went out cannot be told from
    that request's own: see :meth:`Transport.saw_stray`.
    """

    #: Called when a connection is set aside: the path to the exchange writes strays.
    on_stray: Callable[[], object] | None = None

    async def connect(
        self,
        req: aiohttp.ClientRequest,
        traces: list[Trace],
        timeout: aiohttp.ClientTimeout,  # noqa: ASYNC109 - aiohttp's signature, overridden
    ) -> Connection:
        while True:
            connection = await super().connect(req, traces, timeout)
            protocol = connection.protocol
            if protocol is None or not protocol.should_close:
                return connection
            logger.warning(
                "a pooled connection to %s:%s held data nobody asked for (a broken proxy or "
                "gateway?): closed, and not used",
                req.host,
                req.port,
            )
            connection.close()
            if self.on_stray is not None:
                self.on_stray()


class DaemonThreadResolver(AbstractResolver):
    """Resolves host names with ``getaddrinfo`` in a daemon thread per lookup.

    aiohttp's default resolver runs ``getaddrinfo`` in the loop's default
    executor: a lookup that hangs (a dead nameserver) outlives the attempt's
    timeout there, and ``asyncio.run`` then waits for it at exit, keeping a
    kill switch's process alive long after its deadline. A daemon thread is
    abandoned instead: the awaiting request still ends at its timeout, and
    the process can exit. Lookups are rare (aiohttp caches them, and an IP
    address needs none), so a thread per lookup costs nothing that matters.
    """

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        """Resolve ``host`` for a TCP connection to ``port``."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[Any]] = loop.create_future()

        def settle(result: list[Any] | None, error: BaseException | None) -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result or [])

        def lookup() -> None:
            try:
                infos = socket.getaddrinfo(
                    host, port, type=socket.SOCK_STREAM, family=family, flags=socket.AI_ADDRCONFIG
                )
            except OSError as err:
                outcome: tuple[list[Any] | None, BaseException | None] = (None, err)
            else:
                outcome = (infos, None)
            # A closed loop raises RuntimeError: nobody is waiting for this lookup any more.
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(settle, *outcome)

        threading.Thread(target=lookup, name="asyncstop-dns", daemon=True).start()
        infos = await future
        return [
            ResolveResult(
                hostname=host,
                host=address[0],
                port=address[1],
                family=info_family,
                proto=proto,
                flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
            )
            for info_family, _type, proto, _name, address in infos
        ]

    async def close(self) -> None:
        """Nothing to close: each lookup's thread ends on its own."""
