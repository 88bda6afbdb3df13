"""Fake exchange servers for the benchmarks, each in its own process on its own core.

The server is a raw :class:`asyncio.Protocol` HTTP/1.1 keep-alive server (on
uvloop when it is installed), not an ``aiohttp.web`` application: it parses
only the request line and the three headers it needs and answers with
pre-encoded bytes, so that one server core has several times the headroom of
the fastest client we measure (the table reports the server core's busy share
to prove it).

Every DELETE under ``/frontoffice/api/v3/stop-orders/`` is answered with the
documented 200 body (the example in ``api/openapi.yaml``), optionally:

* after a fixed delay, or a log-normal one with a long tail (``latency``,
  ``latency_sigma``);
* through a per-account token bucket (``rate_limit`` cancels/s, ``burst``
  deep). When the bucket is empty the server answers 429 with ``Retry-After``
  and *keeps the account paused* for that long: every request of the account
  that arrives during the pause is refused too (in the first ``grace`` seconds,
  unless the bucket has a token again), with the time left as its
  ``Retry-After``. A request arriving at least ``grace`` seconds after the
  pause began is counted as *inside the pause*: it was sent after the client
  could have seen the 429 (earlier ones were already in flight). The bucket
  and the pauses are ``asyncstop.testing``'s rate limiter, the one the
  ``FakeExchange`` of the tests uses.

Any other method (asyncstop's ``warm_up()`` sends HEAD) gets 405 with no body.

:class:`ServerProcess` starts ``python -m benchmarks.servers`` as a subprocess
and talks to it with one JSON object per line over its stdin and stdout. The
server exits when told to, and by itself when its stdin closes (its parent
died), so no server outlives the benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import select
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self, cast

from asyncstop.testing._ratelimit import RateLimiter

__all__ = [
    "ACCOUNT_ID",
    "REPLY_BODY",
    "STOP_ORDERS_PATH",
    "ServerProcess",
    "ServerSpec",
    "TLSFiles",
    "child_env",
    "reply_for",
    "repo_root",
    "tls_files",
]

STOP_ORDERS_PATH: Final = "/frontoffice/api/v3/stop-orders/"
#: The account the benchmarks cancel for; the servers list it for preflight().
ACCOUNT_ID: Final = "acc-1"

#: The documented 200 body: the example of api/openapi.yaml, compact JSON.
REPLY_BODY: Final = json.dumps(
    {
        "order": {
            "marketId": "perp.btc_usdt",
            "marketDisplayName": "Perpetual BTC/USDT",
            "orderId": "01K2MNGAWPMQJ7WGATFSCAS1G4",
            "orderType": "Limit",
            "side": "Sell",
            "requestedPrice": "115100",
            "activationPrice": "115000",
            "requestedAmount": "1",
            "timeInForce": "Gtc",
            "status": "Rejected",
            "createdAt": "2025-08-14T16:09:44.5986099Z",
            "updatedAt": "2025-08-14T16:09:44.5986103Z",
            "cancellationDate": None,
        }
    },
    separators=(",", ":"),
).encode()

_RATE_LIMITED_BODY: Final = (
    b'{"errorCode":10429,"message":"Too many requests","errors":[]}'  # assumed shape
)
#: Seconds the parent waits for the server to start, or to answer a command.
_STARTUP_TIMEOUT: Final = 30.0
_COMMAND_TIMEOUT: Final = 30.0
_STOP_TIMEOUT: Final = 5.0
#: A request head larger than this closes the connection (the benchmark never sends one).
_MAX_HEAD: Final = 65536
#: The long-tail delay is capped so that one unlucky draw cannot stall a run.
_MAX_DELAY: Final = 1.0


def _response(status: str, body: bytes, extra: str = "") -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\n"
        "Content-Type: application/json; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


#: The example's order id: each 200 carries the id asked instead, as the exchange
#: does and as asyncstop requires before it reports an order cancelled.
_EXAMPLE_ID: Final = b"01K2MNGAWPMQJ7WGATFSCAS1G4"
_REPLY_BEFORE_ID, _REPLY_AFTER_ID = REPLY_BODY.split(_EXAMPLE_ID)
_OK_HEAD: Final = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: "
)
_REPLY_LENGTH: Final = len(_REPLY_BEFORE_ID) + len(_REPLY_AFTER_ID)


def reply_for(order_id: bytes) -> bytes:
    """The 200 answer for ``order_id``: the documented example, carrying that id."""
    return b"".join(
        (
            _OK_HEAD,
            str(_REPLY_LENGTH + len(order_id)).encode(),
            b"\r\n\r\n",
            _REPLY_BEFORE_ID,
            order_id,
            _REPLY_AFTER_ID,
        )
    )


_NOT_ALLOWED: Final = _response("405 Method Not Allowed", b"", "Allow: DELETE\r\n")
#: The documented accounts list, naming the benchmarks' account, for preflight().
_ACCOUNTS: Final = _response(
    "200 OK",
    json.dumps(
        [
            {
                "accountId": ACCOUNT_ID,
                "accountName": "benchmark account",
                "accountType": "Hedging",
                "totalBalanceInRAT": "10000.00",
                "isCopyTradingAccount": False,
            }
        ]
    ).encode(),
)
_NOT_FOUND: Final = _response("404 Not Found", b'{"errorCode":10002,"message":"Not found"}')
_BAD_REQUEST: Final = b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


@dataclass(frozen=True, slots=True)
class ServerSpec:
    """What a benchmark server does. The defaults make the fast fixed-reply server."""

    #: Seconds added before answering each DELETE (the median, with a long tail).
    latency: float = 0.0
    #: Sigma of the log-normal delay around ``latency``; 0 means a fixed delay.
    latency_sigma: float = 0.0
    #: Cancels per second allowed per account (token bucket); None: no limit.
    rate_limit: float | None = None
    #: Depth of the bucket; None: one second's worth (``rate_limit``, at least 1).
    burst: float | None = None
    #: The pause (and Retry-After, in seconds) that a 429 on an empty bucket starts.
    pause: float = 1.0
    #: Requests arriving this soon after the 429 were in flight, not inside the pause.
    grace: float = 0.02
    #: PEM files of the certificate chain and key; None: plain HTTP.
    certfile: str | None = None
    keyfile: str | None = None
    #: Seed of the delay draws.
    seed: int = 0
    #: Serve on uvloop (when installed). Its timers tick in whole milliseconds, so
    #: the delaying servers use asyncio's loop, whose timers are finer.
    uvloop: bool = True


# -- the server (runs in the child process) ------------------------------------------------


class _AccountStats:
    """What one account's requests met, for the stats command."""

    __slots__ = ("first", "inside_pause", "last", "ok", "pauses", "rejected", "requests")

    def __init__(self, now: float) -> None:
        self.requests = 0
        self.ok = 0
        self.rejected = 0
        self.inside_pause = 0
        self.pauses = 0
        self.first = now
        self.last = now

    def as_dict(self) -> dict[str, float]:
        return {
            "requests": self.requests,
            "ok": self.ok,
            "rejected": self.rejected,
            "inside_pause": self.inside_pause,
            "pauses": self.pauses,
            "first": self.first,
            "last": self.last,
        }


class _State:
    """Counters and behaviour shared by every connection of one server."""

    def __init__(self, spec: ServerSpec, loop: asyncio.AbstractEventLoop) -> None:
        self.spec = spec
        self.loop = loop
        self.rng = random.Random(spec.seed)
        self.protocols: set[_HTTPProtocol] = set()
        self.accounts: dict[str, _AccountStats] = {}
        # This server has a process and a loop of its own: no stalls of a
        # client's loop to excuse, so the grace alone judges the pauses.
        self.limiter = RateLimiter(
            spec.rate_limit,
            burst=spec.burst,
            retry_after=spec.pause,
            grace=spec.grace,
        )
        self.requests = 0
        self.connections = 0
        self.by_status: dict[int, int] = {}
        self.delayed = spec.latency > 0
        self.limited = spec.rate_limit is not None
        self.cpu_start = time.process_time()
        self.wall_start = time.monotonic()

    def reset(self) -> None:
        self.accounts.clear()
        self.limiter.reset()
        self.requests = 0
        self.connections = 0
        self.by_status.clear()
        self.cpu_start = time.process_time()
        self.wall_start = time.monotonic()

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "connections": self.connections,
            "by_status": {str(k): v for k, v in sorted(self.by_status.items())},
            "accounts": {name: acc.as_dict() for name, acc in self.accounts.items()},
            "cpu": time.process_time() - self.cpu_start,
            "wall": time.monotonic() - self.wall_start,
        }

    def delay(self) -> float:
        spec = self.spec
        if spec.latency_sigma <= 0:
            return spec.latency
        return min(_MAX_DELAY, spec.latency * math.exp(spec.latency_sigma * self.rng.gauss()))

    def admit(self, account_id: str, now: float) -> bytes | None:
        """None if the account may cancel now, else the 429 answer to send."""
        stats = self.accounts.get(account_id)
        if stats is None:
            stats = self.accounts[account_id] = _AccountStats(now)
        stats.requests += 1
        stats.last = now
        refusal = self.limiter.admit(account_id, now)
        if refusal is None:
            stats.ok += 1
            return None
        stats.rejected += 1
        stats.inside_pause += refusal.violation
        stats.pauses += refusal.started
        if refusal.started:
            return _rate_limited(refusal.retry_after)
        # The time left, in milliseconds (rounded up by the limiter, so a client
        # that obeys it exactly does not come back early).
        return _rate_limited(f"{refusal.remaining:.3f}")

    def answer(self, method: bytes, target: bytes, account_id: str | None) -> bytes:
        if method == b"GET" and target == b"/frontoffice/api/v3/accounts":
            return _ACCOUNTS
        if method != b"DELETE":
            self.by_status[405] = self.by_status.get(405, 0) + 1
            return _NOT_ALLOWED
        if not target.startswith(b"/frontoffice/api/v3/stop-orders/"):
            self.by_status[404] = self.by_status.get(404, 0) + 1
            return _NOT_FOUND
        if self.limited:
            refusal = self.admit(account_id or "", time.monotonic())
            if refusal is not None:
                self.by_status[429] = self.by_status.get(429, 0) + 1
                return refusal
        self.by_status[200] = self.by_status.get(200, 0) + 1
        return reply_for(target[len(STOP_ORDERS_PATH) :])


def _rate_limited(retry_after: str) -> bytes:
    return _response("429 Too Many Requests", _RATE_LIMITED_BODY, f"Retry-After: {retry_after}\r\n")


class _HTTPProtocol(asyncio.Protocol):
    """One keep-alive connection: parse request heads, answer in order."""

    def __init__(self, state: _State) -> None:
        self.state = state
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        # Loop time of the latest scheduled answer: delayed answers keep their order.
        self.last_answer_at = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport; they have its methods.
        self.transport = cast(asyncio.Transport, transport)
        self.state.protocols.add(self)
        self.state.connections += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.protocols.discard(self)
        self.transport = None

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        while True:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(buffer) > _MAX_HEAD:
                    self.fail()
                return
            lines = bytes(buffer[:end]).split(b"\r\n")
            request_line = lines[0].split(b" ")
            if len(request_line) != 3:
                self.fail()
                return
            length = 0
            account_id: str | None = None
            close = False
            for line in lines[1:]:
                name, _, value = line.partition(b":")
                name = name.lower()
                if name == b"accountid":
                    account_id = value.strip().decode("latin-1")
                elif name == b"content-length":
                    length = int(value)
                elif name == b"connection":
                    close = value.strip().lower() == b"close"
            if len(buffer) < end + 4 + length:
                return  # the body is still arriving
            del buffer[: end + 4 + length]
            self.respond(request_line[0], request_line[1], account_id, close)

    def respond(self, method: bytes, target: bytes, account_id: str | None, close: bool) -> None:
        state = self.state
        state.requests += 1
        answer = state.answer(method, target, account_id)
        transport = self.transport
        assert transport is not None
        if not state.delayed or method != b"DELETE":
            transport.write(answer)
            if close:
                transport.close()
            return
        loop = state.loop
        at = max(loop.time() + state.delay(), self.last_answer_at)
        self.last_answer_at = at
        loop.call_at(at, self.write_later, answer, close)

    def write_later(self, answer: bytes, close: bool) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        transport.write(answer)
        if close:
            transport.close()

    def fail(self) -> None:
        if self.transport is not None:
            self.transport.write(_BAD_REQUEST)
            self.transport.close()


def _load_tls(spec: ServerSpec) -> ssl.SSLContext | None:
    if spec.certfile is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(spec.certfile, spec.keyfile)
    return context


async def _serve(spec: ServerSpec) -> None:
    loop = asyncio.get_running_loop()
    state = _State(spec, loop)
    server = await loop.create_server(
        lambda: _HTTPProtocol(state),
        "127.0.0.1",
        0,
        ssl=_load_tls(spec),
        # 256 clients connecting at once must not overflow the accept queue:
        # a dropped SYN is retried only after a second.
        backlog=4096,
    )
    port = server.sockets[0].getsockname()[1]
    stopped = loop.create_future()
    pending = bytearray()

    def reply(obj: object) -> None:
        sys.stdout.buffer.write(json.dumps(obj).encode() + b"\n")
        sys.stdout.buffer.flush()

    def on_command() -> None:
        chunk = os.read(0, 65536)
        if not chunk:  # the parent closed our stdin, or died
            if not stopped.done():
                stopped.set_result(None)
            return
        pending.extend(chunk)
        while (newline := pending.find(b"\n")) >= 0:
            command = bytes(pending[:newline]).strip().decode()
            del pending[: newline + 1]
            if command == "stats":
                reply(state.stats())
            elif command == "reset":
                state.reset()
                reply({"ok": True})
            elif command == "stop" and not stopped.done():
                stopped.set_result(None)
            else:
                reply({"error": f"unknown command {command!r}"})

    loop.add_reader(0, on_command)
    reply({"port": port, "pid": os.getpid()})
    try:
        await stopped
    finally:
        loop.remove_reader(0)
        server.close()
        for protocol in list(state.protocols):
            if protocol.transport is not None:
                protocol.transport.abort()
        await asyncio.sleep(0)


def _child_main(argv: list[str]) -> None:
    spec = ServerSpec(**json.loads(argv[0]))
    core = int(argv[1])
    if core >= 0 and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {core})
    # The parent stops us with "stop" or by closing stdin; SIGTERM must not print a traceback.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = None
    if spec.uvloop:
        with contextlib.suppress(ImportError):
            import uvloop  # noqa: PLC0415 - optional: the server runs on asyncio without it

            loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(spec))


# -- the parent's handle -------------------------------------------------------------------


def repo_root() -> Path:
    """The checkout that holds ``benchmarks`` and ``asyncstop``."""
    return Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    """The environment for a benchmark subprocess: this checkout first on PYTHONPATH."""
    env = dict(os.environ)
    root = str(repo_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


class ServerProcess:
    """A benchmark server in a subprocess; use as a context manager.

    ``core`` pins the server to one CPU (None: no pinning). The process is
    stopped on every exit path: asked politely, then terminated, then killed.
    """

    def __init__(self, spec: ServerSpec, *, core: int | None) -> None:
        self.spec = spec
        self.core = core
        self.port = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._buffer = bytearray()

    @property
    def base_url(self) -> str:
        scheme = "https" if self.spec.certfile else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.servers",
                json.dumps(asdict(self.spec)),
                str(-1 if self.core is None else self.core),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=child_env(),
            cwd=repo_root(),
        )
        try:
            hello = self._read(_STARTUP_TIMEOUT)
            self.port = int(hello["port"])
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def stats(self) -> dict[str, Any]:
        """The server's counters since it started or was last reset, and its CPU seconds."""
        return self._command("stats")

    def reset(self) -> None:
        """Zero the counters and forget every account's bucket and pause."""
        self._command("reset")

    def _command(self, command: str) -> dict[str, Any]:
        process = self._process
        if process is None or process.stdin is None:
            raise RuntimeError("the server is not running")
        process.stdin.write(command.encode() + b"\n")
        process.stdin.flush()
        return self._read(_COMMAND_TIMEOUT)

    def _read(self, timeout: float) -> dict[str, Any]:
        process = self._process
        assert process is not None
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while (newline := self._buffer.find(b"\n")) < 0:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the benchmark server did not answer within {timeout}s")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise RuntimeError(
                        f"the benchmark server exited (code {process.poll()}) before answering"
                    )
                self._buffer.extend(chunk)
        line = bytes(self._buffer[:newline])
        del self._buffer[: newline + 1]
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        """Stop the server and reap it; safe to call more than once."""
        process, self._process = self._process, None
        if process is None:
            return
        try:
            if process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.write(b"stop\n")
                    process.stdin.close()
            try:
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.terminate()
                try:
                    process.wait(_STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        finally:
            if process.stdout is not None:
                process.stdout.close()


@dataclass(frozen=True, slots=True)
class TLSFiles:
    """A throwaway CA (for the client) and a server certificate for 127.0.0.1."""

    certfile: str
    keyfile: str
    ca_pem: bytes

    def client_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode())


@contextlib.contextmanager
def tls_files() -> Iterator[TLSFiles]:
    """Make a CA and a certificate for 127.0.0.1 with trustme, in a temporary directory."""
    import trustme  # noqa: PLC0415 - a bench-extra dependency, needed only for TLS cases

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    with tempfile.TemporaryDirectory(prefix="asyncstop-bench-") as tmp:
        certfile = str(Path(tmp) / "cert.pem")
        keyfile = str(Path(tmp) / "key.pem")
        cert.cert_chain_pems[0].write_to_path(certfile)
        for extra in cert.cert_chain_pems[1:]:
            extra.write_to_path(certfile, append=True)
        cert.private_key_pem.write_to_path(keyfile)
        yield TLSFiles(certfile, keyfile, ca.cert_pem.bytes())


if __name__ == "__main__":
    _child_main(sys.argv[1:])
