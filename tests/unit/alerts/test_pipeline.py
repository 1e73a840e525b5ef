"""The pipeline the monitor holds: metrics of what the engine saw and did; failures contained."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Transition
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.pipeline import AlertPipeline
from serve_drift.alerts.signals import Tick
from serve_drift.alerts.sinks import AlertDispatcher
from tests.support.alert_signals import MODEL, windows


def _points(reader: InMemoryMetricReader, name: str) -> list[tuple[dict[str, Any], float]]:
    data = reader.get_metrics_data()
    return [
        (dict(point.attributes), point.value)
        for rm in (data.resource_metrics if data else ())
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


class _Sink:
    name = "memory"

    def __init__(self) -> None:
        self.sent: list[Transition] = []

    def send(self, transition: Transition) -> None:
        self.sent.append(transition)

    def close(self) -> None:
        return None


def _pipeline(reader: InMemoryMetricReader, **kwargs: Any) -> tuple[AlertPipeline, _Sink]:
    meter = MeterProvider(metric_readers=[reader]).get_meter("test")
    sink = _Sink()
    engine = AlertEngine(AlertsConfig(sinks=()), started_at=0.0, model_names=(MODEL,))
    pipeline = AlertPipeline(
        engine, model_name=MODEL, dispatcher=AlertDispatcher([sink]), meter=meter, **kwargs
    )
    return pipeline, sink


def test_the_active_gauge_follows_incidents_and_signals_are_exported() -> None:
    reader = InMemoryMetricReader()
    pipeline, _ = _pipeline(reader)
    for signal in windows(
        [0.002, 0.003, 0.004], estimated_accuracy=0.9, estimated_accuracy_baseline=0.95
    ):
        pipeline.observe(signal)
    (active,) = _points(reader, "serve_drift.alerts.active")
    assert active == (
        {
            "serve_drift.alert.rule": "input-drift",
            "serve_drift.alert.severity": "warning",
            "serve_drift.model.name": MODEL,
            "serve_drift.model.version": "v1",
            "serve_drift.detector": "combined",
        },
        1,
    )
    signals = {
        a["serve_drift.alert.signal"]: v for a, v in _points(reader, "serve_drift.alerts.signal")
    }
    assert signals == {"estimated_accuracy": 0.9, "estimated_accuracy_baseline": 0.95}
    assert _points(reader, "serve_drift.alerts.rules") == [({"serve_drift.model.name": MODEL}, 9)]
    for signal in windows([0.5] * 5, start=3):
        pipeline.observe(signal)
    assert [v for _, v in _points(reader, "serve_drift.alerts.active")] == [0]
    pipeline.close()


def test_maintenance_shows_in_its_gauge() -> None:
    reader = InMemoryMetricReader()
    pipeline, _ = _pipeline(reader)
    window = MaintenanceWindow.starting(at=0.0, duration_s=60, who="a", why="b")
    pipeline.set_maintenance(window, at=0.0)
    assert [v for _, v in _points(reader, "serve_drift.alerts.maintenance")] == [1]
    pipeline.observe(Tick(at=61.0))
    assert [v for _, v in _points(reader, "serve_drift.alerts.maintenance")] == [0]
    pipeline.close()


def test_a_failing_store_is_counted_and_the_sinks_still_get_the_alert() -> None:
    def broken(transitions: Sequence[Transition]) -> None:
        raise OSError("disk full")

    reader = InMemoryMetricReader()
    pipeline, sink = _pipeline(reader, record=broken)
    transitions = [t for s in windows([0.002, 0.003, 0.004]) for t in pipeline.observe(s)]
    pipeline.dispatcher.drain()
    assert [t.kind for t in transitions] == ["opened"] and sink.sent == transitions
    assert _points(reader, "serve_drift.alerts.errors") == [({"stage": "record"}, 1)]
    pipeline.close()


def test_an_engine_failure_never_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    pipeline, _ = _pipeline(reader)

    def explode(signal: object) -> list[Transition]:
        raise RuntimeError("bug")

    monkeypatch.setattr(pipeline.engine, "observe", explode)
    assert pipeline.observe(Tick(at=1.0)) == []
    assert _points(reader, "serve_drift.alerts.errors") == [({"stage": "engine"}, 1)]
    pipeline.close()
