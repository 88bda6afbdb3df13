"""``asyncstop demo``'s third part: a machine dies; the off-host service cancels its stops."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from asyncstop._postgres._tempserver import TemporaryPostgres


def _demo(*prefix: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"{''.join(prefix)}"
        "from asyncstop._cli import main\n"
        "sys.exit(main(['demo', '--orders', '5', '--bot-orders', '10']))\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.timeout(120)
def test_demo_part_3_kills_a_machine_and_the_service_cancels_every_stop(
    postgres_server: TemporaryPostgres,
) -> None:
    """With PostgreSQL here, part 3 SIGKILLs the bot's group; the exchange's count ends at 0."""
    del postgres_server  # the demo starts its own; the fixture says whether it can
    run = _demo()
    assert run.returncode == 0, run.stdout + run.stderr
    part3 = run.stdout.partition("Part 3:")[2]
    assert "live stops before the machine dies: 200 (exchange's count)" in part3
    assert re.search(r"first DELETE at \+\d+ ms .*; last cancel at \+\d+ ms", part3), part3
    assert "its record in asyncstop_fires: owner 'demo-bot-eu-1'" in part3
    assert "live stops after: 0 (exchange's count)" in part3
    assert "All three parts leave 0 live stop orders on the exchange." in run.stdout
    assert run.stderr == ""


@pytest.mark.timeout(120)
def test_demo_without_asyncpg_says_in_one_line_why_part_3_skips() -> None:
    """Without asyncpg, part 3 is one line naming the extra, and the demo still passes."""
    run = _demo("sys.modules['asyncpg'] = None\n")
    (line,) = [line for line in run.stdout.splitlines() if line.startswith("Part 3")]
    assert "skipped" in line
    assert "pip install 'asyncstop[postgres]'" in line
    assert "Part 3 left" not in run.stdout
    assert "and 3 left" not in run.stdout
