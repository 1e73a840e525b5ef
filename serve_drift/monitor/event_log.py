"""The monitor's side of the event log: turn windows and their results into stored records."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift import _env
from serve_drift.config import DriftConfig
from serve_drift.eventlog.labels import (
    compute_metrics,
    metrics_record,
    record_window_metrics,
    submit_labels,
)
from serve_drift.eventlog.otlp_logs import EventLogExporter
from serve_drift.eventlog.recorder import EventLogHealth, EventRecorder
from serve_drift.eventlog.sampling import Sampler
from serve_drift.eventlog.schema import (
    DRIFT_RECORD_FIELDS,
    ConceptMetricsRecord,
    DriftTestRecord,
    InferenceRecord,
    LabelRecord,
    Outputs,
)
from serve_drift.eventlog.store import (
    BaseEventStore,
    EventQuery,
    LabelAnswer,
    ServedRequest,
    StoreError,
    open_store,
    schema_for,
)
from serve_drift.messages import DriftResult, InferenceEvent
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

SENTINEL = "sentinel"  # label source, event flag and metrics tag of sentinel runs
MAX_SENTINEL_RUNS = 16


def default_path(config: DriftConfig) -> Path:
    """``<cache>/events/<app>/<monitor>.sqlite``: one store per monitor, also across apps."""
    monitor = config.monitor_deployment or f"{config.model_name}DriftMonitor"
    return _env.event_db_dir() / _app_name() / f"{monitor}.sqlite"


def open_event_store(config: DriftConfig) -> BaseEventStore:
    """PostgreSQL when a DSN is set (``events.dsn``, else ``$SERVE_DRIFT_EVENTS_DSN``), in the
    monitor's own schema; else the SQLite file (``events.path``, else :func:`default_path`)."""
    events = config.events
    monitor = config.monitor_deployment or f"{config.model_name}DriftMonitor"
    return open_store(
        path=events.path or default_path(config),
        dsn=events.dsn or _env.events_dsn(),
        pg_schema=events.pg_schema or schema_for(app=_app_name(), monitor=monitor),
        max_age_s=events.max_age_s,
        max_bytes=events.max_bytes,
    )


def _app_name() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().app_name) or "default"
    except Exception:  # outside a Serve replica (scripts, tests)
        return "local"


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) and 0 <= value <= 1 else None


def served_request(event: InferenceEvent) -> ServedRequest:
    """The compact row every served request keeps, whatever sampling decides."""
    return ServedRequest(
        internal_id=event.internal_id,
        correlation_id=event.correlation_id,
        timestamp=event.timestamp,
        model_name=event.model_name,
        model_version=event.model_version,
        predicted_class=event.predicted_class,
        confidence=_finite(event.confidence),
        flagged=bool(event.flags) or event.exclude_from_drift,
    )


def drift_result(record: DriftTestRecord) -> DriftResult:
    """A stored drift test as the monitor reports it (what was not stored is left empty)."""
    values = {name: getattr(record, name) for name in DRIFT_RECORD_FIELDS}
    for name in ("p_value", "distance"):  # stored as null when not finite
        values[name] = math.nan if values[name] is None else values[name]
    return DriftResult(
        **{**values, "trace_id": record.trace_id or "", "span_id": record.span_id or ""},
        correlation_ids_sample=record.correlation_ids_sample,
    )


def to_record(
    event: InferenceEvent,
    *,
    reference_version: str,
    drift_window: int | None,
) -> InferenceRecord:
    """The stored form of one event; outputs that are not probabilities are recorded as none."""
    top_k = tuple((c, p) for c, p in event.top_k if _finite(p) is not None)
    return InferenceRecord(
        timestamp=event.timestamp,
        correlation_id=event.correlation_id,
        internal_id=event.internal_id,
        model_name=event.model_name,
        model_version=event.model_version,
        outputs=Outputs(
            predicted_class=event.predicted_class, confidence=_finite(event.confidence), top_k=top_k
        ),
        reference_version=reference_version,
        replica_id=event.replica_id or None,
        context=dict(event.context),
        input_stats=event.input_stats,
        latency_s=event.latency_s,
        validation_flags=event.flags,
        drift_window=drift_window,
        trace_id=event.trace_id,
        span_id=event.span_id,
        sampling_weight=event.sampling_weight,
    )


class MonitorEventLog:
    """Sampling, storage and label feedback for one monitor. Its methods block on disk I/O:
    the monitor calls them from its worker thread, never from the event loop."""

    def __init__(self, config: DriftConfig, *, reference_version: str) -> None:
        events = config.events
        self.config = config
        self.reference_version = reference_version
        self.store = open_event_store(config)
        self.recorder = EventRecorder(
            store=self.store,
            sampler=Sampler(
                rate=events.sample_rate, keep_confidence_below=events.keep_confidence_below
            ),
            exporter=EventLogExporter(logger_provider=_logger_provider(config))
            if events.export_otlp_logs
            else None,
        )
        self._gauges = tel.event_log_instruments().concept
        self._estimate_error = tel.event_log_instruments().accuracy_estimate_error
        self._sentinel_runs: dict[str, list[tuple[int, ServedRequest]]] = {}
        # Told every recomputed metrics record (a window's labels, a sentinel run): alerting.
        self.on_metrics: Callable[[ConceptMetricsRecord], object] | None = None

    def record_arrivals(self, events: Sequence[InferenceEvent]) -> None:
        """Durably record that these requests were served (compact rows), before any test.

        Raises :class:`~serve_drift.eventlog.store.StoreWriteError` when the store fails."""
        self.store.record_served([served_request(e) for e in events])

    def record(
        self,
        events: Sequence[InferenceEvent],
        *,
        drift_window: int | None,
        results: Sequence[DriftResult] = (),
    ) -> None:
        """Sample and store the events of a tested window (or of none), with its results."""
        records = [
            to_record(e, reference_version=self.reference_version, drift_window=drift_window)
            for e in events
        ]
        if results:
            self.recorder.record_drift_results(results)
        if drift_window is not None:
            self._assign_window(drift_window, events)
        self.recorder.record(records, in_drift_window=any(r.is_drift for r in results))

    def _assign_window(self, window: int, events: Sequence[InferenceEvent]) -> None:
        # Labels may have arrived before the window was tested: their metrics start now.
        try:
            self.store.assign_window(window, [e.internal_id for e in events])
            self._refresh_window_metrics(window)
        except StoreError as exc:
            logger.warning("serve-drift: could not assign window %d: %s", window, exc)

    def recent_results(self, *, limit: int) -> list[DriftResult]:
        """Stored drift results, oldest first (what a restarted monitor answers with)."""
        return [drift_result(r) for r in reversed(self.store.drift_results(limit=limit))]

    def submit_labels(self, items: Sequence[LabelRecord | LabelAnswer]) -> list[LabelAnswer]:
        """Join parsed labels (see ``parse_labels``) and refresh the concept-drift metrics of
        every window they touched. Raises ``StoreWriteError`` when the store fails."""
        answers = submit_labels(self.store, items)
        windows = sorted({w for a in answers if a.status == "accepted" for w in a.drift_windows})
        for window in windows:
            self._refresh_window_metrics(window)
        sentinel = [i for i in items if isinstance(i, LabelRecord) and i.source == SENTINEL]
        if sentinel:
            self._record_sentinel_run(sentinel, answers)
        return list(answers)

    def _record_sentinel_run(
        self, labels: Sequence[LabelRecord], answers: Sequence[LabelAnswer]
    ) -> None:
        """Sentinel requests sit in no drift window: each run (correlation IDs
        ``sentinel-<run>-<i>``) gets a metrics record, renewed as more of its labels join, like a
        window's. Runs are remembered in memory, the last few only."""
        accepted = {a.correlation_id for a in answers if a.status == "accepted"}
        joined = [label for label in labels if label.correlation_id in accepted]
        served = self.store.served(label.correlation_id for label in joined)
        for label in joined:
            for request in served.get(label.correlation_id, ()):
                if request.predicted_class is not None:
                    run = label.correlation_id.rsplit("-", 1)[0]
                    self._sentinel_runs.setdefault(run, []).append((label.label, request))
        while len(self._sentinel_runs) > MAX_SENTINEL_RUNS:
            self._sentinel_runs.pop(next(iter(self._sentinel_runs)))
        touched = {label.correlation_id.rsplit("-", 1)[0] for label in labels}
        for run in touched & self._sentinel_runs.keys():
            self._write_sentinel_metrics(self._sentinel_runs[run])

    def _write_sentinel_metrics(self, rows: list[tuple[int, ServedRequest]]) -> None:
        metrics = compute_metrics(
            y_true=[label for label, _ in rows],
            y_pred=[int(r.predicted_class or 0) for _, r in rows],
            confidence=[np.nan if r.confidence is None else r.confidence for _, r in rows],
        )
        record = metrics_record(
            metrics,
            tag=SENTINEL,
            model_name=self.config.model_name,
            model_version=rows[0][1].model_version,
            first_event_at=min(r.timestamp for _, r in rows),
            last_event_at=max(r.timestamp for _, r in rows),
        )
        self.store.write_concept_metrics([record])
        self._publish(record)

    def _refresh_window_metrics(self, window: int) -> None:
        # A window holds one model version (windows never mix them): take it from its events.
        events = self.store.query(EventQuery(drift_window=window, limit=1))
        if not events:
            return
        record = record_window_metrics(
            self.store,
            window_index=window,
            model_name=self.config.model_name,
            model_version=events[0].model_version,
        )
        if record is not None:
            self._publish(record)

    def _publish(self, record: ConceptMetricsRecord) -> None:
        attributes = {
            tel.ATTR_MODEL_NAME: record.model_name,
            tel.ATTR_MODEL_VERSION: record.model_version,
            "tag": record.tag,
        }
        m = record.metrics
        for name, value in (("accuracy", m.accuracy), ("f1_macro", m.f1_macro), ("ece", m.ece)):
            if value is not None:  # ECE is undefined without confidences
                self._gauges[name].set(value, attributes)
        if record.estimated_accuracy is not None:  # the label-free estimate met the truth
            self._estimate_error.set(record.estimated_accuracy - m.accuracy, attributes)
        if self.on_metrics is not None:
            self.on_metrics(record)

    def health(self) -> EventLogHealth:
        return self.recorder.health()

    def record_reference_change(self, change: Mapping[str, Any]) -> None:
        """Store a reference change (a swap applied or refused); once, if Serve re-applies it."""
        self.store.write_reference_change(change)

    def reference_changes(self, *, limit: int) -> list[dict[str, Any]]:
        return self.store.reference_changes(limit=limit)


def _logger_provider(config: DriftConfig) -> Any:
    from serve_drift.telemetry.logs_setup import build_logger_provider

    return build_logger_provider(service_name=f"{config.model_name}-drift-monitor")
