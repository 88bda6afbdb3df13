"""The PostgreSQL registry and its lease: stop orders an off-host service can cancel.

``_registry`` (:class:`PostgresRegistry`), ``_lease`` (the lease, its clock and
its fence), ``_db`` (connections, the schema, the failure rule), and
``_tempserver`` (a throwaway server for the demo, tests and benchmarks).
asyncpg (``pip install 'asyncstop[postgres]'``) is imported on first use, so
importing this package never needs it.
"""

from ._lease import DEFAULT_LEASE_TTL, Lease
from ._registry import PostgresRegistry

__all__ = ["DEFAULT_LEASE_TTL", "Lease", "PostgresRegistry"]
