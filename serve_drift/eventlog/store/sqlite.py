"""The embedded event store: SQLite in WAL mode, written in batches by the monitor.

**Durability.** ``journal_mode=WAL`` lets the CLI and the label endpoint read while the monitor
writes. ``synchronous=FULL`` (the default) fsyncs the WAL at every commit, so a batch reported
written survives a process kill *and* a power loss or kernel crash. ``NORMAL`` would survive a
process kill too, but may lose the last commits on power loss, which would break the promise
"never report unwritten events as written". Batches of 64-256 records pay one fsync each, so
FULL costs little per event (``benchmarks/event_store.py`` measures both).

**Transactions.** Every write is one ``BEGIN IMMEDIATE ... COMMIT`` (the write lock up front,
so the busy timeout applies instead of a deadlock error). Failures are named from SQLite's
error codes (disk full, locked past the busy timeout, read-only, I/O error, cannot open).

**Size.** Retention by size counts the file's used pages; ``auto_vacuum=INCREMENTAL`` then
returns freed pages to the file system.

>>> import tempfile, os
>>> from serve_drift.eventlog.schema import InferenceRecord, Outputs
>>> store = EventStore(os.path.join(tempfile.mkdtemp(), "events.db"))
>>> record = InferenceRecord(timestamp=1.0, correlation_id="req-1", internal_id="a1",
...     model_name="digits", model_version="v1", outputs=Outputs(predicted_class=3, confidence=0.9))
>>> store.write_batch([record]).written_ids
('a1',)
>>> store.write_batch([record]).already_present_ids  # a retry stores nothing twice
('a1',)
>>> [r.correlation_id for r in store.recent(limit=10)]
['req-1']
>>> store.close()
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Literal, TypeVar

from serve_drift.eventlog.store.base import BaseEventStore
from serve_drift.eventlog.store.contract import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, StoreError
from serve_drift.eventlog.store.migrations import create_schema
from serve_drift.eventlog.store.sql import SQLITE

T = TypeVar("T")

Synchronous = Literal["FULL", "NORMAL", "EXTRA"]

_WAL_LIMIT_BYTES = 16 << 20  # the WAL is truncated back to this after checkpoints


class EventStore(BaseEventStore):
    """The event store in one SQLite file (see the module docstring for its guarantees)."""

    dialect = SQLITE
    backend = "sqlite"
    _errors = (sqlite3.Error, OSError, StoreError)

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        synchronous: Synchronous = "FULL",
        busy_timeout_s: float = 5.0,
        retention_interval_s: float = 60.0,
    ) -> None:
        if synchronous not in ("FULL", "NORMAL", "EXTRA"):
            raise ValueError(f"synchronous must be FULL, NORMAL or EXTRA, got {synchronous!r}")
        super().__init__(
            max_age_s=max_age_s,
            max_bytes=max_bytes,
            busy_timeout_s=busy_timeout_s,
            retention_interval_s=retention_interval_s,
        )
        self.path = Path(path)
        self.synchronous = synchronous
        self._open_now()

    def __enter__(self) -> EventStore:
        return self

    @property
    def location(self) -> str:
        return str(self.path)

    def _open(self) -> sqlite3.Connection:
        return _open(self.path, synchronous=self.synchronous, busy_s=self.busy_timeout_s)

    def _transaction(self, db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
        return _in_transaction(db, work)

    def _reason(self, exc: BaseException) -> str:
        return _reason(exc)

    def _used_bytes(self, db: sqlite3.Connection) -> int:
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        size = db.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def _vacuum(self, db: sqlite3.Connection) -> None:
        # Return free pages to the file system (auto_vacuum=INCREMENTAL); without this the
        # file stays at its high-water mark and only the live data is bounded by max_bytes.
        # executescript, outside any transaction: execute() would run only the pragma's first
        # step (one page), since the statement returns no columns.
        db.executescript("PRAGMA incremental_vacuum;")

    def _synchronous(self) -> str:
        return self.synchronous

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total


def _open(path: Path, *, synchronous: str, busy_s: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; every write is an explicit BEGIN IMMEDIATE.
    db = sqlite3.connect(path, timeout=busy_s, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new database
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError("error", f"could not switch {path} to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        _in_transaction(db, lambda d: create_schema(d, SQLITE))
    except BaseException:
        db.close()
        raise
    return db


def _in_transaction(db: sqlite3.Connection, work: Callable[[sqlite3.Connection], T]) -> T:
    db.execute("BEGIN IMMEDIATE")
    try:
        result = work(db)
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT may already have rolled back
            with contextlib.suppress(sqlite3.Error):
                db.execute("ROLLBACK")
        raise
    return result


def _reason(exc: BaseException) -> str:
    if isinstance(exc, StoreError):
        return exc.reason
    name = str(getattr(exc, "sqlite_errorname", ""))
    for prefix, reason in _REASONS:
        if name.startswith(prefix):
            return reason
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "disk_full"
    return "error"


_REASONS = (
    ("SQLITE_FULL", "disk_full"),
    ("SQLITE_BUSY", "locked"),
    ("SQLITE_LOCKED", "locked"),
    ("SQLITE_READONLY", "read_only"),
    ("SQLITE_IOERR", "io_error"),
    ("SQLITE_CANTOPEN", "cannot_open"),
    ("SQLITE_CORRUPT", "corrupt"),
    ("SQLITE_NOTADB", "corrupt"),
)
