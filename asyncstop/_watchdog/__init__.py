"""The watchdog: a dead man's switch in its own process (see :class:`Watchdog`).

``_bot`` is the bot's side (the public class), ``_spawn`` its handle on the
process, ``_process`` the watchdog process (``python -m asyncstop._watchdog``),
``_protocol`` the pipe between them, ``_settings`` the settings defined once,
``_firing`` the persistent firing (shared with the off-host service),
``_source`` the registry as the bot passes it (a file, or a PostgreSQL owner),
``_guarded`` the same in the process (its lock, its fence, its firing store),
``_lock`` one watchdog per registry file or owner, ``_reportfile`` the report file.
"""

from .._errors import WatchdogError
from ._bot import Watchdog, WatchdogFired

__all__ = ["Watchdog", "WatchdogError", "WatchdogFired"]
