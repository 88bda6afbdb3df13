"""The bearer token: a static one, or a provider asked once at open and once per refresh.

A provider is the application's async callable, or a command run by
:func:`command_token_provider` (the credential-helper convention of git's
credential helpers, AWS ``credential_process`` and kubectl's exec plugins: a
program prints the token on its stdout).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

from ._errors import AuthenticationError, InvalidInputError, TokenProviderError
from ._logging import logger
from ._validation import check_seconds, check_token, check_token_source

__all__ = ["Auth", "TokenProvider", "command_token_provider", "fetch_token"]

#: An async callable that returns a fresh bearer token (the bare JWT).
TokenProvider = Callable[[], Awaitable[str]]

_T = TypeVar("_T")

#: The most a token command may print on stdout; a JWT is a few KiB at most.
MAX_TOKEN_OUTPUT: Final = 64 * 1024
#: The environment variables a token command inherits unless more are named.
#: Enough to find programs, a home directory and a locale; nothing else, so a
#: token held in the application's environment does not reach the command.
BASE_COMMAND_ENV: Final = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "TMPDIR",
    "TZ",
)
# How long the clean-up after a kill waits for the command's pipes to close.
_REAP_LIMIT: Final = 5.0


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

    async def send_refreshing(
        self, send: Callable[[str], Awaitable[_T]], *, limit: float | None
    ) -> _T:
        """Return ``await send(authorization)``; after a 401, refresh once and send again.

        A request outside the cancel engine (the preflight) goes through here,
        so that it follows :meth:`refresh`'s rule: without a provider the
        :class:`~asyncstop.AuthenticationError` stands; with one, a token
        already renewed by another request is used, else the provider is asked
        within ``limit`` seconds.
        """
        generation = self.generation
        try:
            return await send(self.authorization)
        except AuthenticationError:
            if not self.can_refresh:
                raise
            await self.refresh(generation, limit=limit)
        return await send(self.authorization)

    async def _ask_provider(self, limit: float | None) -> str:
        assert self._provider is not None
        try:
            return await fetch_token(self._provider, limit)
        except TokenProviderError as err:
            logger.error("%s; no request is sent without a token", err)
            raise

    def __repr__(self) -> str:
        kind = "provider" if self._provider is not None else "static token"
        return f"<Auth {kind} generation={self.generation}>"


async def fetch_token(provider: TokenProvider, limit: float | None) -> str:
    """Ask ``provider`` for a token within ``limit`` seconds: the one way a provider is asked.

    Returns the checked token. Any failure (the provider raised, hung, or gave
    an unusable token) raises :class:`~asyncstop.TokenProviderError`, whose
    message names only the exception's class: the provider's own message, and
    what it returned, may hold the token. The client (at open and after a
    401) and the watchdog (at start and ahead of the token's expiry) both
    fetch through here.
    """
    try:
        async with asyncio.timeout(limit):
            token = await provider()
        return check_token(token)
    except TimeoutError:  # ours, or the provider's own
        reason = (
            "the token provider raised TimeoutError"
            if limit is None
            else f"the token provider did not answer within {limit:.3g}s"
        )
    except InvalidInputError as err:  # its message never echoes the token
        reason = f"the token provider returned an unusable token: {err}"
    except TokenProviderError as err:  # a token command's own, token-free reason
        reason = str(err)
    except Exception as err:  # the provider is the application's code
        reason = f"the token provider raised {type(err).__name__}"
    # Raised outside the handlers, so the provider's error is not chained to it.
    raise TokenProviderError(reason)


def command_token_provider(
    argv: Sequence[str], *, timeout: float, pass_env: Sequence[str] = ()
) -> TokenProvider:
    """Return a token provider that runs ``argv`` and reads the token from its stdout.

    The command is run without a shell, with stdin from ``/dev/null``, in its own
    process group, and with only the :data:`BASE_COMMAND_ENV` variables and those
    named in ``pass_env`` (e.g. ``["VAULT_ADDR"]``) taken from this process's
    environment. It must exit 0 and print the bare token (surrounding whitespace,
    such as the final newline, is stripped) within ``timeout`` seconds; otherwise
    the command and anything it started in its group are killed, and
    :class:`~asyncstop.TokenProviderError` is raised.

    The token never goes on a command line or into an environment, and the error
    never holds what the command printed: neither stdout (which may hold the
    token) nor stderr (a helper may echo secrets there). The error names the
    program, its exit status and how many bytes it wrote to stderr; run the
    command by hand to read them.
    """
    if isinstance(argv, str | bytes) or not isinstance(argv, Sequence):
        raise InvalidInputError(
            "token command must be a list of arguments such as "
            '["vault", "read", "-field=jwt", "secret/b2"], not a '
            f"{type(argv).__name__} (no shell is used: split a command string with shlex.split)"
        )
    args = tuple(argv)
    if not args:
        raise InvalidInputError("token command must not be empty")
    for arg in args:
        if not isinstance(arg, str):
            raise InvalidInputError(
                f"each token command argument must be a str, not {type(arg).__name__}"
            )
        if "\0" in arg:
            raise InvalidInputError("a token command argument must not contain a NUL character")
    if not args[0]:
        raise InvalidInputError("token command must start with a program name")
    limit = check_seconds("token command timeout", timeout)
    if isinstance(pass_env, str | bytes) or not all(
        isinstance(name, str) and name and "=" not in name for name in pass_env
    ):
        raise InvalidInputError("pass_env must be a list of environment variable names")
    return _CommandTokenProvider(args, limit, (*BASE_COMMAND_ENV, *pass_env))


class _CommandTokenProvider:
    """Runs a credential helper each time a token is needed; see :func:`command_token_provider`."""

    __slots__ = ("_argv", "_env_names", "_name", "_timeout")

    def __init__(self, argv: tuple[str, ...], timeout: float, env_names: tuple[str, ...]) -> None:
        self._argv = argv
        self._timeout = timeout
        self._env_names = env_names
        self._name = os.path.basename(argv[0]) or argv[0]

    def __repr__(self) -> str:
        return f"<command_token_provider {self._name!r} timeout={self._timeout:g}s>"

    async def __call__(self) -> str:
        env = {name: os.environ[name] for name in self._env_names if name in os.environ}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
        except OSError as err:
            raise TokenProviderError(
                f"token command {self._name!r} could not be started: "
                f"{err.strerror or type(err).__name__}"
            ) from None
        assert proc.stdout is not None
        assert proc.stderr is not None
        try:
            async with asyncio.timeout(self._timeout):
                out, err_size = await asyncio.gather(
                    _read_token_output(proc, proc.stdout), _count_bytes(proc.stderr)
                )
                status = await proc.wait()
        except TimeoutError:
            raise TokenProviderError(
                f"token command {self._name!r} did not finish within {self._timeout:g}s; "
                "it was killed"
            ) from None
        finally:
            if proc.returncode is None or not (proc.stdout.at_eof() and proc.stderr.at_eof()):
                await _reap(proc)
        if out is None:
            raise TokenProviderError(
                f"token command {self._name!r} printed more than {MAX_TOKEN_OUTPUT} bytes; "
                "it was killed"
            )
        if status != 0:
            how = (
                f"was killed by signal {-status}" if status < 0 else f"exited with status {status}"
            )
            raise TokenProviderError(
                f"token command {self._name!r} {how} (it wrote {err_size} bytes to stderr, "
                "not shown since they may hold secrets)"
            )
        try:
            token = out.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise TokenProviderError(
                f"token command {self._name!r} printed bytes that are not UTF-8"
            ) from None
        if not token:
            raise TokenProviderError(f"token command {self._name!r} printed no token")
        try:
            return check_token(token)
        except InvalidInputError as err:  # its message never echoes the token
            raise TokenProviderError(
                f"token command {self._name!r} printed an unusable token: {err}"
            ) from None


async def _read_token_output(
    proc: asyncio.subprocess.Process, stream: asyncio.StreamReader
) -> bytes | None:
    """Read the command's stdout to its end, or None if it prints too much.

    Past :data:`MAX_TOKEN_OUTPUT` the command's group is killed at once, since
    no token is that long, rather than read to the end of an endless output.
    """
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > MAX_TOKEN_OUTPUT:
            _kill_group(proc)
            await _drain(stream)
            return None
    return bytes(kept)


async def _count_bytes(stream: asyncio.StreamReader) -> int:
    """Read the command's stderr to its end and return its size; the bytes are dropped."""
    size = 0
    while chunk := await stream.read(65536):
        size += len(chunk)
    return size


async def _drain(stream: asyncio.StreamReader) -> None:
    while await stream.read(65536):
        pass


def _kill_group(proc: asyncio.subprocess.Process) -> None:
    """Kill the command and anything it started in its process group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Kill what is left of the command, read its pipes to their end and wait for it.

    Runs on every way out, cancellation included (shielded, and the
    cancellation re-raised), so no process, pipe or transport outlives the call.
    """
    # Even when the command has exited, a child it left in its group may hold the pipes.
    _kill_group(proc)

    async def finish() -> None:
        assert proc.stdout is not None
        assert proc.stderr is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_REAP_LIMIT):
                await asyncio.gather(_drain(proc.stdout), _drain(proc.stderr))
        await proc.wait()

    task = asyncio.ensure_future(finish())
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.done():
                break
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError
