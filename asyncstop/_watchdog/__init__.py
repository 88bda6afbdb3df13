"""The watchdog: a dead man's switch in its own process (see :class:`Watchdog`).

``_bot`` is the bot's side (the public class), ``_process`` the watchdog
process (``python -m asyncstop._watchdog``), ``_protocol`` the pipe between them.
"""

from .._errors import WatchdogError
from ._bot import Watchdog

__all__ = ["Watchdog", "WatchdogError"]
