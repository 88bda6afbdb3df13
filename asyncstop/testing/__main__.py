"""``python -m asyncstop.testing``: serve a fake exchange (see ``--help``)."""

from asyncstop.testing._runner import main

if __name__ == "__main__":
    raise SystemExit(main())
