"""Export event records as OpenTelemetry log records (OTLP), linked to their traces.

For teams that outgrow one machine's SQLite file: every kept record also goes to the log
backend (Loki, Elasticsearch, a vendor) through the OpenTelemetry *logs API*. This module never
installs a provider: pass a ``LoggerProvider`` or let it use the global one (configured by the
application, or by :func:`serve_drift.telemetry.logs_setup.build_logger_provider`).

Each log record carries:

- ``body``: the record's JSON (schema v1), so nothing is lost in the backend;
- ``event_name``: ``serve_drift.inference``, ``serve_drift.drift_test``, ``serve_drift.label``
  or ``serve_drift.concept_metrics``;
- ``trace_id``/``span_id``: those of the request span (inference) or the drift-test span, so the
  backend links the log line to its trace; labels use the caller's current span, if any;
- a few searchable attributes under ``serve_drift.*`` (correlation ID, model, class, window,
  and caller context as ``serve_drift.context.<key>``);
- severity WARN for flagged events and drift found, INFO otherwise.

>>> from opentelemetry._logs import NoOpLoggerProvider
>>> from serve_drift.eventlog.schema import LabelRecord
>>> exporter = EventLogExporter(logger_provider=NoOpLoggerProvider())
>>> exporter.export([LabelRecord(correlation_id="req-1", label=3, received_at=1.0)])
1
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from opentelemetry._logs import LoggerProvider, SeverityNumber, get_logger
from opentelemetry.context import Context

from serve_drift.eventlog.schema import (
    ConceptMetricsRecord,
    DriftTestRecord,
    EventRecord,
    InferenceRecord,
    LabelRecord,
)
from serve_drift.telemetry.spans import remote_span_context

logger = logging.getLogger(__name__)

_SCOPE = "serve_drift.eventlog"
EVENT_NAMES = {
    "inference": "serve_drift.inference",
    "drift_test": "serve_drift.drift_test",
    "label": "serve_drift.label",
    "concept_metrics": "serve_drift.concept_metrics",
}


class EventLogExporter:
    """Emits records as OTel log records; never raises into the caller."""

    def __init__(self, *, logger_provider: LoggerProvider | None = None) -> None:
        # Without a provider this is the global one; a proxy until the application sets one,
        # which then takes over for loggers obtained earlier too.
        self._logger = get_logger(_SCOPE, logger_provider=logger_provider)
        self.failures = 0

    def export(self, records: Iterable[EventRecord]) -> int:
        """Emit every record; returns how many were handed to the logs pipeline."""
        emitted = 0
        for record in records:
            try:
                self._emit(record)
                emitted += 1
            except Exception:  # exporting is a copy: it must never break the store's path
                self.failures += 1
                logger.debug("serve-drift: could not emit an event log record", exc_info=True)
        return emitted

    def _emit(self, record: EventRecord) -> None:
        self._logger.emit(
            timestamp=int(_record_time(record) * 1e9),
            observed_timestamp=time.time_ns(),
            context=_span_context(record),
            severity_number=_severity(record),
            severity_text=_severity(record).name,
            body=record.to_json(),
            attributes=_attributes(record),
            event_name=EVENT_NAMES[record.record_type],
        )


def _record_time(record: EventRecord) -> float:
    if isinstance(record, InferenceRecord):
        return record.timestamp
    if isinstance(record, DriftTestRecord):
        return record.tested_at
    if isinstance(record, LabelRecord):
        return record.received_at
    return record.computed_at


def _span_context(record: EventRecord) -> Context | None:
    """A context whose current span is the record's span; ``None`` keeps the caller's."""
    if isinstance(record, InferenceRecord | DriftTestRecord) and record.trace_id and record.span_id:
        return remote_span_context(record.trace_id, record.span_id)
    if isinstance(record, InferenceRecord | DriftTestRecord):
        return Context()  # no span: do not borrow the monitor's current one
    return None


def _severity(record: EventRecord) -> SeverityNumber:
    if isinstance(record, InferenceRecord) and record.flagged:
        return SeverityNumber.WARN
    if isinstance(record, DriftTestRecord) and record.is_drift:
        return SeverityNumber.WARN
    return SeverityNumber.INFO


def _attributes(record: EventRecord) -> dict[str, Any]:
    common = {"serve_drift.record_type": record.record_type, "serve_drift.schema_version": 1}
    if isinstance(record, InferenceRecord):
        specific = _inference_attributes(record)
    elif isinstance(record, DriftTestRecord):
        specific = {
            "serve_drift.drift.test_id": record.test_id,
            "serve_drift.detector": record.detector,
            "serve_drift.drift.is_drift": record.is_drift,
            "serve_drift.drift.p_value": record.p_value,
            "serve_drift.window.index": record.window_index,
            "serve_drift.model.name": record.model_name,
            "serve_drift.model.version": record.model_version,
        }
    elif isinstance(record, LabelRecord):
        specific = {
            "serve_drift.correlation_id": record.correlation_id,
            "serve_drift.label": record.label,
            "serve_drift.label.source": record.source,
        }
    else:
        specific = _metrics_attributes(record)
    # OTel attribute values may not be None: leave unknown values out.
    return {k: v for k, v in {**common, **specific}.items() if v is not None}


def _inference_attributes(record: InferenceRecord) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "serve_drift.correlation_id": record.correlation_id,
        "serve_drift.internal_id": record.internal_id,
        "serve_drift.model.name": record.model_name,
        "serve_drift.model.version": record.model_version,
        "serve_drift.prediction.class": record.outputs.predicted_class,
        "serve_drift.prediction.confidence": record.outputs.confidence,
        "serve_drift.window.index": record.drift_window,
        "serve_drift.sampling.weight": record.sampling_weight,
        "serve_drift.sampling.keep_reason": record.keep_reason,
        "serve_drift.validation.flags": list(record.validation_flags) or None,
    }
    attributes.update({f"serve_drift.context.{k}": v for k, v in record.context.items()})
    return attributes


def _metrics_attributes(record: ConceptMetricsRecord) -> dict[str, Any]:
    return {
        "serve_drift.metrics.tag": record.tag,
        "serve_drift.model.name": record.model_name,
        "serve_drift.model.version": record.model_version,
        "serve_drift.window.index": record.window_index,
        "serve_drift.metrics.accuracy": record.metrics.accuracy,
        "serve_drift.metrics.f1_macro": record.metrics.f1_macro,
        "serve_drift.metrics.ece": record.metrics.ece,
    }
