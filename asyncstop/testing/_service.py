"""``watchdog_service``: the off-host watchdog service as a child process, for a test or a demo.

``asyncstop watchdog --store`` is meant to run on another machine. To try a bot
against it on one machine, this starts it as a child process the way a
supervisor would: its own session (a Ctrl-C in the terminal is not its
signal), stdout to ``/dev/null``, stderr to a log file, and stopped with
SIGTERM as ``systemctl stop`` does.

Nothing secret goes on its command line, which every user of the machine can
read: the token goes to a 0600 file that a ``--token-command`` reads (and that
is removed afterwards), the DSN to the child's environment (``ASYNCSTOP_STORE``),
and no variable of that environment holds the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .._watchdog._spawn import child_env
from ._wait import wait_until

__all__ = ["WatchdogService", "watchdog_service"]

#: What the service logs once it watches the leases: it is ready.
_READY_LINE: Final = "watching the leases"
#: How much of the log a failure quotes.
_LOG_TAIL: Final = 2000
#: The token command's program: prints the file named by its argument.
_PRINT_FILE: Final = "import sys; sys.stdout.write(open(sys.argv[1], encoding='utf-8').read())"


@dataclass(frozen=True, slots=True)
class WatchdogService:
    """A running ``asyncstop watchdog --store``: its process and its log file."""

    process: asyncio.subprocess.Process
    log: Path
    name: str

    def log_text(self) -> str:
        """The service's log so far (its stderr)."""
        return self.log.read_text(encoding="utf-8", errors="replace")

    def _tail(self) -> str:
        text = self.log_text()
        return text[-_LOG_TAIL:] if text else "(its log is empty)"


@contextlib.asynccontextmanager
async def watchdog_service(
    store: str,
    base_url: str,
    *,
    token: str,
    folder: str | os.PathLike[str],
    account_id: str | None = None,
    name: str = "service",
    poll_interval: float = 0.1,
    options: Sequence[str] = (),
    ready_timeout: float = 30.0,
    stop_timeout: float = 15.0,
    check: bool = True,
) -> AsyncIterator[WatchdogService]:
    """Run ``asyncstop watchdog --store`` in a child process while the block runs.

    ``store`` is the PostgreSQL DSN, ``base_url`` the exchange's (a
    :class:`FakeExchange`'s ``base_url``), ``token`` the bearer token it cancels
    with. ``folder`` receives ``<name>.log`` (kept) and ``<name>.token`` (mode
    0600, removed on leaving). ``options`` are further command-line options,
    e.g. ``["--claim-ttl", "2", "--cancel-protective"]``::

        async with watchdog_service(dsn, exchange.base_url, token="t1", folder=tmp) as service:
            ...  # a bot whose lease expires has its stops cancelled by the service
        assert "fired for owner" in service.log_text()

    The block starts once the service logs that it watches the leases; if it
    exits first or is not ready within ``ready_timeout`` seconds,
    :class:`AssertionError` quotes its log. On leaving, a service still running
    gets SIGTERM, and SIGKILL after ``stop_timeout`` seconds. With ``check``
    (the default), leaving the block normally raises :class:`AssertionError`
    unless the service exited 0 on that SIGTERM. A service the block killed
    itself is left as it is.
    """
    if not isinstance(token, str) or not token.strip():
        raise ValueError("token must be a non-empty string")
    folder = Path(folder)
    log = folder / f"{name}.log"
    token_file = folder / f"{name}.token"
    _write_private(token_file, token)
    argv = [
        sys.executable,
        "-m",
        "asyncstop",
        "watchdog",
        "--base-url",
        base_url,
        "--token-command",
        shlex.join([sys.executable, "-c", _PRINT_FILE, str(token_file)]),
        "--poll-interval",
        str(poll_interval),
        "--name",
        name,
    ]
    if account_id is not None:
        argv += ["--account-id", account_id]
    env = child_env(token)  # nothing holding the token, and this asyncstop on the path
    env["ASYNCSTOP_STORE"] = store
    try:
        with log.open("ab") as log_file:
            process = await asyncio.create_subprocess_exec(
                *argv,
                *options,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=log_file,
                env=env,
                start_new_session=True,
            )
        service = WatchdogService(process, log, name)
        try:
            await _wait_ready(service, ready_timeout)
            yield service
        except BaseException:
            await _stop(process, stop_timeout)
            raise
        terminated = process.returncode is None
        stopped = await _stop(process, stop_timeout)
        if check and terminated and (not stopped or process.returncode != 0):
            how = (
                f"exited {process.returncode}"
                if stopped
                else f"did not stop within {stop_timeout} s (killed)"
            )
            raise AssertionError(
                f"watchdog service {name!r} {how} on SIGTERM; its log:\n{service._tail()}"
            )
    finally:
        token_file.unlink(missing_ok=True)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only, from its first byte."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w", encoding="utf-8") as file:
        os.fchmod(file.fileno(), 0o600)  # an existing file keeps its mode through O_CREAT
        file.write(text)


async def _wait_ready(service: WatchdogService, timeout: float) -> None:  # noqa: ASYNC109
    process = service.process
    try:
        await wait_until(
            lambda: process.returncode is not None or _READY_LINE in service.log_text(), timeout
        )
    except AssertionError:
        raise AssertionError(
            f"watchdog service {service.name!r} was not watching after {timeout} s; "
            f"its log:\n{service._tail()}"
        ) from None
    if process.returncode is not None:
        raise AssertionError(
            f"watchdog service {service.name!r} exited {process.returncode} before it "
            f"watched; its log:\n{service._tail()}"
        )


async def _stop(process: asyncio.subprocess.Process, timeout: float) -> bool:  # noqa: ASYNC109
    """SIGTERM ``process`` if it runs, SIGKILL after ``timeout``; False if it had to be killed."""
    if process.returncode is not None:
        return True
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        async with asyncio.timeout(timeout):
            await process.wait()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        return False
    return True
