"""The embedded event store: SQLite in WAL mode, written in batches by the monitor.

**Durability.** ``journal_mode=WAL`` lets the CLI and the label endpoint read while the monitor
writes. ``synchronous=FULL`` (the default) fsyncs the WAL at every commit, so a batch reported
written survives a process kill *and* a power loss or kernel crash. ``NORMAL`` would survive a
process kill too, but may lose the last commits on power loss, which would break the promise
"never report unwritten events as written". Batches of 64-256 records pay one fsync each, so
FULL costs little per event (``benchmarks/event_store.py`` measures both).

**Exactly once.** Every write is one ``BEGIN IMMEDIATE ... COMMIT`` transaction and returns
only after the commit; ``internal_id`` is unique and inserts are ``INSERT OR IGNORE``, so a
retried batch stores nothing twice (:class:`WriteReceipt` tells new from already present).

**Failure.** A failed write (disk full, locked past the busy timeout, read-only, I/O error)
rolls back, marks the store degraded (:meth:`EventStore.health`) and raises
:class:`StoreWriteError` with a short ``reason``; the caller counts those events as dropped.
A later successful write clears the degraded flag. If the database cannot even be opened,
every operation raises the same way and the next one tries to open it again.

**Retention.** By age (``max_age_s``) and by size (``max_bytes``: the oldest events are deleted
until the live data is under 90 % of it; ``auto_vacuum=INCREMENTAL`` then returns the freed
pages to the file system). Checked at most every ``retention_interval_s`` after writes, or on
demand with :meth:`EventStore.enforce_retention`.

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
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, TypeVar

import numpy as np

from serve_drift.errors import ServeDriftError
from serve_drift.eventlog.schema import (
    SCHEMA_VERSION,
    ConceptMetricsRecord,
    DriftTestRecord,
    InferenceRecord,
    LabelRecord,
    record_from_json,
)

T = TypeVar("T")

Synchronous = Literal["FULL", "NORMAL", "EXTRA"]
LabelStatus = Literal[
    "accepted", "unknown_correlation_id", "duplicate_label", "ambiguous", "invalid"
]

# The layout of the tables (not of the JSON records, which carry their own schema_version).
# 2: a compact ``served_requests`` row for every served request.
LAYOUT_VERSION = 2
DEFAULT_MAX_AGE_S = 7 * 24 * 3600.0
DEFAULT_MAX_BYTES = 1 << 30
_SIZE_TARGET = 0.9  # delete down to 90 % of max_bytes, so retention does not run on every write
_SQL_CHUNK = 500  # ids per IN (...) query: well under SQLite's variable limit
_WAL_LIMIT_BYTES = 16 << 20  # the WAL is truncated back to this after checkpoints

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inference_events (
    internal_id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    correlation_id TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    deployment TEXT,
    flagged INTEGER NOT NULL,
    drift_window INTEGER,
    predicted_class INTEGER,
    confidence REAL,
    sampling_weight REAL NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON inference_events (timestamp);
CREATE INDEX IF NOT EXISTS events_by_correlation ON inference_events (correlation_id);
CREATE INDEX IF NOT EXISTS events_by_version ON inference_events (model_version, timestamp);
CREATE INDEX IF NOT EXISTS events_flagged ON inference_events (timestamp) WHERE flagged = 1;
CREATE INDEX IF NOT EXISTS events_by_window ON inference_events (drift_window)
    WHERE drift_window IS NOT NULL;
CREATE TABLE IF NOT EXISTS drift_results (
    test_id TEXT NOT NULL UNIQUE,
    tested_at REAL NOT NULL,
    window_index INTEGER NOT NULL,
    model_version TEXT NOT NULL,
    detector TEXT NOT NULL,
    is_drift INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_by_time ON drift_results (tested_at);
CREATE INDEX IF NOT EXISTS drift_by_window ON drift_results (window_index);
CREATE TABLE IF NOT EXISTS labels (
    correlation_id TEXT PRIMARY KEY,
    label INTEGER NOT NULL,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_time ON labels (received_at);
CREATE TABLE IF NOT EXISTS label_links (
    internal_id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    received_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS label_links_by_time ON label_links (received_at);
CREATE TABLE IF NOT EXISTS served_requests (
    internal_id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    timestamp REAL NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    deployment TEXT,
    flagged INTEGER NOT NULL,
    drift_window INTEGER,
    predicted_class INTEGER,
    confidence REAL
);
CREATE INDEX IF NOT EXISTS served_by_time ON served_requests (timestamp);
CREATE INDEX IF NOT EXISTS served_by_correlation ON served_requests (correlation_id);
CREATE INDEX IF NOT EXISTS served_by_window ON served_requests (drift_window)
    WHERE drift_window IS NOT NULL;
CREATE TABLE IF NOT EXISTS concept_metrics (
    metrics_id TEXT NOT NULL UNIQUE,
    computed_at REAL NOT NULL,
    tag TEXT NOT NULL,
    window_index INTEGER,
    model_version TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_time ON concept_metrics (computed_at);
"""


class StoreError(ServeDriftError):
    """The store could not do what was asked; ``reason`` is a short machine-readable word:
    ``disk_full``, ``locked``, ``read_only``, ``io_error``, ``cannot_open``, ``corrupt``,
    ``incompatible`` or ``error``, and ``code`` is ``store_<reason>``."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.code = f"store_{reason}"

    def __reduce__(self) -> tuple[Any, ...]:  # rebuilt with both arguments across processes
        return (type(self), (self.reason, str(self)))


class StoreWriteError(StoreError):
    """Nothing of the failed write was committed: count its events as dropped."""


@dataclass(frozen=True)
class WriteReceipt:
    """Ids committed by one write. ``already_present_ids`` were stored by an earlier attempt."""

    written_ids: tuple[str, ...]
    already_present_ids: tuple[str, ...] = ()

    @property
    def committed(self) -> int:
        return len(self.written_ids) + len(self.already_present_ids)


@dataclass(frozen=True)
class StoreHealth:
    """``degraded`` is true while the latest write failed; ``last_error`` says how."""

    path: str
    degraded: bool
    last_error: str | None
    last_error_reason: str | None
    last_error_at: float | None
    write_failures: int
    consecutive_failures: int
    last_write_at: float | None
    size_bytes: int
    synchronous: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True, kw_only=True)
class EventQuery:
    """Filters for :meth:`EventStore.query`, combined with AND; newest first."""

    limit: int = 100
    correlation_id: str | None = None
    since: float | None = None
    until: float | None = None
    model_version: str | None = None
    flagged_only: bool = False
    drift_window: int | None = None


@dataclass(frozen=True)
class RetentionReport:
    deleted_by_age: int
    deleted_by_size: int
    size_bytes: int


@dataclass(frozen=True)
class LabelAnswer:
    """The answer for one submitted label, in submission order.

    ``internal_ids`` are the events the label was joined to; ``drift_windows`` their windows
    (recompute those windows' metrics after accepting labels).
    """

    correlation_id: str
    status: LabelStatus
    detail: str
    internal_ids: tuple[str, ...] = ()
    drift_windows: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The caller's answer: internal ids and windows stay inside the monitor."""
        return {"correlation_id": self.correlation_id, "status": self.status, "detail": self.detail}


@dataclass(frozen=True)
class LabelledPredictions:
    """Joined (prediction, label) rows as arrays; ``confidence`` is NaN where unknown."""

    predicted: np.ndarray
    labels: np.ndarray
    confidence: np.ndarray
    weights: np.ndarray
    timestamps: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True, kw_only=True)
class ServedRequest:
    """The compact row kept for every served request, whatever sampling decides.

    Written when the request reaches the monitor, before its window is tested: a label for any
    served request joins at once, and per-window accuracy from labels counts every labelled
    request once, not only the sampled ones. About 200 bytes per row with its indexes.
    """

    internal_id: str
    correlation_id: str
    timestamp: float
    model_name: str
    model_version: str
    predicted_class: int | None
    confidence: float | None
    deployment: str | None = None
    flagged: bool = False
    drift_window: int | None = None

    @classmethod
    def of(cls, record: InferenceRecord) -> ServedRequest:
        return cls(
            internal_id=record.internal_id,
            correlation_id=record.correlation_id,
            timestamp=record.timestamp,
            model_name=record.model_name,
            model_version=record.model_version,
            predicted_class=record.outputs.predicted_class,
            confidence=record.outputs.confidence,
            deployment=record.deployment,
            flagged=record.flagged,
            drift_window=record.drift_window,
        )

    def row(self) -> tuple[Any, ...]:
        return (
            self.internal_id,
            self.correlation_id,
            self.timestamp,
            self.model_name,
            self.model_version,
            self.deployment,
            int(self.flagged),
            self.drift_window,
            self.predicted_class,
            self.confidence,
        )


@dataclass(frozen=True)
class _Event:
    internal_id: str
    group: tuple[str, str, str]
    drift_window: int | None


class EventStore:
    """Inference events, drift results, labels and concept metrics in one SQLite file.

    Thread-safe: one connection, used under a lock. Calls block on disk I/O (one fsync per
    write with ``synchronous="FULL"``): from asyncio code, call them in a worker thread.
    """

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
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.synchronous = synchronous
        self.busy_timeout_s = busy_timeout_s
        self.retention_interval_s = retention_interval_s
        self._lock = threading.RLock()
        self._db: sqlite3.Connection | None = None
        self._last_retention = time.monotonic()
        self._failures = 0
        self._consecutive_failures = 0
        self._last_error: tuple[str, str, float] | None = None
        self._last_write_at: float | None = None
        self._closed = False
        try:
            self._connection()
        except (sqlite3.Error, OSError, StoreError) as exc:
            # Opening is retried by the next operation; meanwhile the store reports degraded.
            self._record_failure("open", exc)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._db is not None:
                self._db.close()
                self._db = None

    def __enter__(self) -> EventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise StoreError("closed", f"event store {self.path} is closed")
        if self._db is None:
            self._db = _open(self.path, synchronous=self.synchronous, busy_s=self.busy_timeout_s)
        return self._db

    # --- writes -------------------------------------------------------------------------------

    def write_batch(self, records: Sequence[InferenceRecord]) -> WriteReceipt:
        """Store inference events in one transaction; returns after the commit.

        Each event's compact :class:`ServedRequest` row is written (or given its window) in the
        same transaction. Raises :class:`StoreWriteError` (nothing committed) on failure.
        """
        rows = [_event_row(r) for r in records]  # serialise before taking the write lock
        served = [ServedRequest.of(r).row() for r in records]

        def work(db: sqlite3.Connection) -> WriteReceipt:
            _upsert_served(db, served)
            return _insert_unique(db, _EVENTS, rows)

        receipt = self._write("write events", work)
        self._maybe_enforce_retention()
        return receipt

    def record_served(self, requests: Sequence[ServedRequest]) -> WriteReceipt:
        """Store compact rows of served requests (idempotent by ``internal_id``)."""
        rows = [r.row() for r in requests]
        receipt = self._write("record served", lambda db: _insert_unique(db, _SERVED, rows))
        self._maybe_enforce_retention()
        return receipt

    def assign_window(self, window_index: int, internal_ids: Sequence[str]) -> int:
        """Record that these requests were in drift window ``window_index`` (the first window
        that contained a row keeps it); returns how many rows changed."""
        ids = list(dict.fromkeys(internal_ids))
        return self._write("assign window", lambda db: _assign_window(db, window_index, ids))

    def write_drift_results(self, records: Sequence[DriftTestRecord]) -> WriteReceipt:
        rows = [_drift_row(r) for r in records]
        return self._write("write drift results", lambda db: _insert_unique(db, _DRIFT, rows))

    def write_concept_metrics(self, records: Sequence[ConceptMetricsRecord]) -> WriteReceipt:
        rows = [_metrics_row(r) for r in records]
        return self._write("write concept metrics", lambda db: _insert_unique(db, _METRICS, rows))

    def attach_labels(self, labels: Sequence[LabelRecord]) -> list[LabelAnswer]:
        """Join labels to stored events by correlation ID, in one transaction.

        Per label, in order: ``accepted`` (joined to one event per deployment and model
        version: a shadow's event shares the label), ``unknown_correlation_id`` (no stored
        event: never served, not yet written, sampled out, or aged out), ``duplicate_label``
        (the ID already has a label, possibly from earlier in this batch; the first one stands),
        ``ambiguous`` (the client reused the ID for several requests to the same model: which
        one the label is for cannot be known, so it is not joined). Only accepted labels are
        stored. Links are made now: events stored later are not joined to older labels.
        """
        return self._write("attach labels", lambda db: _attach_labels(db, labels))

    def _write(self, operation: str, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                result = _in_transaction(self._connection(), work)
            except (sqlite3.Error, OSError, StoreError) as exc:
                self._record_failure(operation, exc)
                raise _as_store_error(operation, exc, StoreWriteError) from exc
            self._consecutive_failures = 0
            self._last_write_at = time.time()
            return result

    def _record_failure(self, operation: str, exc: BaseException) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = (_reason(exc), f"{operation}: {type(exc).__name__}: {exc}", time.time())

    # --- retention ----------------------------------------------------------------------------

    def _maybe_enforce_retention(self) -> None:
        if time.monotonic() - self._last_retention < self.retention_interval_s:
            return
        # A failure is recorded in health(); the events just written are committed regardless.
        with contextlib.suppress(StoreError):
            self.enforce_retention()

    def enforce_retention(self, *, now: float | None = None) -> RetentionReport:
        """Delete what is older than ``max_age_s``, then the oldest events beyond ``max_bytes``."""
        with self._lock:
            self._last_retention = time.monotonic()
            by_age = self._write("retention by age", lambda db: _delete_old(db, self._cutoff(now)))
            by_size = self._write("retention by size", self._shrink) if self.max_bytes else 0
            if by_age or by_size:
                self._reclaim()
            return RetentionReport(by_age, by_size, self.size_bytes())

    def _reclaim(self) -> None:
        # Return free pages to the file system (auto_vacuum=INCREMENTAL); without this the
        # file stays at its high-water mark and only the live data is bounded by max_bytes.
        # executescript, outside any transaction: execute() would run only the pragma's first
        # step (one page), since the statement returns no columns.
        try:
            self._connection().executescript("PRAGMA incremental_vacuum;")
        except (sqlite3.Error, OSError, StoreError) as exc:
            self._record_failure("vacuum", exc)

    def _cutoff(self, now: float | None) -> float | None:
        if self.max_age_s is None:
            return None
        return (time.time() if now is None else now) - self.max_age_s

    def _shrink(self, db: sqlite3.Connection) -> int:
        assert self.max_bytes is not None
        target = int(self.max_bytes * _SIZE_TARGET)
        deleted = 0
        for _ in range(20):  # each round deletes an estimate of the excess; rarely more than 2
            used, rows = _used_bytes(db), _count(db, "served_requests")
            # Start only above max_bytes; once started, go down to the lower target.
            if rows == 0 or used <= (self.max_bytes if deleted == 0 else target):
                break
            excess_rows = math.ceil((used - target) / max(1.0, used / rows))
            deleted += _delete_oldest_requests(db, max(1, min(rows, excess_rows)))
        return deleted

    def size_bytes(self) -> int:
        """Bytes on disk: the database file plus its WAL."""
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.path.getsize(f"{self.path}{suffix}")
        return total

    # --- reads --------------------------------------------------------------------------------

    def query(self, query: EventQuery) -> list[InferenceRecord]:
        """Inference events matching every filter in ``query``, newest first."""
        where, params = _event_filters(query)
        sql = (
            f"SELECT record FROM inference_events {where} "
            "ORDER BY timestamp DESC, rowid DESC LIMIT ?"
        )
        rows = self._read("query events", sql, (*params, max(0, query.limit)))
        return [_as_inference(row[0]) for row in rows]

    def recent(self, *, limit: int = 100) -> list[InferenceRecord]:
        return self.query(EventQuery(limit=limit))

    def by_correlation_id(self, correlation_id: str, *, limit: int = 100) -> list[InferenceRecord]:
        return self.query(EventQuery(correlation_id=correlation_id, limit=limit))

    def in_time_range(
        self, *, since: float | None = None, until: float | None = None, limit: int = 100
    ) -> list[InferenceRecord]:
        return self.query(EventQuery(since=since, until=until, limit=limit))

    def by_model_version(self, model_version: str, *, limit: int = 100) -> list[InferenceRecord]:
        return self.query(EventQuery(model_version=model_version, limit=limit))

    def flagged(self, *, limit: int = 100) -> list[InferenceRecord]:
        return self.query(EventQuery(flagged_only=True, limit=limit))

    def drift_results(
        self, *, limit: int = 100, window_index: int | None = None
    ) -> list[DriftTestRecord]:
        """Drift test records, newest first."""
        where, params = (
            ("WHERE window_index = ?", (window_index,)) if window_index is not None else ("", ())
        )
        sql = (
            f"SELECT record FROM drift_results {where} ORDER BY tested_at DESC, rowid DESC LIMIT ?"
        )
        rows = self._read("query drift results", sql, (*params, limit))
        return [DriftTestRecord.from_dict(_loads(row[0])) for row in rows]

    def concept_metrics(
        self, *, limit: int = 100, tag: str | None = None
    ) -> list[ConceptMetricsRecord]:
        """Concept-drift metrics records (feedback windows, sentinel runs), newest first."""
        where, params = ("WHERE tag = ?", (tag,)) if tag is not None else ("", ())
        order = "ORDER BY computed_at DESC, rowid DESC LIMIT ?"
        sql = f"SELECT record FROM concept_metrics {where} {order}"
        rows = self._read("query concept metrics", sql, (*params, limit))
        return [ConceptMetricsRecord.from_dict(_loads(row[0])) for row in rows]

    def served(self, correlation_ids: Iterable[str]) -> dict[str, list[ServedRequest]]:
        """The compact rows of the requests served under these correlation ids."""
        ids = list(dict.fromkeys(correlation_ids))
        found: dict[str, list[ServedRequest]] = {}
        columns = ", ".join(_SERVED.columns)
        for chunk in _chunks(ids):
            sql = f"SELECT {columns} FROM served_requests WHERE correlation_id IN ({_marks(chunk)})"
            for row in self._read("query served", sql, tuple(chunk)):
                request = _served_from_row(row)
                found.setdefault(request.correlation_id, []).append(request)
        return found

    def labels(self, correlation_ids: Iterable[str]) -> dict[str, LabelRecord]:
        """Stored labels of these correlation ids (absent ids are left out)."""
        ids = list(dict.fromkeys(correlation_ids))
        found: dict[str, LabelRecord] = {}
        for chunk in _chunks(ids):
            sql = f"SELECT record FROM labels WHERE correlation_id IN ({_marks(chunk)})"
            for (text,) in self._read("query labels", sql, tuple(chunk)):
                label = LabelRecord.from_dict(_loads(text))
                found[label.correlation_id] = label
        return found

    def labelled_predictions(
        self,
        *,
        window_index: int | None = None,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> LabelledPredictions:
        """Stored events joined to their labels, filtered like :meth:`query` (no limit)."""
        where, params = _event_filters(
            EventQuery(
                drift_window=window_index, model_version=model_version, since=since, until=until
            ),
            table="e.",
        )
        clause = (
            f"{where} AND e.predicted_class IS NOT NULL"
            if where
            else "WHERE e.predicted_class IS NOT NULL"
        )
        # Every served request has a compact row: each labelled request counts once (weight 1).
        sql = (
            "SELECT e.predicted_class, l.label, e.confidence, 1.0, e.timestamp "
            "FROM label_links k JOIN served_requests e ON e.internal_id = k.internal_id "
            f"JOIN labels l ON l.correlation_id = k.correlation_id {clause}"
        )
        rows = self._read("query labelled events", sql, params)
        columns = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
        return LabelledPredictions(
            predicted=np.asarray(columns[0], dtype=np.int64),
            labels=np.asarray(columns[1], dtype=np.int64),
            confidence=np.asarray(
                [np.nan if c is None else c for c in columns[2]], dtype=np.float64
            ),
            weights=np.asarray(columns[3], dtype=np.float64),
            timestamps=np.asarray(columns[4], dtype=np.float64),
        )

    def next_window_index(self) -> int:
        """One past the highest window index stored, for a restarted monitor to continue from
        (window indices restart at 0 in a new monitor process; reusing them would merge windows)."""
        sql = (
            "SELECT MAX(m) FROM (SELECT MAX(window_index) AS m FROM drift_results "
            "UNION ALL SELECT MAX(drift_window) FROM served_requests "
            "UNION ALL SELECT MAX(window_index) FROM concept_metrics)"
        )
        highest = self._read("next window index", sql, ())[0][0]
        return 0 if highest is None else int(highest) + 1

    def count_events(self) -> int:
        return int(self._read("count events", "SELECT COUNT(*) FROM inference_events", ())[0][0])

    def count_served(self, *, unwindowed_since: float | None = None) -> int:
        """Compact rows of served requests; with ``unwindowed_since``, only those newer than
        that time in no tested window yet (an open window's rows, after a restart)."""
        sql = "SELECT COUNT(*) FROM served_requests"
        params: tuple[float, ...] = ()
        if unwindowed_since is not None:
            sql += " WHERE drift_window IS NULL AND flagged = 0 AND timestamp > ?"
            params = (unwindowed_since,)
        return int(self._read("count served", sql, params)[0][0])

    def _read(self, operation: str, sql: str, params: Sequence[Any]) -> list[Any]:
        with self._lock:
            try:
                return self._connection().execute(sql, tuple(params)).fetchall()
            except (sqlite3.Error, OSError, StoreError) as exc:
                raise _as_store_error(operation, exc, StoreError) from exc

    # --- health -------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        # Never takes the I/O lock: a write stuck on a locked database must not make health
        # wait (the monitor answers health from its event loop). Each field is one read.
        reason, message, at = self._last_error or (None, None, None)
        return StoreHealth(
            path=str(self.path),
            degraded=self._consecutive_failures > 0,
            last_error=message,
            last_error_reason=reason,
            last_error_at=at,
            write_failures=self._failures,
            consecutive_failures=self._consecutive_failures,
            last_write_at=self._last_write_at,
            size_bytes=self.size_bytes(),
            synchronous=self.synchronous,
        )

    # --- alerts (issue 10): helpers and record types in the alert block at the end -----------

    def write_alert_transitions(self, transitions: Sequence[AlertTransitionLike]) -> WriteReceipt:
        """Store transitions and the incidents' latest state in one transaction (idempotent)."""
        rows = [_alert_rows(t) for t in transitions]
        return self._write("write alert transitions", lambda db: _write_alert_transitions(db, rows))

    def alert_incidents(
        self,
        *,
        state: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredIncident]:
        """Incidents, newest first, filtered by state (``open``/``resolved``), rule, start."""
        clauses: list[str] = []
        params: list[Any] = []
        for column, op, value in (
            ("state", "=", state),
            ("rule", "=", rule),
            ("opened_at", ">=", since),
        ):
            if value is not None:
                clauses.append(f"{column} {op} ?")
                params.append(value)
        where = ("WHERE " + " AND ".join(clauses)) if clauses else ""
        order = "ORDER BY opened_at DESC LIMIT ?"
        sql = f"SELECT {_INCIDENT_COLUMNS} FROM alert_incidents {where} {order}"
        rows = self._read("query alerts", sql, (*params, max(0, limit)))
        return [_stored_incident(row) for row in rows]

    def alert_incident(self, incident_id: str) -> StoredIncident | None:
        """The incident whose id is (or starts with) ``incident_id``; ``None`` if none or
        several match."""
        sql = f"SELECT {_INCIDENT_COLUMNS} FROM alert_incidents WHERE incident_id LIKE ? LIMIT 2"
        pattern = incident_id.replace("%", "").replace("_", "") + "%"
        rows = self._read("query alert", sql, (pattern,))
        return _stored_incident(rows[0]) if len(rows) == 1 else None

    def alert_transitions(self, incident_id: str) -> list[StoredTransition]:
        """An incident's transitions, oldest first."""
        sql = (
            "SELECT transition_id, incident_id, at, kind, notified, record FROM alert_transitions "
            "WHERE incident_id = ? ORDER BY at, rowid"
        )
        rows = self._read("query alert transitions", sql, (incident_id,))
        return [StoredTransition(r[0], r[1], r[2], r[3], bool(r[4]), _loads(r[5])) for r in rows]

    def write_maintenance(self, window: MaintenanceLike) -> None:
        """Store a maintenance window as it starts, and again when it is cleared."""
        row = _maintenance_row(window)
        sql = (
            "INSERT INTO maintenance_windows (maintenance_id, started_at, until, cleared_at, "
            "record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (maintenance_id) DO UPDATE SET "
            "cleared_at = excluded.cleared_at, record = excluded.record"
        )
        self._write("write maintenance", lambda db: db.execute(sql, row))

    def active_maintenance(self, *, at: float) -> dict[str, Any] | None:
        """The maintenance in force at ``at`` (the latest started), as stored."""
        sql = (
            "SELECT record FROM maintenance_windows WHERE started_at <= ? AND until > ? "
            "AND cleared_at IS NULL ORDER BY started_at DESC LIMIT 1"
        )
        rows = self._read("query maintenance", sql, (at, at))
        return _loads(rows[0][0]) if rows else None


# --- opening ----------------------------------------------------------------------------------


def _open(path: Path, *, synchronous: str, busy_s: float) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # isolation_level=None: no implicit transactions; every write is an explicit BEGIN IMMEDIATE
    # (takes the write lock up front, so the busy timeout applies instead of a deadlock error).
    db = sqlite3.connect(path, timeout=busy_s, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new database
        mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StoreError("error", f"could not switch {path} to WAL mode (got {mode!r})")
        db.execute(f"PRAGMA synchronous={synchronous}")
        db.execute(f"PRAGMA journal_size_limit={_WAL_LIMIT_BYTES}")
        _in_transaction(db, _create_schema)
    except BaseException:
        db.close()
        raise
    return db


def _create_schema(db: sqlite3.Connection) -> None:
    """Create what is missing and migrate older layouts, idempotently, in one transaction."""
    # Statement by statement: executescript() would COMMIT the open transaction first.
    for statement in (_SCHEMA + _ALERT_SCHEMA).split(";"):  # alert tables: see the alert block
        if statement.strip():
            db.execute(statement)
    found = _layout_version(db)
    if found > LAYOUT_VERSION:
        raise StoreError(
            "incompatible",
            f"store has layout version {found}, this code knows up to {LAYOUT_VERSION}",
        )
    for version, migrate in _MIGRATIONS:
        if found < version:
            migrate(db)
    db.execute("INSERT OR REPLACE INTO meta VALUES ('layout_version', ?)", (str(LAYOUT_VERSION),))
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))


def _layout_version(db: sqlite3.Connection) -> int:
    """0 for a new file; 1 for stores written before layouts were versioned."""
    found = db.execute("SELECT value FROM meta WHERE key = 'layout_version'").fetchone()
    if found is not None:
        return int(found[0])
    old = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return 0 if old is None else 1


def _backfill_served_requests(db: sqlite3.Connection) -> None:
    # Layout 2 keeps a compact row for every served request; give stored events theirs.
    db.execute(
        "INSERT OR IGNORE INTO served_requests (internal_id, correlation_id, timestamp, "
        "model_name, model_version, deployment, flagged, drift_window, predicted_class, "
        "confidence) SELECT internal_id, correlation_id, timestamp, model_name, model_version, "
        "deployment, flagged, drift_window, predicted_class, confidence FROM inference_events"
    )


# (layout version, migration from the one before); each step must be idempotent.
_MIGRATIONS: tuple[tuple[int, Callable[[sqlite3.Connection], None]], ...] = (
    (2, _backfill_served_requests),
)


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


def _as_store_error(operation: str, exc: BaseException, kind: type[StoreError]) -> StoreError:
    if isinstance(exc, kind):
        return exc
    return kind(_reason(exc), f"{operation}: {type(exc).__name__}: {exc}")


# --- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Table:
    name: str
    key: str
    columns: tuple[str, ...]


_EVENTS = _Table(
    "inference_events",
    "internal_id",
    (
        "internal_id",
        "timestamp",
        "correlation_id",
        "model_name",
        "model_version",
        "deployment",
        "flagged",
        "drift_window",
        "predicted_class",
        "confidence",
        "sampling_weight",
        "record",
    ),
)
_SERVED = _Table(
    "served_requests",
    "internal_id",
    (
        "internal_id",
        "correlation_id",
        "timestamp",
        "model_name",
        "model_version",
        "deployment",
        "flagged",
        "drift_window",
        "predicted_class",
        "confidence",
    ),
)
_DRIFT = _Table(
    "drift_results",
    "test_id",
    ("test_id", "tested_at", "window_index", "model_version", "detector", "is_drift", "record"),
)
_METRICS = _Table(
    "concept_metrics",
    "metrics_id",
    ("metrics_id", "computed_at", "tag", "window_index", "model_version", "record"),
)


def _event_row(r: InferenceRecord) -> tuple[Any, ...]:
    return (
        r.internal_id,
        r.timestamp,
        r.correlation_id,
        r.model_name,
        r.model_version,
        r.deployment,
        int(r.flagged),
        r.drift_window,
        r.outputs.predicted_class,
        r.outputs.confidence,
        r.sampling_weight,
        r.to_json(),
    )


def _drift_row(r: DriftTestRecord) -> tuple[Any, ...]:
    return (
        r.test_id,
        r.tested_at,
        r.window_index,
        r.model_version,
        r.detector,
        int(r.is_drift),
        r.to_json(),
    )


def _metrics_row(r: ConceptMetricsRecord) -> tuple[Any, ...]:
    return (r.metrics_id, r.computed_at, r.tag, r.window_index, r.model_version, r.to_json())


def _insert_unique(
    db: sqlite3.Connection, table: _Table, rows: list[tuple[Any, ...]]
) -> WriteReceipt:
    ids = [row[0] for row in rows]
    present = _existing_keys(db, table, ids)
    new_rows, seen = [], set(present)
    for row in rows:
        if row[0] not in seen:  # also drops a repeat within the same batch
            seen.add(row[0])
            new_rows.append(row)
    columns = ", ".join(table.columns)
    sql = f"INSERT OR IGNORE INTO {table.name} ({columns}) VALUES ({_marks(table.columns)})"
    db.executemany(sql, new_rows)
    return WriteReceipt(
        written_ids=tuple(row[0] for row in new_rows),
        already_present_ids=tuple(i for i in dict.fromkeys(ids) if i in present),
    )


def _served_from_row(row: Sequence[Any]) -> ServedRequest:
    iid, cid, ts, name, version, deployment, flagged, window, predicted, confidence = row
    return ServedRequest(
        internal_id=iid,
        correlation_id=cid,
        timestamp=float(ts),
        model_name=name,
        model_version=version,
        deployment=deployment,
        flagged=bool(flagged),
        drift_window=window,
        predicted_class=predicted,
        confidence=confidence,
    )


def _upsert_served(db: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    columns = ", ".join(_SERVED.columns)
    db.executemany(
        f"INSERT INTO served_requests ({columns}) VALUES ({_marks(_SERVED.columns)}) "
        "ON CONFLICT(internal_id) DO UPDATE SET "
        "drift_window = coalesce(served_requests.drift_window, excluded.drift_window)",
        rows,
    )


def _assign_window(db: sqlite3.Connection, window_index: int, ids: list[str]) -> int:
    changed = 0
    for chunk in _chunks(ids):
        changed += db.execute(
            f"UPDATE served_requests SET drift_window = ? WHERE drift_window IS NULL "
            f"AND internal_id IN ({_marks(chunk)})",
            (window_index, *chunk),
        ).rowcount
    return changed


def _existing_keys(db: sqlite3.Connection, table: _Table, ids: list[str]) -> set[str]:
    present: set[str] = set()
    for chunk in _chunks(ids):
        sql = f"SELECT {table.key} FROM {table.name} WHERE {table.key} IN ({_marks(chunk)})"
        present.update(row[0] for row in db.execute(sql, chunk))
    return present


def _event_filters(query: EventQuery, *, table: str = "") -> tuple[str, tuple[Any, ...]]:
    clauses: list[str] = []
    params: list[Any] = []
    for column, op, value in (
        ("correlation_id", "=", query.correlation_id),
        ("timestamp", ">=", query.since),
        ("timestamp", "<", query.until),
        ("model_version", "=", query.model_version),
        ("drift_window", "=", query.drift_window),
    ):
        if value is not None:
            clauses.append(f"{table}{column} {op} ?")
            params.append(value)
    if query.flagged_only:
        clauses.append(f"{table}flagged = 1")
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _as_inference(text: str) -> InferenceRecord:
    record = record_from_json(text)
    assert isinstance(record, InferenceRecord)
    return record


def _loads(text: str) -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads(text)
    return data


def _marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def _chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start : start + _SQL_CHUNK]


def _count(db: sqlite3.Connection, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --- retention helpers ------------------------------------------------------------------------


def _delete_old(db: sqlite3.Connection, cutoff: float | None) -> int:
    if cutoff is None:
        return 0
    deleted = db.execute("DELETE FROM inference_events WHERE timestamp < ?", (cutoff,)).rowcount
    db.execute("DELETE FROM served_requests WHERE timestamp < ?", (cutoff,))
    db.execute("DELETE FROM drift_results WHERE tested_at < ?", (cutoff,))
    db.execute("DELETE FROM labels WHERE received_at < ?", (cutoff,))
    db.execute("DELETE FROM label_links WHERE received_at < ?", (cutoff,))
    db.execute("DELETE FROM concept_metrics WHERE computed_at < ?", (cutoff,))
    return int(deleted)


def _used_bytes(db: sqlite3.Connection) -> int:
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    size = db.execute("PRAGMA page_size").fetchone()[0]
    return int((pages - free) * size)


def _delete_oldest_requests(db: sqlite3.Connection, n: int) -> int:
    """Delete the ``n`` oldest served requests and every stored event as old; returns how many
    stored events went (every stored event has a served row, so the two age together)."""
    found = db.execute(
        "SELECT timestamp FROM served_requests ORDER BY timestamp ASC LIMIT 1 OFFSET ?", (n - 1,)
    ).fetchone()
    if found is None:
        return 0
    db.execute("DELETE FROM served_requests WHERE timestamp <= ?", (found[0],))
    return int(
        db.execute("DELETE FROM inference_events WHERE timestamp <= ?", (found[0],)).rowcount
    )


# --- labels -----------------------------------------------------------------------------------


def _attach_labels(db: sqlite3.Connection, labels: Sequence[LabelRecord]) -> list[LabelAnswer]:
    ids = list(dict.fromkeys(label.correlation_id for label in labels))
    events = _events_by_correlation(db, ids)
    existing = _labels_by_correlation(db, ids)
    answers = []
    for label in labels:
        answer = _judge(
            label, events.get(label.correlation_id, []), existing.get(label.correlation_id)
        )
        if answer.status == "accepted":
            _insert_label(db, label, answer.internal_ids)
            existing[label.correlation_id] = label
        answers.append(answer)
    return answers


def _judge(label: LabelRecord, events: list[_Event], existing: LabelRecord | None) -> LabelAnswer:
    cid = label.correlation_id
    if existing is not None:
        # Never echo the stored label or its source: the answer goes back to the caller.
        return LabelAnswer(cid, "duplicate_label", "already labelled; the first label stands")
    if not events:
        detail = (
            "no served request has this correlation id (never served, not yet recorded by the "
            "monitor, or past retention); a label for a recent request may be retried later"
        )
        return LabelAnswer(cid, "unknown_correlation_id", detail)
    groups: dict[tuple[str, str, str], list[_Event]] = {}
    for event in events:
        groups.setdefault(event.group, []).append(event)
    reused = max(len(g) for g in groups.values())
    if reused > 1:
        detail = f"{reused} stored requests to the same model share this correlation id; not joined"
        return LabelAnswer(cid, "ambiguous", detail)
    windows = tuple(sorted({e.drift_window for e in events if e.drift_window is not None}))
    return LabelAnswer(
        cid,
        "accepted",
        f"joined to {len(events)} event(s)",
        internal_ids=tuple(e.internal_id for e in events),
        drift_windows=windows,
    )


def _events_by_correlation(db: sqlite3.Connection, ids: list[str]) -> dict[str, list[_Event]]:
    found: dict[str, list[_Event]] = {}
    for chunk in _chunks(ids):
        sql = (
            "SELECT correlation_id, internal_id, coalesce(deployment, ''), model_name, "
            "model_version, drift_window FROM served_requests "
            f"WHERE correlation_id IN ({_marks(chunk)})"
        )
        for cid, iid, deployment, name, version, window in db.execute(sql, chunk):
            found.setdefault(cid, []).append(_Event(iid, (deployment, name, version), window))
    return found


def _labels_by_correlation(db: sqlite3.Connection, ids: list[str]) -> dict[str, LabelRecord]:
    found: dict[str, LabelRecord] = {}
    for chunk in _chunks(ids):
        sql = f"SELECT record FROM labels WHERE correlation_id IN ({_marks(chunk)})"
        for (text,) in db.execute(sql, chunk):
            label = LabelRecord.from_dict(_loads(text))
            found[label.correlation_id] = label
    return found


def _insert_label(
    db: sqlite3.Connection, label: LabelRecord, internal_ids: tuple[str, ...]
) -> None:
    db.execute(
        "INSERT INTO labels (correlation_id, label, received_at, source, record) "
        "VALUES (?, ?, ?, ?, ?)",
        (label.correlation_id, label.label, label.received_at, label.source, label.to_json()),
    )
    db.executemany(
        "INSERT OR IGNORE INTO label_links (internal_id, correlation_id, received_at) "
        "VALUES (?, ?, ?)",
        [(iid, label.correlation_id, label.received_at) for iid in internal_ids],
    )


# === Alerts: incidents, their transitions, maintenance ========================================
# A block of its own (issue 10). Alert documents are versioned by the alerts package's own
# schema (``serve_drift/alerts/alert-v1.schema.json``), not by the event schema: the store keeps
# them as JSON beside a few indexed columns and never interprets more of them than that. The
# store cannot import the alerts package (same layer), so it takes any object with the
# attributes below; ``serve_drift.alerts.Transition`` and ``MaintenanceWindow`` have them.

_ALERT_SCHEMA = """
CREATE TABLE IF NOT EXISTS alert_incidents (
    incident_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    resolved_at REAL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_incidents_by_time ON alert_incidents (opened_at);
CREATE INDEX IF NOT EXISTS alert_incidents_open ON alert_incidents (rule) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS alert_transitions (
    transition_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    notified INTEGER NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_transitions_by_incident ON alert_transitions (incident_id, at);
CREATE TABLE IF NOT EXISTS maintenance_windows (
    maintenance_id TEXT PRIMARY KEY,
    started_at REAL NOT NULL,
    until REAL NOT NULL,
    cleared_at REAL,
    record TEXT NOT NULL
);
"""


class AlertTransitionLike(Protocol):
    """What the store needs of an alert transition."""

    @property
    def transition_id(self) -> str: ...
    @property
    def incident_id(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def at(self) -> float: ...
    @property
    def notify(self) -> bool: ...
    def to_json(self) -> str: ...
    def incident_json(self) -> str: ...


class MaintenanceLike(Protocol):
    """What the store needs of a maintenance window."""

    @property
    def maintenance_id(self) -> str: ...
    @property
    def started_at(self) -> float: ...
    @property
    def until(self) -> float: ...
    @property
    def cleared_at(self) -> float | None: ...
    def to_dict(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class StoredIncident:
    """An incident as last written; ``document`` is its JSON (alert schema v1)."""

    incident_id: str
    rule: str
    severity: str
    state: str
    opened_at: float
    updated_at: float
    resolved_at: float | None
    document: dict[str, Any]


@dataclass(frozen=True)
class StoredTransition:
    transition_id: str
    incident_id: str
    at: float
    kind: str
    notified: bool
    document: dict[str, Any]


def _write_alert_transitions(
    db: sqlite3.Connection, rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]]
) -> WriteReceipt:
    written: list[str] = []
    present: list[str] = []
    for incident_row, transition_row in rows:
        cursor = db.execute(
            "INSERT OR IGNORE INTO alert_transitions "
            "(transition_id, incident_id, at, kind, notified, record) VALUES (?, ?, ?, ?, ?, ?)",
            transition_row,
        )
        (written if cursor.rowcount else present).append(transition_row[0])
        # The newest state of an incident wins, whatever order writes arrive in.
        db.execute(
            "INSERT INTO alert_incidents (incident_id, rule, severity, state, opened_at, "
            "updated_at, resolved_at, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (incident_id) DO UPDATE SET state = excluded.state, "
            "updated_at = excluded.updated_at, resolved_at = excluded.resolved_at, "
            "record = excluded.record WHERE excluded.updated_at >= alert_incidents.updated_at",
            incident_row,
        )
    return WriteReceipt(written_ids=tuple(written), already_present_ids=tuple(present))


def _alert_rows(transition: AlertTransitionLike) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    incident_text = transition.incident_json()
    incident = _loads(incident_text)
    incident_row = (
        transition.incident_id,
        str(incident["rule"]),
        str(incident["severity"]),
        str(incident["state"]),
        float(incident["opened_at"]),
        float(incident["updated_at"]),
        incident.get("resolved_at"),
        incident_text,
    )
    transition_row = (
        transition.transition_id,
        transition.incident_id,
        transition.at,
        transition.kind,
        int(transition.notify),
        transition.to_json(),
    )
    return incident_row, transition_row


_INCIDENT_COLUMNS = "incident_id, rule, severity, state, opened_at, updated_at, resolved_at, record"


def _stored_incident(row: Sequence[Any]) -> StoredIncident:
    return StoredIncident(
        incident_id=row[0],
        rule=row[1],
        severity=row[2],
        state=row[3],
        opened_at=row[4],
        updated_at=row[5],
        resolved_at=row[6],
        document=_loads(row[7]),
    )


def _maintenance_row(window: MaintenanceLike) -> tuple[Any, ...]:
    import json

    record = json.dumps(window.to_dict(), sort_keys=True)
    return (window.maintenance_id, window.started_at, window.until, window.cleared_at, record)
