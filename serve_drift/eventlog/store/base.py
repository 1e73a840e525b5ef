"""The event store's behaviour, once for both backends: writes, retention, queries, health.

A backend (:class:`~serve_drift.eventlog.store.sqlite.EventStore`,
:class:`~serve_drift.eventlog.store.postgres.PostgresEventStore`) says how to connect, how a
transaction starts, what its failures mean and how big the store is; the rest is here.

**Exactly once.** Every write is one transaction and returns only after the commit; ids are
unique and inserts are ``ON CONFLICT DO NOTHING``, so a retried batch stores nothing twice
(:class:`~serve_drift.eventlog.store.contract.WriteReceipt` tells new from already present).

**Failure.** A failed write rolls back, marks the store degraded (:meth:`BaseEventStore.health`)
and raises :class:`~serve_drift.eventlog.store.contract.StoreWriteError` with a short ``reason``;
the caller counts those events as dropped. A later successful write clears the degraded flag.
If the store cannot even be opened (or its connection is lost), every operation raises the same
way and the next one connects again. A lost connection is retried once at once, on a fresh
connection, for the writes that are idempotent (all but labels): a retry after a commit whose
answer was lost finds its ids already present.

**Retention.** By age (``max_age_s``) and by size (``max_bytes``: the oldest events are deleted
until the live data is under 90 % of it). Checked at most every ``retention_interval_s`` after
writes, or on demand with :meth:`BaseEventStore.enforce_retention`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from serve_drift.eventlog.schema import (
    ConceptMetricsRecord,
    DriftTestRecord,
    InferenceRecord,
    LabelRecord,
)
from serve_drift.eventlog.store import sql
from serve_drift.eventlog.store.contract import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    AlertTransitionLike,
    EventQuery,
    LabelAnswer,
    LabelledPredictions,
    MaintenanceLike,
    RetentionReport,
    ServedRequest,
    StoredIncident,
    StoredTransition,
    StoreError,
    StoreHealth,
    StoreWriteError,
    WriteReceipt,
)
from serve_drift.eventlog.store.sql import Db, Dialect

T = TypeVar("T")

_SIZE_TARGET = 0.9  # delete down to 90 % of max_bytes, so retention does not run on every write


class BaseEventStore:
    """Inference events, drift results, labels, concept metrics and alert history.

    Thread-safe: one connection, used under a lock. Calls block on I/O: from asyncio code,
    call them in a worker thread. Subclasses set ``dialect``, ``backend`` and ``_errors`` and
    implement the hooks below the lifecycle section.
    """

    dialect: Dialect
    backend: str
    _errors: tuple[type[BaseException], ...] = (OSError, StoreError)

    def __init__(
        self,
        *,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        busy_timeout_s: float = 5.0,
        retention_interval_s: float = 60.0,
    ) -> None:
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.busy_timeout_s = busy_timeout_s
        self.retention_interval_s = retention_interval_s
        self._lock = threading.RLock()
        self._db: Any = None
        self._opened_before = False
        self._last_retention = time.monotonic()
        self._failures = 0
        self._consecutive_failures = 0
        self._reconnects = 0
        self._last_error: tuple[str, str, float] | None = None
        self._last_write_at: float | None = None
        self._closed = False

    def _open_now(self) -> None:
        """Open at construction; a failure is retried by the next operation (degraded)."""
        try:
            with self._lock:
                self._connection()
        except self._errors as exc:
            self._record_failure("open", exc)

    # --- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._drop_connection()

    def __enter__(self) -> BaseEventStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _connection(self) -> Any:
        if self._closed:
            raise StoreError("closed", f"event store {self.location} is closed")
        if self._db is None:
            self._db = self._open()
            if self._opened_before:
                self._reconnects += 1
            self._opened_before = True
        return self._db

    def _drop_connection(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            with contextlib.suppress(Exception):  # a lost connection may fail to close
                db.close()

    # --- backend hooks ------------------------------------------------------------------------

    @property
    def location(self) -> str:
        """Where the store is, safe to log (no password)."""
        raise NotImplementedError

    def _open(self) -> Any:
        """A new connection, with the schema created or migrated."""
        raise NotImplementedError

    def _transaction(self, db: Any, work: Callable[[Any], T]) -> T:
        """``work(db)`` in one transaction: committed, or rolled back and raised."""
        raise NotImplementedError

    def _reason(self, exc: BaseException) -> str:
        return exc.reason if isinstance(exc, StoreError) else "error"

    def _lost(self, exc: BaseException) -> bool:
        """Whether ``exc`` means the connection is unusable (reconnect next time)."""
        return False

    def _describe(self, exc: BaseException) -> str:
        return str(exc) if isinstance(exc, StoreError) else f"{type(exc).__name__}: {exc}"

    def _used_bytes(self, db: Any) -> int:
        raise NotImplementedError

    def _reclaim(self) -> None:
        """Give space freed by retention back (or make it reusable); a failure is recorded."""
        try:
            self._vacuum(self._connection())
        except self._errors as exc:
            self._record_failure("vacuum", exc)

    def _vacuum(self, db: Any) -> None:
        """The backend's vacuum, outside any transaction."""

    def _synchronous(self) -> str:
        raise NotImplementedError

    def _measure_size(self) -> int:
        """Measure the size now (``size_bytes`` may answer from the last measurement)."""
        return self.size_bytes()

    def size_bytes(self) -> int:
        """Bytes the store takes on disk."""
        raise NotImplementedError

    # --- writes -------------------------------------------------------------------------------

    def write_batch(self, records: Sequence[InferenceRecord]) -> WriteReceipt:
        """Store inference events in one transaction; returns after the commit.

        Each event's compact :class:`ServedRequest` row is written (or given its window) in the
        same transaction. Raises :class:`StoreWriteError` (nothing committed) on failure.
        """
        rows = [sql.event_row(r) for r in records]  # serialise before taking the write lock
        served = [ServedRequest.of(r).row() for r in records]

        def work(db: Db) -> WriteReceipt:
            sql.upsert_served(db, served)
            return sql.insert_unique(db, sql.EVENTS, rows)

        receipt = self._write("write events", work)
        self._maybe_enforce_retention()
        return receipt

    def record_served(self, requests: Sequence[ServedRequest]) -> WriteReceipt:
        """Store compact rows of served requests (idempotent by ``internal_id``)."""
        rows = [r.row() for r in requests]
        receipt = self._write("record served", lambda db: sql.insert_unique(db, sql.SERVED, rows))
        self._maybe_enforce_retention()
        return receipt

    def assign_window(self, window_index: int, internal_ids: Sequence[str]) -> int:
        """Record that these requests were in drift window ``window_index`` (the first window
        that contained a row keeps it); returns how many rows changed."""
        ids = list(dict.fromkeys(internal_ids))
        return self._write("assign window", lambda db: sql.assign_window(db, window_index, ids))

    def write_drift_results(self, records: Sequence[DriftTestRecord]) -> WriteReceipt:
        rows = [sql.drift_row(r) for r in records]
        return self._write("write drift results", lambda db: sql.insert_unique(db, sql.DRIFT, rows))

    def write_concept_metrics(self, records: Sequence[ConceptMetricsRecord]) -> WriteReceipt:
        rows = [sql.metrics_row(r) for r in records]
        return self._write(
            "write concept metrics", lambda db: sql.insert_unique(db, sql.METRICS, rows)
        )

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
        # Not retried on a lost connection: a label committed just before the loss would
        # come back as "duplicate_label" to the caller who sent it.
        work = lambda db: sql.attach_labels(db, labels)  # noqa: E731
        return self._write("attach labels", work, retry=False)

    def _write(self, operation: str, work: Callable[[Any], T], *, retry: bool = True) -> T:
        with self._lock:
            try:
                result = self._attempt(work, retry=retry)
            except self._errors as exc:
                self._record_failure(operation, exc)
                raise self._as_store_error(operation, exc, StoreWriteError) from exc
            self._consecutive_failures = 0
            self._last_write_at = time.time()
            return result

    def _attempt(self, work: Callable[[Any], T], *, retry: bool) -> T:
        try:
            return self._transaction(self._connection(), work)
        except self._errors as exc:
            if not self._lost(exc):
                raise
            self._drop_connection()
            if not retry:
                raise
        return self._transaction(self._connection(), work)  # once, on a fresh connection

    def _record_failure(self, operation: str, exc: BaseException) -> None:
        self._failures += 1
        self._consecutive_failures += 1
        self._last_error = (self._reason(exc), f"{operation}: {self._describe(exc)}", time.time())

    def _as_store_error(
        self, operation: str, exc: BaseException, kind: type[StoreError]
    ) -> StoreError:
        if isinstance(exc, kind):
            return exc
        return kind(self._reason(exc), f"{operation}: {self._describe(exc)}")

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
            cutoff = self._cutoff(now)
            by_age = self._write("retention by age", lambda db: sql.delete_old(db, cutoff))
            by_size = self._write("retention by size", self._shrink) if self.max_bytes else 0
            if by_age or by_size:
                self._reclaim()
            return RetentionReport(by_age, by_size, self._measure_size())

    def _cutoff(self, now: float | None) -> float | None:
        if self.max_age_s is None:
            return None
        return (time.time() if now is None else now) - self.max_age_s

    def _shrink(self, db: Db) -> int:
        assert self.max_bytes is not None
        target = int(self.max_bytes * _SIZE_TARGET)
        deleted = 0
        for _ in range(20):  # each round deletes an estimate of the excess; rarely more than 2
            used, rows = self._used_bytes(db), sql.count(db, "served_requests")
            # Start only above max_bytes; once started, go down to the lower target.
            if rows == 0 or used <= (self.max_bytes if deleted == 0 else target):
                break
            excess_rows = math.ceil((used - target) / max(1.0, used / rows))
            deleted += sql.delete_oldest_requests(db, max(1, min(rows, excess_rows)))
        return deleted

    # --- reads --------------------------------------------------------------------------------

    def query(self, query: EventQuery) -> list[InferenceRecord]:
        """Inference events matching every filter in ``query``, newest first."""
        where, params = sql.event_filters(query)
        order = f"ORDER BY timestamp DESC, {self.dialect.order_key} DESC LIMIT ?"
        statement = f"SELECT record FROM inference_events {where} {order}"
        rows = self._read("query events", statement, (*params, max(0, query.limit)))
        return [sql.as_inference(row[0]) for row in rows]

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
        order = f"ORDER BY tested_at DESC, {self.dialect.order_key} DESC LIMIT ?"
        statement = f"SELECT record FROM drift_results {where} {order}"
        rows = self._read("query drift results", statement, (*params, limit))
        return [DriftTestRecord.from_dict(sql.loads(row[0])) for row in rows]

    def concept_metrics(
        self, *, limit: int = 100, tag: str | None = None
    ) -> list[ConceptMetricsRecord]:
        """Concept-drift metrics records (feedback windows, sentinel runs), newest first."""
        where, params = ("WHERE tag = ?", (tag,)) if tag is not None else ("", ())
        order = f"ORDER BY computed_at DESC, {self.dialect.order_key} DESC LIMIT ?"
        statement = f"SELECT record FROM concept_metrics {where} {order}"
        rows = self._read("query concept metrics", statement, (*params, limit))
        return [ConceptMetricsRecord.from_dict(sql.loads(row[0])) for row in rows]

    def served(self, correlation_ids: Iterable[str]) -> dict[str, list[ServedRequest]]:
        """The compact rows of the requests served under these correlation ids."""
        ids = list(dict.fromkeys(correlation_ids))
        found: dict[str, list[ServedRequest]] = {}
        columns = ", ".join(sql.SERVED.columns)
        for chunk in sql.chunks(ids):
            statement = (
                f"SELECT {columns} FROM served_requests WHERE correlation_id IN "
                f"({sql.marks(chunk)})"
            )
            for row in self._read("query served", statement, tuple(chunk)):
                request = sql.served_from_row(row)
                found.setdefault(request.correlation_id, []).append(request)
        return found

    def labels(self, correlation_ids: Iterable[str]) -> dict[str, LabelRecord]:
        """Stored labels of these correlation ids (absent ids are left out)."""
        ids = list(dict.fromkeys(correlation_ids))
        return self._read_with("query labels", lambda db: sql.labels_by_correlation(db, ids))

    def labelled_predictions(
        self,
        *,
        window_index: int | None = None,
        model_version: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> LabelledPredictions:
        """Stored events joined to their labels, filtered like :meth:`query` (no limit)."""
        where, params = sql.event_filters(
            EventQuery(
                drift_window=window_index, model_version=model_version, since=since, until=until
            ),
            table="e.",
        )
        rows = self._read("query labelled events", sql.labelled_sql(where), params)
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
        highest = self._read("next window index", sql.NEXT_WINDOW_SQL, ())[0][0]
        return 0 if highest is None else int(highest) + 1

    def count_events(self) -> int:
        return int(self._read("count events", "SELECT COUNT(*) FROM inference_events", ())[0][0])

    def count_served(self, *, unwindowed_since: float | None = None) -> int:
        """Compact rows of served requests; with ``unwindowed_since``, only those newer than
        that time in no tested window yet (an open window's rows, after a restart)."""
        statement = "SELECT COUNT(*) FROM served_requests"
        params: tuple[float, ...] = ()
        if unwindowed_since is not None:
            statement += " WHERE drift_window IS NULL AND flagged = 0 AND timestamp > ?"
            params = (unwindowed_since,)
        return int(self._read("count served", statement, params)[0][0])

    def _read(self, operation: str, statement: str, params: Sequence[Any]) -> list[Any]:
        return self._read_with(
            operation, lambda db: list(db.execute(statement, tuple(params)).fetchall())
        )

    def _read_with(self, operation: str, work: Callable[[Any], T]) -> T:
        with self._lock:
            try:
                try:
                    return work(self._connection())
                except self._errors as exc:
                    if not self._lost(exc):
                        raise
                    self._drop_connection()  # reads are always safe to repeat: once more
                return work(self._connection())
            except self._errors as exc:
                raise self._as_store_error(operation, exc, StoreError) from exc

    # --- health -------------------------------------------------------------------------------

    def health(self) -> StoreHealth:
        # Never takes the I/O lock: a write stuck on a locked database must not make health
        # wait (the monitor answers health from its event loop). Each field is one read.
        reason, message, at = self._last_error or (None, None, None)
        return StoreHealth(
            path=self.location,
            degraded=self._consecutive_failures > 0,
            last_error=message,
            last_error_reason=reason,
            last_error_at=at,
            write_failures=self._failures,
            consecutive_failures=self._consecutive_failures,
            last_write_at=self._last_write_at,
            size_bytes=self.size_bytes(),
            synchronous=self._synchronous(),
            backend=self.backend,
            reconnects=self._reconnects,
        )

    # --- alerts (issue 10) --------------------------------------------------------------------

    def write_alert_transitions(self, transitions: Sequence[AlertTransitionLike]) -> WriteReceipt:
        """Store transitions and the incidents' latest state in one transaction (idempotent)."""
        rows = [sql.alert_rows(t) for t in transitions]
        return self._write(
            "write alert transitions", lambda db: sql.write_alert_transitions(db, rows)
        )

    def alert_incidents(
        self,
        *,
        state: str | None = None,
        rule: str | None = None,
        since: float | None = None,
        limit: int = 100,
    ) -> list[StoredIncident]:
        """Incidents, newest first, filtered by state (``open``/``resolved``), rule, start."""
        where, params = sql.incident_filters(state=state, rule=rule, since=since)
        order = "ORDER BY opened_at DESC LIMIT ?"
        statement = f"SELECT {sql.INCIDENT_COLUMNS} FROM alert_incidents {where} {order}"
        rows = self._read("query alerts", statement, (*params, max(0, limit)))
        return [sql.stored_incident(row) for row in rows]

    def alert_incident(self, incident_id: str) -> StoredIncident | None:
        """The incident whose id is (or starts with) ``incident_id``; ``None`` if none or
        several match."""
        statement = (
            f"SELECT {sql.INCIDENT_COLUMNS} FROM alert_incidents WHERE incident_id LIKE ? LIMIT 2"
        )
        pattern = incident_id.replace("%", "").replace("_", "") + "%"
        rows = self._read("query alert", statement, (pattern,))
        return sql.stored_incident(rows[0]) if len(rows) == 1 else None

    def alert_transitions(self, incident_id: str) -> list[StoredTransition]:
        """An incident's transitions, oldest first."""
        statement = (
            "SELECT transition_id, incident_id, at, kind, notified, record FROM alert_transitions "
            f"WHERE incident_id = ? ORDER BY at, {self.dialect.order_key}"
        )
        rows = self._read("query alert transitions", statement, (incident_id,))
        return [StoredTransition(r[0], r[1], r[2], r[3], bool(r[4]), sql.loads(r[5])) for r in rows]

    def write_maintenance(self, window: MaintenanceLike) -> None:
        """Store a maintenance window as it starts, and again when it is cleared."""
        row = sql.maintenance_row(window)
        self._write("write maintenance", lambda db: db.execute(sql.MAINTENANCE_UPSERT, row))

    def active_maintenance(self, *, at: float) -> dict[str, Any] | None:
        """The maintenance in force at ``at`` (the latest started), as stored."""
        statement = (
            "SELECT record FROM maintenance_windows WHERE started_at <= ? AND until > ? "
            "AND cleared_at IS NULL ORDER BY started_at DESC LIMIT 1"
        )
        rows = self._read("query maintenance", statement, (at, at))
        return sql.loads(rows[0][0]) if rows else None

    def write_reference_change(self, change: Mapping[str, Any]) -> bool:
        """Store one reference change; False when it repeats the latest stored one.

        A monitor restarted by Serve applies its last ``user_config`` again: a change identical
        to the latest (same path, hashes, outcome and author) is not stored twice. Changes are
        kept forever (a handful per deployment), outside event retention.
        """
        latest_sql = (
            "SELECT record FROM reference_changes "
            f"ORDER BY at DESC, {self.dialect.order_key} DESC LIMIT 1"
        )

        def work(db: Db) -> bool:
            latest = db.execute(latest_sql).fetchone()
            if latest is not None and sql.same_change(sql.loads(latest[0]), change):
                return False
            db.execute(sql.REFERENCE_CHANGE_INSERT, sql.reference_change_row(change))
            return True

        return self._write("write reference change", work)

    def reference_changes(self, *, limit: int = 50) -> list[dict[str, Any]]:
        """Stored reference changes, oldest first (the latest ``limit``)."""
        statement = (
            "SELECT record FROM reference_changes "
            f"ORDER BY at DESC, {self.dialect.order_key} DESC LIMIT ?"
        )
        rows = self._read("query reference changes", statement, (max(0, limit),))
        return [sql.loads(row[0]) for row in reversed(rows)]
