"""Fuzz the fake exchange against the API contract with Schemathesis, as CI does.

::

    python -m tests.fuzz_contract                  # all phases, then again rate-limited
    python -m tests.fuzz_contract --max-time 5     # a shorter budget per run

Prism checks our client against ``api/openapi.yaml``; this checks the other
side: that ``asyncstop.testing.FakeExchange``, which users test their bots
against, answers as the contract says. Each run starts the fake exchange in a
process of its own (``python -m asyncstop.testing --port 0``), sends its bearer
token and the documented Content-Type as headers, and runs every Schemathesis
phase (examples, coverage, fuzzing, stateful) with every check. The second run
switches the fake's rate limit on, so that its 429 answers (with
``Retry-After``) are checked against the contract too. The token is the one
the fake exchange makes up at start and prints.

Exits 0 when both runs found no failure, else with Schemathesis' status.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CONTRACT = Path(__file__).resolve().parent.parent / "api" / "openapi.yaml"
#: The documented request's Content-Type (cancel-stop-order.txt).
CONTENT_TYPE = "application/json; x-api-version=4.0"
#: Cancels per second per account in the rate-limited run: low enough that a
#: fuzzing run meets many 429s, high enough that it meets answers too.
RATE_LIMIT = 20.0
#: Fixed, so that a failure can be replayed: Schemathesis draws from it.
SEED = 20261203


@contextmanager
def fake_exchange(*extra: str) -> Iterator[tuple[str, str]]:
    """A fake exchange in its own process; yields its base URL and token once it serves."""
    with subprocess.Popen(
        [
            sys.executable,
            "-u",  # its lines arrive as printed, not when a pipe's buffer fills
            "-m",
            "asyncstop.testing",
            "--port",
            "0",
            "--orders",
            "50",
            "--ids-out",
            os.devnull,
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        # aiohttp logs every malformed request the fuzzer sends (a NUL byte in a
        # header): noise here, since Schemathesis judges what the client saw.
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        try:
            assert process.stdout is not None
            said: dict[str, str] = {}
            for line in process.stdout:
                key, _, value = line.partition(":")
                said[key] = value.strip()
                if key == "orders":  # the description's last line
                    break
            if not said.get("base_url") or not said.get("token"):
                raise SystemExit("the fake exchange did not start")
            yield said["base_url"], said["token"]
        finally:
            process.terminate()
            process.wait(timeout=30)


def schemathesis(base_url: str, token: str, max_time: int) -> int:
    """Run every phase and check once against ``base_url``; return its exit status."""
    with tempfile.TemporaryDirectory() as folder:
        config = Path(folder, "schemathesis.toml")
        headers = {"Authorization": f"Bearer {token}", "Content-Type": CONTENT_TYPE}
        # TOML's basic strings are JSON's strings; the file is private to this user.
        config.touch(mode=0o600)
        config.write_text(
            "headers = { "
            + ", ".join(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in headers.items())
            + " }\n"
        )
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(config),
            "--no-color",
            "run",
            str(CONTRACT),
            "--url",
            base_url,
            "--phases",
            "examples,coverage,fuzzing,stateful",
            "--checks",
            "all",
            "--seed",
            str(SEED),
            "--max-time",
            str(max_time),
        ]
        return subprocess.run(command, stdin=subprocess.DEVNULL, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--max-time",
        type=int,
        default=20,
        help="seconds each run may fuzz (the stateful phase repeats until then); default 20",
    )
    args = parser.parse_args(argv)
    status = 0
    for title, extra in (
        ("the fake exchange as users start it", ()),
        (f"it rate-limited at {RATE_LIMIT:g}/s", ("--rate-limit", f"{RATE_LIMIT:g}")),
    ):
        print(f"-- Schemathesis against {title}", flush=True)  # noqa: T201 - a CI step's heading
        with fake_exchange(*extra) as (base_url, token):
            status = schemathesis(base_url, token, args.max_time) or status
    return status


if __name__ == "__main__":
    raise SystemExit(main())
