"""The event store: one contract, two backends.

- :class:`EventStore`: SQLite in WAL mode, embedded, the default (one file per monitor);
- :class:`PostgresEventStore`: a schema on a PostgreSQL server, for clusters (the monitor may
  be rescheduled to any node; the record cannot live on one node's disk);
- :func:`open_store`: the one a config asks for (a DSN means PostgreSQL).

Both are :class:`BaseEventStore`: the same tables and layout version
(:mod:`~serve_drift.eventlog.store.migrations`), the same SQL
(:mod:`~serve_drift.eventlog.store.sql`), the same idempotent writes, sampling-aware served rows,
retention, label join, alert history and queries, and the same failure contract
(:mod:`~serve_drift.eventlog.store.contract`); ``tests/unit/eventlog`` runs one suite over both.

>>> import os, tempfile
>>> store = open_store(path=os.path.join(tempfile.mkdtemp(), "events.sqlite"))
>>> (store.backend, store.count_events())
('sqlite', 0)
>>> store.close()
"""

from __future__ import annotations

import os
from typing import Any

from serve_drift.eventlog.store.base import BaseEventStore
from serve_drift.eventlog.store.contract import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    AlertTransitionLike,
    EventQuery,
    LabelAnswer,
    LabelledPredictions,
    LabelStatus,
    MaintenanceLike,
    RetentionReport,
    ServedRequest,
    StoreConfigError,
    StoredIncident,
    StoredTransition,
    StoreError,
    StoreHealth,
    StoreWriteError,
    WriteReceipt,
)
from serve_drift.eventlog.store.migrations import LAYOUT_VERSION
from serve_drift.eventlog.store.postgres import (
    DEFAULT_SCHEMA,
    PostgresEventStore,
    redact_dsn,
    schema_for,
    store_schemas,
)
from serve_drift.eventlog.store.sqlite import EventStore, Synchronous

__all__ = [
    "DEFAULT_MAX_AGE_S",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_SCHEMA",
    "LAYOUT_VERSION",
    "AlertTransitionLike",
    "BaseEventStore",
    "EventQuery",
    "EventStore",
    "LabelAnswer",
    "LabelStatus",
    "LabelledPredictions",
    "MaintenanceLike",
    "PostgresEventStore",
    "RetentionReport",
    "ServedRequest",
    "StoreConfigError",
    "StoreError",
    "StoreHealth",
    "StoreWriteError",
    "StoredIncident",
    "StoredTransition",
    "Synchronous",
    "WriteReceipt",
    "open_store",
    "redact_dsn",
    "schema_for",
    "store_schemas",
]


def open_store(
    *,
    path: str | os.PathLike[str] | None = None,
    dsn: str | None = None,
    pg_schema: str = DEFAULT_SCHEMA,
    **options: Any,
) -> BaseEventStore:
    """PostgreSQL when ``dsn`` is given (in schema ``pg_schema``), else SQLite at ``path``.

    ``options`` (``max_age_s``, ``max_bytes``, ``busy_timeout_s``, ``retention_interval_s``)
    go to the store; a failure to connect leaves it degraded, not raised (see the stores).
    """
    if dsn:
        return PostgresEventStore(dsn, schema=pg_schema, **options)
    if path is None:
        raise StoreConfigError("an event store needs a path (SQLite) or a DSN (PostgreSQL)")
    return EventStore(path, **options)
