"""The store's tables, their layout version and the steps between versions, for both backends.

``LAYOUT_VERSION`` is the layout of the tables (not of the JSON records, which carry their own
``schema_version``). Opening a store creates what is missing and runs every step from the layout
it found, in one transaction; each step is idempotent, so a crash mid-migration only rolls back.
A store written by newer code (a higher layout) is refused, never altered.

Layouts: 1, the first release (no ``layout_version`` row); 2, a compact ``served_requests`` row
for every served request; 3, a ``reference_changes`` table (who swapped a monitor's reference,
when, to what). The alert tables (issue 10) are created by ``CREATE ... IF NOT EXISTS``
in every layout, so a store created before them gains them on open.
"""

from __future__ import annotations

from collections.abc import Callable

from serve_drift.eventlog.schema import SCHEMA_VERSION
from serve_drift.eventlog.store.contract import StoreError
from serve_drift.eventlog.store.sql import Db, Dialect

LAYOUT_VERSION = 3

# {real}, {int}: column types; {seq}: the tie-break column where PostgreSQL needs one.
_TABLES = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS inference_events (
    {seq}
    internal_id TEXT NOT NULL UNIQUE,
    timestamp {real} NOT NULL,
    correlation_id TEXT NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    deployment TEXT,
    flagged {int} NOT NULL,
    drift_window {int},
    predicted_class {int},
    confidence {real},
    sampling_weight {real} NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_time ON inference_events (timestamp);
CREATE INDEX IF NOT EXISTS events_by_correlation ON inference_events (correlation_id);
CREATE INDEX IF NOT EXISTS events_by_version ON inference_events (model_version, timestamp);
CREATE INDEX IF NOT EXISTS events_flagged ON inference_events (timestamp) WHERE flagged = 1;
CREATE INDEX IF NOT EXISTS events_by_window ON inference_events (drift_window)
    WHERE drift_window IS NOT NULL;
CREATE TABLE IF NOT EXISTS drift_results (
    {seq}
    test_id TEXT NOT NULL UNIQUE,
    tested_at {real} NOT NULL,
    window_index {int} NOT NULL,
    model_version TEXT NOT NULL,
    detector TEXT NOT NULL,
    is_drift {int} NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS drift_by_time ON drift_results (tested_at);
CREATE INDEX IF NOT EXISTS drift_by_window ON drift_results (window_index);
CREATE TABLE IF NOT EXISTS labels (
    correlation_id TEXT PRIMARY KEY,
    label {int} NOT NULL,
    received_at {real} NOT NULL,
    source TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS labels_by_time ON labels (received_at);
CREATE TABLE IF NOT EXISTS label_links (
    internal_id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    received_at {real} NOT NULL
);
CREATE INDEX IF NOT EXISTS label_links_by_time ON label_links (received_at);
CREATE TABLE IF NOT EXISTS served_requests (
    internal_id TEXT PRIMARY KEY,
    correlation_id TEXT NOT NULL,
    timestamp {real} NOT NULL,
    model_name TEXT NOT NULL,
    model_version TEXT NOT NULL,
    deployment TEXT,
    flagged {int} NOT NULL,
    drift_window {int},
    predicted_class {int},
    confidence {real}
);
CREATE INDEX IF NOT EXISTS served_by_time ON served_requests (timestamp);
CREATE INDEX IF NOT EXISTS served_by_correlation ON served_requests (correlation_id);
CREATE INDEX IF NOT EXISTS served_by_window ON served_requests (drift_window)
    WHERE drift_window IS NOT NULL;
CREATE TABLE IF NOT EXISTS concept_metrics (
    {seq}
    metrics_id TEXT NOT NULL UNIQUE,
    computed_at {real} NOT NULL,
    tag TEXT NOT NULL,
    window_index {int},
    model_version TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS metrics_by_time ON concept_metrics (computed_at);
CREATE TABLE IF NOT EXISTS alert_incidents (
    incident_id TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    severity TEXT NOT NULL,
    state TEXT NOT NULL,
    opened_at {real} NOT NULL,
    updated_at {real} NOT NULL,
    resolved_at {real},
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_incidents_by_time ON alert_incidents (opened_at);
CREATE INDEX IF NOT EXISTS alert_incidents_open ON alert_incidents (rule) WHERE state = 'open';
CREATE TABLE IF NOT EXISTS alert_transitions (
    {seq}
    transition_id TEXT PRIMARY KEY,
    incident_id TEXT NOT NULL,
    at {real} NOT NULL,
    kind TEXT NOT NULL,
    notified {int} NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS alert_transitions_by_incident ON alert_transitions (incident_id, at);
CREATE TABLE IF NOT EXISTS maintenance_windows (
    maintenance_id TEXT PRIMARY KEY,
    started_at {real} NOT NULL,
    until {real} NOT NULL,
    cleared_at {real},
    record TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS reference_changes (
    {seq}
    change_id TEXT PRIMARY KEY,
    at {real} NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
);
"""


def statements(dialect: Dialect) -> list[str]:
    """The ``CREATE ... IF NOT EXISTS`` statements of the current layout, in this dialect."""
    text = _TABLES.format(real=dialect.real, int=dialect.integer, seq=dialect.seq_column)
    return [s.strip() for s in text.split(";") if s.strip()]


def create_schema(db: Db, dialect: Dialect) -> int:
    """Create what is missing and migrate older layouts, idempotently, inside the caller's
    transaction; returns the layout version found (0: a new store)."""
    for statement in statements(dialect):  # one by one: a script would commit in SQLite
        db.execute(statement)
    found = layout_version(db)
    if found > LAYOUT_VERSION:
        raise StoreError(
            "incompatible",
            f"store has layout version {found}, this code knows up to {LAYOUT_VERSION}",
        )
    for version, migrate in MIGRATIONS:
        if found < version:
            migrate(db)
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('layout_version', ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (str(LAYOUT_VERSION),),
    )
    db.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', ?) ON CONFLICT DO NOTHING",
        (str(SCHEMA_VERSION),),
    )
    return found


def layout_version(db: Db) -> int:
    """0 for a new store; 1 for stores written before layouts were versioned."""
    found = db.execute("SELECT value FROM meta WHERE key = 'layout_version'").fetchone()
    if found is not None:
        return int(found[0])
    old = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return 0 if old is None else 1


def _backfill_served_requests(db: Db) -> None:
    # Layout 2 keeps a compact row for every served request; give stored events theirs.
    # (WHERE true: SQLite would read "FROM x ON" as the start of a join.)
    db.execute(
        "INSERT INTO served_requests (internal_id, correlation_id, timestamp, "
        "model_name, model_version, deployment, flagged, drift_window, predicted_class, "
        "confidence) SELECT internal_id, correlation_id, timestamp, model_name, model_version, "
        "deployment, flagged, drift_window, predicted_class, confidence FROM inference_events "
        "WHERE 1 = 1 ON CONFLICT DO NOTHING"
    )


def _nothing_to_move(db: Db) -> None:
    # Layout 3 only adds a table, created above; the step exists so that a PostgreSQL schema
    # at layout 2 (which skips DDL when current) is opened for it.
    del db


# (layout version, migration from the one before); each step must be idempotent.
MIGRATIONS: tuple[tuple[int, Callable[[Db], None]], ...] = (
    (2, _backfill_served_requests),
    (3, _nothing_to_move),
)
