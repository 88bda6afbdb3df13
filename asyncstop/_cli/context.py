"""What ``main`` hands every command: its guarded standard output and its logging."""

from __future__ import annotations

from dataclasses import dataclass

from .logs import CLILogging
from .output import Output

__all__ = ["Context"]


@dataclass(frozen=True, slots=True)
class Context:
    """Standard output, guarded against a closed pipe or a full disk, and the command's logging."""

    out: Output
    logging: CLILogging
