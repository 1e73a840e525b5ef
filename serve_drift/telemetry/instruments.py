"""OpenTelemetry instruments and attribute names. API only: providers are the application's choice.

Metric and attribute names live under ``serve_drift.`` because there is no ML semantic
convention yet. Histograms of p-values and distances use explicit buckets so that a p-value
of 0.04 and one of 0.06 land in different buckets around the usual 0.05 threshold.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from opentelemetry import metrics, trace
from opentelemetry.metrics import _Gauge as Gauge  # the API exports the sync gauge privately

_scope = "serve_drift"  # the instrumentation scope of every span and metric

ATTR_CORRELATION_ID = "serve_drift.correlation_id"
ATTR_INTERNAL_ID = "serve_drift.internal_id"
ATTR_MODEL_NAME = "serve_drift.model.name"
ATTR_MODEL_VERSION = "serve_drift.model.version"
ATTR_REFERENCE_VERSION = "serve_drift.reference.version"
# The model version the reference set was built with, and whether the window's differs.
ATTR_REFERENCE_MODEL_VERSION = "serve_drift.reference.model_version"
ATTR_VERSION_MISMATCH = "serve_drift.version_mismatch"
ATTR_PREDICTED_CLASS = "serve_drift.prediction.class"
ATTR_CONFIDENCE = "serve_drift.prediction.confidence"
ATTR_LATENCY_S = "serve_drift.request.latency_s"
ATTR_DETECTOR = "serve_drift.detector"
ATTR_BACKEND = "serve_drift.detector.backend"
ATTR_P_VALUE = "serve_drift.drift.p_value"
# A calibrated detector's own p-value (``ATTR_P_VALUE`` is the calibrated one).
ATTR_P_VALUE_UNCALIBRATED = "serve_drift.drift.p_value.uncalibrated"
ATTR_ESTIMATED_ACCURACY = "serve_drift.accuracy.estimated"
ATTR_DISTANCE = "serve_drift.drift.distance"
ATTR_IS_DRIFT = "serve_drift.drift.is_drift"
ATTR_WINDOW_INDEX = "serve_drift.window.index"
ATTR_WINDOW_SIZE = "serve_drift.window.size"
ATTR_TEST_ID = "serve_drift.drift.test_id"
ATTR_INGRESS_ERROR_CODE = "serve_drift.ingress.error.code"
ATTR_INGRESS_FLAGS = "serve_drift.ingress.flags"
ATTR_HTTP_STATUS = "http.response.status_code"

P_VALUE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0)
DISTANCE_BUCKETS = (0.0, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0)
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


def tracer() -> trace.Tracer:
    """The library's tracer, from whatever provider is global when called (never cached early)."""
    return trace.get_tracer(_scope)


@dataclass(frozen=True)
class ReplicaInstruments:
    """Instruments recorded by monitored model replicas."""

    requests: metrics.Counter
    latency: metrics.Histogram
    confidence: metrics.Histogram
    embeddings_dropped: metrics.Counter
    embeddings_shipped: metrics.Counter
    monitoring_errors: metrics.Counter


@dataclass(frozen=True)
class MonitorInstruments:
    """Instruments recorded by the drift monitor deployment."""

    embeddings_received: metrics.Counter
    embeddings_rejected: metrics.Counter
    windows_tested: metrics.Counter
    p_value: metrics.Histogram
    distance: metrics.Histogram
    p_value_last: Gauge
    distance_last: Gauge
    is_drift: Gauge
    test_duration: metrics.Histogram
    monitoring_errors: metrics.Counter
    estimated_accuracy: Gauge


def _meter() -> metrics.Meter:
    return metrics.get_meter(_scope)


def _errors(meter: metrics.Meter) -> metrics.Counter:
    return meter.create_counter(
        "serve_drift.monitoring.errors",
        unit="{error}",
        description="Failures in serve-drift's monitoring path, by stage; never seen by clients.",
    )


@cache
def replica_instruments() -> ReplicaInstruments:
    meter = _meter()
    return ReplicaInstruments(
        requests=meter.create_counter(
            "serve_drift.requests",
            unit="{request}",
            description="Requests served by monitored models.",
        ),
        latency=meter.create_histogram(
            "serve_drift.request.duration",
            unit="s",
            description="Time spent in the monitored deployment's handler.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        confidence=meter.create_histogram(
            "serve_drift.prediction.confidence",
            unit="1",
            description="Top-1 softmax confidence of served predictions.",
            explicit_bucket_boundaries_advisory=CONFIDENCE_BUCKETS,
        ),
        embeddings_dropped=meter.create_counter(
            "serve_drift.embeddings.dropped",
            unit="{embedding}",
            description="Embeddings not delivered to the monitor, by reason.",
        ),
        embeddings_shipped=meter.create_counter(
            "serve_drift.embeddings.shipped",
            unit="{embedding}",
            description="Embeddings delivered to the monitor.",
        ),
        monitoring_errors=_errors(meter),
    )


@cache
def monitor_instruments() -> MonitorInstruments:
    meter = _meter()
    return MonitorInstruments(
        embeddings_received=meter.create_counter(
            "serve_drift.embeddings.received",
            unit="{embedding}",
            description="Embeddings received by the drift monitor.",
        ),
        embeddings_rejected=meter.create_counter(
            "serve_drift.embeddings.rejected",
            unit="{embedding}",
            description="Embeddings the monitor kept out of windows (non-finite, wrong dimension).",
        ),
        windows_tested=meter.create_counter(
            "serve_drift.drift.windows_tested", unit="{window}", description="Drift tests run."
        ),
        p_value=meter.create_histogram(
            "serve_drift.drift.p_value",
            unit="1",
            description="p-values of drift tests.",
            explicit_bucket_boundaries_advisory=P_VALUE_BUCKETS,
        ),
        distance=meter.create_histogram(
            "serve_drift.drift.distance",
            unit="1",
            description="Test statistic (e.g. MMD²) of drift tests.",
            explicit_bucket_boundaries_advisory=DISTANCE_BUCKETS,
        ),
        p_value_last=meter.create_gauge(
            "serve_drift.drift.p_value.last", unit="1", description="p-value of the latest test."
        ),
        distance_last=meter.create_gauge(
            "serve_drift.drift.distance.last", unit="1", description="Statistic of the latest test."
        ),
        is_drift=meter.create_gauge(
            "serve_drift.drift.is_drift", unit="1", description="1 if the latest test found drift."
        ),
        test_duration=meter.create_histogram(
            "serve_drift.drift.test.duration",
            unit="s",
            description="Wall time of one drift test.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        monitoring_errors=_errors(meter),
        estimated_accuracy=meter.create_gauge(
            "serve_drift.accuracy.estimated",
            unit="1",
            description="Label-free estimate of the model's accuracy on the latest window.",
        ),
    )


@dataclass(frozen=True)
class IngressInstruments:
    """Instruments recorded by the ready-made app's ingress checks."""

    rejected: metrics.Counter
    flagged: metrics.Counter
    quarantined: metrics.Counter


@cache
def ingress_instruments() -> IngressInstruments:
    meter = _meter()
    return IngressInstruments(
        rejected=meter.create_counter(
            "serve_drift.ingress.rejected",
            unit="{request}",
            description="Requests answered with an error by ingress, by error code.",
        ),
        flagged=meter.create_counter(
            "serve_drift.ingress.flagged",
            unit="{input}",
            description="Inputs a plausibility check fired on, by check and action.",
        ),
        quarantined=meter.create_counter(
            "serve_drift.ingress.quarantined",
            unit="{input}",
            description="Inputs sent to the quarantine store, by outcome: stored, dropped, failed.",
        ),
    )


@dataclass(frozen=True)
class EventLogInstruments:
    """Instruments recorded by the monitor's event log and label feedback."""

    accepted: metrics.Counter
    stored: metrics.Counter
    sampled_out: metrics.Counter
    dropped: metrics.Counter
    write_duration: metrics.Histogram
    concept: dict[str, Gauge]
    accuracy_estimate_error: Gauge


CONCEPT_METRICS = {
    "accuracy": "Accuracy of the latest labelled window (or sentinel run).",
    "f1_macro": "Macro F1 of the latest labelled window (or sentinel run).",
    "ece": "Expected calibration error (15 bins) of the latest labelled window (or sentinel run).",
}


def _event_counter(meter: metrics.Meter, name: str, description: str) -> metrics.Counter:
    return meter.create_counter(
        f"serve_drift.events.{name}", unit="{event}", description=description
    )


@cache
def event_log_instruments() -> EventLogInstruments:
    meter = _meter()
    return EventLogInstruments(
        accepted=_event_counter(meter, "accepted", "Inference events owed an outcome."),
        stored=_event_counter(meter, "stored", "Inference events committed to the store."),
        sampled_out=_event_counter(meter, "sampled_out", "Ordinary events not kept by sampling."),
        dropped=_event_counter(meter, "dropped", "Events lost, by reason (store failures...)."),
        write_duration=meter.create_histogram(
            "serve_drift.events.store.write.duration",
            unit="s",
            description="Time to commit one batch to the event store.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        concept={
            name: meter.create_gauge(f"serve_drift.concept.{name}", unit="1", description=text)
            for name, text in CONCEPT_METRICS.items()
        },
        accuracy_estimate_error=meter.create_gauge(
            "serve_drift.accuracy.estimate_error",
            unit="1",
            description="The latest labelled window's accuracy estimate minus its accuracy "
            "from labels.",
        ),
    )
