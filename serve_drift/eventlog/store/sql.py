"""The store's SQL, written once for both backends.

Statements use ``?`` placeholders and only what SQLite (3.24+) and PostgreSQL both accept
(``INSERT ... ON CONFLICT``, partial indexes, ``excluded``); the PostgreSQL connection turns the
placeholders into ``%s``. What differs (column types, the tie-break column for "newest first")
is a :class:`Dialect`. Every function here runs inside the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from serve_drift.eventlog.schema import (
    ConceptMetricsRecord,
    DriftTestRecord,
    InferenceRecord,
    LabelRecord,
    record_from_json,
)
from serve_drift.eventlog.store.contract import (
    AlertTransitionLike,
    EventQuery,
    LabelAnswer,
    MaintenanceLike,
    ServedRequest,
    StoredIncident,
    WriteReceipt,
)

_SQL_CHUNK = 500  # ids per IN (...) query: well under both backends' parameter limits


class Db(Protocol):
    """A connection as the SQL here uses it (``sqlite3.Connection`` is one)."""

    def execute(self, sql: str, params: Any = (), /) -> Any: ...
    def executemany(self, sql: str, rows: Any, /) -> Any: ...


@dataclass(frozen=True)
class Dialect:
    """What the two backends spell differently.

    ``order_key`` breaks ties in "newest first": SQLite's implicit ``rowid``, PostgreSQL's
    identity column ``seq`` (``seq_column`` adds it to the tables that are listed in order).
    """

    name: str
    real: str
    integer: str
    seq_column: str
    order_key: str


SQLITE = Dialect("sqlite", real="REAL", integer="INTEGER", seq_column="", order_key="rowid")
POSTGRES = Dialect(
    "postgres",
    real="DOUBLE PRECISION",
    integer="BIGINT",
    seq_column="seq BIGINT GENERATED ALWAYS AS IDENTITY,",
    order_key="seq",
)


@dataclass(frozen=True)
class Table:
    name: str
    key: str
    columns: tuple[str, ...]


_SERVED_COLUMNS = (
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
)
EVENTS = Table(
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
SERVED = Table("served_requests", "internal_id", _SERVED_COLUMNS)
DRIFT = Table(
    "drift_results",
    "test_id",
    ("test_id", "tested_at", "window_index", "model_version", "detector", "is_drift", "record"),
)
METRICS = Table(
    "concept_metrics",
    "metrics_id",
    ("metrics_id", "computed_at", "tag", "window_index", "model_version", "record"),
)
# Every table the store owns, for sizes and for tests; the alert tables are issue 10's.
TABLES = (
    "meta",
    "inference_events",
    "drift_results",
    "labels",
    "label_links",
    "served_requests",
    "concept_metrics",
    "alert_incidents",
    "alert_transitions",
    "maintenance_windows",
)


# --- rows -------------------------------------------------------------------------------------


def event_row(r: InferenceRecord) -> tuple[Any, ...]:
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


def drift_row(r: DriftTestRecord) -> tuple[Any, ...]:
    return (
        r.test_id,
        r.tested_at,
        r.window_index,
        r.model_version,
        r.detector,
        int(r.is_drift),
        r.to_json(),
    )


def metrics_row(r: ConceptMetricsRecord) -> tuple[Any, ...]:
    return (r.metrics_id, r.computed_at, r.tag, r.window_index, r.model_version, r.to_json())


def served_from_row(row: Sequence[Any]) -> ServedRequest:
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


def as_inference(text: str) -> InferenceRecord:
    record = record_from_json(text)
    assert isinstance(record, InferenceRecord)
    return record


def loads(text: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(text)
    return data


def marks(items: Sequence[Any]) -> str:
    return ", ".join("?" * len(items))


def chunks(items: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(items), _SQL_CHUNK):
        yield items[start : start + _SQL_CHUNK]


def count(db: Db, table: str) -> int:
    return int(db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# --- writes -----------------------------------------------------------------------------------


def insert_unique(db: Db, table: Table, rows: list[tuple[Any, ...]]) -> WriteReceipt:
    ids = [row[0] for row in rows]
    present = _existing_keys(db, table, ids)
    new_rows, seen = [], set(present)
    for row in rows:
        if row[0] not in seen:  # also drops a repeat within the same batch
            seen.add(row[0])
            new_rows.append(row)
    columns = ", ".join(table.columns)
    sql = (
        f"INSERT INTO {table.name} ({columns}) VALUES ({marks(table.columns)}) "
        "ON CONFLICT DO NOTHING"
    )
    if new_rows:
        db.executemany(sql, new_rows)
    return WriteReceipt(
        written_ids=tuple(row[0] for row in new_rows),
        already_present_ids=tuple(i for i in dict.fromkeys(ids) if i in present),
    )


def upsert_served(db: Db, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    columns = ", ".join(SERVED.columns)
    db.executemany(
        f"INSERT INTO served_requests ({columns}) VALUES ({marks(SERVED.columns)}) "
        "ON CONFLICT (internal_id) DO UPDATE SET "
        "drift_window = coalesce(served_requests.drift_window, excluded.drift_window)",
        rows,
    )


def assign_window(db: Db, window_index: int, ids: list[str]) -> int:
    changed = 0
    for chunk in chunks(ids):
        changed += db.execute(
            f"UPDATE served_requests SET drift_window = ? WHERE drift_window IS NULL "
            f"AND internal_id IN ({marks(chunk)})",
            (window_index, *chunk),
        ).rowcount
    return changed


def _existing_keys(db: Db, table: Table, ids: list[str]) -> set[str]:
    present: set[str] = set()
    for chunk in chunks(ids):
        sql = f"SELECT {table.key} FROM {table.name} WHERE {table.key} IN ({marks(chunk)})"
        present.update(row[0] for row in db.execute(sql, chunk).fetchall())
    return present


# --- reads ------------------------------------------------------------------------------------


def event_filters(query: EventQuery, *, table: str = "") -> tuple[str, tuple[Any, ...]]:
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


def labelled_sql(where: str) -> str:
    clause = (
        f"{where} AND e.predicted_class IS NOT NULL"
        if where
        else "WHERE e.predicted_class IS NOT NULL"
    )
    # Every served request has a compact row: each labelled request counts once (weight 1).
    return (
        "SELECT e.predicted_class, l.label, e.confidence, 1.0, e.timestamp "
        "FROM label_links k JOIN served_requests e ON e.internal_id = k.internal_id "
        f"JOIN labels l ON l.correlation_id = k.correlation_id {clause}"
    )


NEXT_WINDOW_SQL = (
    "SELECT MAX(m) FROM (SELECT MAX(window_index) AS m FROM drift_results "
    "UNION ALL SELECT MAX(drift_window) FROM served_requests "
    "UNION ALL SELECT MAX(window_index) FROM concept_metrics) AS highest"
)


# --- retention --------------------------------------------------------------------------------


def delete_old(db: Db, cutoff: float | None) -> int:
    if cutoff is None:
        return 0
    deleted = db.execute("DELETE FROM inference_events WHERE timestamp < ?", (cutoff,)).rowcount
    db.execute("DELETE FROM served_requests WHERE timestamp < ?", (cutoff,))
    db.execute("DELETE FROM drift_results WHERE tested_at < ?", (cutoff,))
    db.execute("DELETE FROM labels WHERE received_at < ?", (cutoff,))
    db.execute("DELETE FROM label_links WHERE received_at < ?", (cutoff,))
    db.execute("DELETE FROM concept_metrics WHERE computed_at < ?", (cutoff,))
    return int(deleted)


def delete_oldest_requests(db: Db, n: int) -> int:
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


@dataclass(frozen=True)
class _Event:
    internal_id: str
    group: tuple[str, str, str]
    drift_window: int | None


def attach_labels(db: Db, labels: Sequence[LabelRecord]) -> list[LabelAnswer]:
    ids = list(dict.fromkeys(label.correlation_id for label in labels))
    events = _events_by_correlation(db, ids)
    existing = labels_by_correlation(db, ids)
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


def _events_by_correlation(db: Db, ids: list[str]) -> dict[str, list[_Event]]:
    found: dict[str, list[_Event]] = {}
    for chunk in chunks(ids):
        sql = (
            "SELECT correlation_id, internal_id, coalesce(deployment, ''), model_name, "
            "model_version, drift_window FROM served_requests "
            f"WHERE correlation_id IN ({marks(chunk)})"
        )
        for cid, iid, deployment, name, version, window in db.execute(sql, chunk).fetchall():
            found.setdefault(cid, []).append(_Event(iid, (deployment, name, version), window))
    return found


def labels_by_correlation(db: Db, ids: list[str]) -> dict[str, LabelRecord]:
    found: dict[str, LabelRecord] = {}
    for chunk in chunks(ids):
        sql = f"SELECT record FROM labels WHERE correlation_id IN ({marks(chunk)})"
        for (text,) in db.execute(sql, chunk).fetchall():
            label = LabelRecord.from_dict(loads(text))
            found[label.correlation_id] = label
    return found


def _insert_label(db: Db, label: LabelRecord, internal_ids: tuple[str, ...]) -> None:
    db.execute(
        "INSERT INTO labels (correlation_id, label, received_at, source, record) "
        "VALUES (?, ?, ?, ?, ?)",
        (label.correlation_id, label.label, label.received_at, label.source, label.to_json()),
    )
    db.executemany(
        "INSERT INTO label_links (internal_id, correlation_id, received_at) "
        "VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
        [(iid, label.correlation_id, label.received_at) for iid in internal_ids],
    )


# --- alerts -----------------------------------------------------------------------------------

INCIDENT_COLUMNS = "incident_id, rule, severity, state, opened_at, updated_at, resolved_at, record"
MAINTENANCE_UPSERT = (
    "INSERT INTO maintenance_windows (maintenance_id, started_at, until, cleared_at, "
    "record) VALUES (?, ?, ?, ?, ?) ON CONFLICT (maintenance_id) DO UPDATE SET "
    "cleared_at = excluded.cleared_at, record = excluded.record"
)


def write_alert_transitions(
    db: Db, rows: list[tuple[tuple[Any, ...], tuple[Any, ...]]]
) -> WriteReceipt:
    written: list[str] = []
    present: list[str] = []
    for incident_row, transition_row in rows:
        cursor = db.execute(
            "INSERT INTO alert_transitions (transition_id, incident_id, at, kind, notified, "
            "record) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            transition_row,
        )
        (written if cursor.rowcount else present).append(transition_row[0])
        # The newest state of an incident wins, whatever order writes arrive in.
        db.execute(
            f"INSERT INTO alert_incidents ({INCIDENT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (incident_id) DO UPDATE SET state = excluded.state, "
            "updated_at = excluded.updated_at, resolved_at = excluded.resolved_at, "
            "record = excluded.record WHERE excluded.updated_at >= alert_incidents.updated_at",
            incident_row,
        )
    return WriteReceipt(written_ids=tuple(written), already_present_ids=tuple(present))


def alert_rows(transition: AlertTransitionLike) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    incident_text = transition.incident_json()
    incident = loads(incident_text)
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


def incident_filters(
    *, state: str | None, rule: str | None, since: float | None
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    filters = (("state", "=", state), ("rule", "=", rule), ("opened_at", ">=", since))
    for column, op, value in filters:
        if value is not None:
            clauses.append(f"{column} {op} ?")
            params.append(value)
    return (("WHERE " + " AND ".join(clauses)) if clauses else ""), params


def stored_incident(row: Sequence[Any]) -> StoredIncident:
    return StoredIncident(
        incident_id=row[0],
        rule=row[1],
        severity=row[2],
        state=row[3],
        opened_at=row[4],
        updated_at=row[5],
        resolved_at=row[6],
        document=loads(row[7]),
    )


def maintenance_row(window: MaintenanceLike) -> tuple[Any, ...]:
    record = json.dumps(window.to_dict(), sort_keys=True)
    return (window.maintenance_id, window.started_at, window.until, window.cleared_at, record)


REFERENCE_CHANGE_INSERT = (
    "INSERT INTO reference_changes (change_id, at, outcome, record) VALUES (?, ?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
# What makes two reference changes the same change, applied again.
_CHANGE_IDENTITY = ("path", "from_hash", "to_hash", "outcome", "changed_by")


def reference_change_row(change: Mapping[str, Any]) -> tuple[Any, ...]:
    record = json.dumps(dict(change), sort_keys=True)
    return (str(change["change_id"]), float(change["at"]), str(change["outcome"]), record)


def same_change(stored: Mapping[str, Any], change: Mapping[str, Any]) -> bool:
    return all(stored.get(key) == change.get(key) for key in _CHANGE_IDENTITY)
