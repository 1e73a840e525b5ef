"""The event log: a queryable, durable record of what was served, tested and labelled.

- :mod:`~serve_drift.eventlog.schema`: versioned records (schema v1, JSON Schema file beside it);
- :mod:`~serve_drift.eventlog.sampling`: what is kept, with which weight, and the accounting;
- :mod:`~serve_drift.eventlog.store`: the store, SQLite (WAL, embedded) or PostgreSQL (clusters),
  one contract: batched, idempotent, with retention;
- :mod:`~serve_drift.eventlog.recorder`: the monitor's path through all of the above;
- :mod:`~serve_drift.eventlog.labels`: label feedback and concept-drift metrics;
- :mod:`~serve_drift.eventlog.otlp_logs`: records as OpenTelemetry log records (API only);
- :mod:`~serve_drift.eventlog.sentinel` and :mod:`~serve_drift.tools.events_cli`: sentinel runs
  and ``serve-drift events`` (import them explicitly; they are not loaded here).

Importing this package does no I/O and changes no global state.
"""

from serve_drift.eventlog.labels import (
    compute_metrics,
    expected_calibration_error,
    parse_labels,
    record_window_metrics,
    submit_labels,
    window_metrics,
)
from serve_drift.eventlog.otlp_logs import EventLogExporter
from serve_drift.eventlog.recorder import EventRecorder, RecordOutcome
from serve_drift.eventlog.sampling import (
    Accounting,
    AccountingError,
    AccountingSnapshot,
    Decision,
    Sampler,
)
from serve_drift.eventlog.schema import (
    FLAG_QUARANTINED,
    SCHEMA_PATH,
    SCHEMA_VERSION,
    ClassMetrics,
    ConceptDriftMetrics,
    ConceptMetricsRecord,
    DriftTestRecord,
    InferenceRecord,
    InputStats,
    LabelRecord,
    Outputs,
    clean_context,
    record_from_dict,
    record_from_json,
)
from serve_drift.eventlog.store import (
    BaseEventStore,
    EventQuery,
    EventStore,
    LabelAnswer,
    PostgresEventStore,
    StoreError,
    StoreHealth,
    StoreWriteError,
    WriteReceipt,
    open_store,
)

__all__ = [
    "FLAG_QUARANTINED",
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "Accounting",
    "AccountingError",
    "AccountingSnapshot",
    "BaseEventStore",
    "ClassMetrics",
    "ConceptDriftMetrics",
    "ConceptMetricsRecord",
    "Decision",
    "DriftTestRecord",
    "EventLogExporter",
    "EventQuery",
    "EventRecorder",
    "EventStore",
    "InferenceRecord",
    "InputStats",
    "LabelAnswer",
    "LabelRecord",
    "Outputs",
    "PostgresEventStore",
    "RecordOutcome",
    "Sampler",
    "StoreError",
    "StoreHealth",
    "StoreWriteError",
    "WriteReceipt",
    "clean_context",
    "compute_metrics",
    "expected_calibration_error",
    "open_store",
    "parse_labels",
    "record_from_dict",
    "record_from_json",
    "record_window_metrics",
    "submit_labels",
    "window_metrics",
]
