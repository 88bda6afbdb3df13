"""A hanging name lookup neither outlives the call nor keeps the process alive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import asyncstop

#: Installed as sitecustomize in the child: the lookup of any *.invalid name hangs,
#: as with a dead nameserver, and no query leaves the machine.
HANGING_RESOLVER = """
import socket, time
_real = socket.getaddrinfo
def getaddrinfo(host, *args, **kwargs):
    if isinstance(host, str) and host.endswith(".invalid"):
        time.sleep(120)
    return _real(host, *args, **kwargs)
socket.getaddrinfo = getaddrinfo
"""

BOT = """
import asyncio, json
import asyncstop

async def main():
    async with asyncstop.AsyncStopClient(
        base_url="http://exchange.invalid:8080", token="T0KEN", account_id="acc-1", timeout=0.5
    ) as client:
        report = await client.cancel_stop_orders(["A", "B"], deadline=1.0)
    print(json.dumps([str(r.outcome) for r in report.results]))

asyncio.run(main())
"""


def test_a_hanging_dns_lookup_ends_with_the_call_and_lets_the_process_exit(
    tmp_path: Path,
) -> None:
    """With every lookup hanging for 2 minutes, the process still exits, orders not_sent."""
    (tmp_path / "sitecustomize.py").write_text(HANGING_RESOLVER)
    package_root = str(Path(asyncstop.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), package_root])}
    # aiohttp's default resolver runs getaddrinfo in the loop's executor, which
    # asyncio.run waits for at exit: the child would live 120 s, past this timeout.
    done = subprocess.run(
        [sys.executable, "-c", BOT],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == ["not_sent", "not_sent"]
