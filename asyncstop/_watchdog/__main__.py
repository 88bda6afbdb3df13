"""``python -m asyncstop._watchdog``: the watchdog process (started by ``asyncstop.Watchdog``)."""

from asyncstop._watchdog._process import main

if __name__ == "__main__":
    raise SystemExit(main())
