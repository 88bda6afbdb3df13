"""The report file of a watchdog that fired by itself: ``<registry>.watchdog.jsonl``.

One JSON object a line, each with ``time`` (ISO 8601, UTC, milliseconds) and
``event``::

    {"event": "fired", "reason": "bot_died" | "heartbeat_timeout", "pid", "bot_pid",
     "registry", "orders", "protective_left", "heartbeat_timeout", "last_heartbeat"}
    {"event": "round", "round", "next_round_in", "retrying", "refused",
     "protective_left", + report_record(): "orders", "counts", "pending_count",
     "pending" (the first 1,000 [account_id, order_id] pairs), ...}
    {"event": "done" | "gave_up" | "taken_over", "rounds", "elapsed", "counts",
     "pending" (every [account_id, order_id] that may still be live),
     "refused", "protective_left" (every protective stop left live), "exit_status"}

``fired`` opens a firing, a ``round`` line follows each round, and the last
line says how it ended. The file is kept below ``max_bytes``: a line that
would pass the bound first moves the file to ``<file>.1`` (replacing the older
one), so at most twice the bound is kept and the latest firing is whole.
Write errors are logged, never raised: a full disk must not stop the cancels.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from .._logging import logger
from .._report import CancelOutcome, CancelResult, report_record

__all__ = ["DEFAULT_REPORT_MAX_BYTES", "ReportFile", "counts_record", "now_iso", "pairs"]

#: The report file's bound in bytes before it rotates once (to ``<file>.1``).
DEFAULT_REPORT_MAX_BYTES: Final = 4 << 20
#: Pending ids listed in a round's line; the final line lists all of them.
ROUND_IDS: Final = 1000


def now_iso() -> str:
    """The wall-clock time now, ISO 8601 in UTC, to the millisecond."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def pairs(results: Iterable[CancelResult]) -> list[list[str]]:
    """``[account_id, order_id]`` of each result."""
    return [[r.account_id, r.order_id] for r in results]


def counts_record(counts: dict[CancelOutcome, int]) -> dict[str, int]:
    """The outcomes that happened, by name."""
    return {outcome.value: n for outcome, n in counts.items() if n}


class ReportFile:
    """Appends records to the report file, rotating it once past ``max_bytes``."""

    __slots__ = ("max_bytes", "path")

    def __init__(
        self, path: str | os.PathLike[str] | None, *, max_bytes: int = DEFAULT_REPORT_MAX_BYTES
    ):
        #: None: no file (a PostgreSQL registry's watchdog reports in its log only).
        self.path = None if path is None else Path(path)
        self.max_bytes = max_bytes

    def write(self, event: str, **fields: Any) -> None:
        """Append one line ``{"time": now, "event": event, **fields}`` (no-op without a path)."""
        if self.path is None:
            return
        line = json.dumps({"time": now_iso(), "event": event, **fields}) + "\n"
        data = line.encode("utf-8")
        try:
            try:
                size = self.path.stat().st_size
            except FileNotFoundError:
                size = 0
            if size and size + len(data) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
            with self.path.open("ab") as out:
                out.write(data)
        except OSError as err:
            logger.error("watchdog could not write its report to %s: %s", self.path, err)

    @staticmethod
    def report_fields(report: Any) -> dict[str, Any]:
        """``report_record`` of a round's report, ids cut to :data:`ROUND_IDS`."""
        record = report_record(report, max_ids=ROUND_IDS)
        record["counts"] = {k: v for k, v in record["counts"].items() if v}
        return record
