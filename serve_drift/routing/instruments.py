"""OpenTelemetry instruments of the router and the comparator (API only, like the rest).

Router (per replica): requests by the arm that answered, mirrored requests by outcome (sent,
completed, failed, timeout, invalid, dropped), observations shipped or dropped. Comparator:
per closed window, agreement, flips by class pair, confidence, ECE, accuracy and latency
deltas, and the current verdict (1 promote, 0 hold, -1 roll back), plus routing changes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from opentelemetry import metrics
from opentelemetry.metrics import _Gauge as Gauge  # the API exports the sync gauge privately

from serve_drift.telemetry.instruments import LATENCY_BUCKETS_S

# The instrumentation scope every serve-drift span and metric shares.
SCOPE = "serve_drift"
ATTR_ROUTER = "serve_drift.router"
ATTR_ARM = "serve_drift.arm"
ATTR_MODE = "serve_drift.routing.mode"
ATTR_OUTCOME = "outcome"
VERDICT_VALUES = {"promote": 1, "hold": 0, "rollback": -1}


@dataclass(frozen=True)
class RouterInstruments:
    requests: metrics.Counter
    mirrored: metrics.Counter
    mirror_latency: metrics.Histogram
    observations_dropped: metrics.Counter


@dataclass(frozen=True)
class ComparatorInstruments:
    pairs: metrics.Counter
    flips: metrics.Counter
    agreement: Gauge
    confidence_delta: Gauge
    ece_delta: Gauge
    accuracy: Gauge
    latency_delta: Gauge
    candidate_error_rate: Gauge
    verdict: Gauge
    changes: metrics.Counter


def _meter() -> metrics.Meter:
    return metrics.get_meter(SCOPE)


@cache
def router_instruments() -> RouterInstruments:
    meter = _meter()
    return RouterInstruments(
        requests=meter.create_counter(
            "serve_drift.routing.requests",
            unit="{request}",
            description="Requests the router sent to an arm for an answer, by arm and mode.",
        ),
        mirrored=meter.create_counter(
            "serve_drift.shadow.mirrored",
            unit="{request}",
            description="Shadow copies of requests, by outcome (sent, completed, failed, "
            "timeout, invalid, dropped_queue_full).",
        ),
        mirror_latency=meter.create_histogram(
            "serve_drift.shadow.candidate.duration",
            unit="s",
            description="Round trip of a mirrored request to the candidate.",
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS_S,
        ),
        observations_dropped=meter.create_counter(
            "serve_drift.shadow.observations.dropped",
            unit="{observation}",
            description="Routed requests not delivered to the comparator, by reason.",
        ),
    )


def _gauge(meter: metrics.Meter, name: str, description: str, unit: str = "1") -> Gauge:
    return meter.create_gauge(f"serve_drift.shadow.{name}", unit=unit, description=description)


@cache
def comparator_instruments() -> ComparatorInstruments:
    meter = _meter()
    return ComparatorInstruments(
        pairs=meter.create_counter(
            "serve_drift.shadow.pairs", unit="{row}", description="Rows both arms answered."
        ),
        flips=meter.create_counter(
            "serve_drift.shadow.flips",
            unit="{row}",
            description="Top-1 disagreements, by incumbent class and candidate class.",
        ),
        agreement=_gauge(meter, "agreement", "Top-1 agreement, last window."),
        confidence_delta=_gauge(
            meter, "confidence.delta", "Mean top-1 confidence, candidate minus incumbent."
        ),
        ece_delta=_gauge(meter, "ece.delta", "ECE (labels), candidate minus incumbent."),
        accuracy=_gauge(meter, "accuracy", "Accuracy on the last window's labels, by arm."),
        latency_delta=_gauge(
            meter, "latency.delta", "Latency p50/p99, candidate minus incumbent.", unit="s"
        ),
        candidate_error_rate=_gauge(
            meter, "candidate.error_rate", "Share of the candidate's answers that failed."
        ),
        verdict=_gauge(meter, "verdict", "The current decision: 1 promote, 0 hold, -1 roll back."),
        changes=meter.create_counter(
            "serve_drift.routing.changes",
            unit="{change}",
            description="Promotions, rollbacks and resumptions applied, by action and actor.",
        ),
    )
