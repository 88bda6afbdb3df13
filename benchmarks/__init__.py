"""Benchmarks of asyncstop: ``python -m benchmarks`` (see benchmarks/README.md).

One module per scenario (``overhead``, ``latency``, ``ratelimit``,
``responsiveness``, ``memory``), the fake exchange servers they run against
(``servers``), the hand-written clients they compare with (``baselines``), and
the table, JSON and plot (``report``).
"""
