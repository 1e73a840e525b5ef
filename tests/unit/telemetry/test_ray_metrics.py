"""The OpenTelemetry -> Ray metrics exporter, without Ray: what it would record, exactly."""

from __future__ import annotations

import bisect
import math
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader

from serve_drift.telemetry import ray_metrics
from serve_drift.telemetry.instruments import DISTANCE_BUCKETS, P_VALUE_BUCKETS
from serve_drift.telemetry.ray_metrics import RayMetricsExporter, replay_values

ROOT = Path(__file__).resolve().parents[3]


class _FakeRayMetric:
    def __init__(self, kind: str, name: str, tag_keys: tuple[str, ...], bounds: Any) -> None:
        self.kind, self.name, self.tag_keys, self.bounds = kind, name, tag_keys, list(bounds)
        self.calls: list[tuple[float, dict[str, str]]] = []

    def inc(self, value: float, tags: dict[str, str]) -> None:
        self._record(value, tags)

    def set(self, value: float, tags: dict[str, str]) -> None:
        self._record(value, tags)

    def observe(self, value: float, tags: dict[str, str]) -> None:
        self._record(value, tags)

    def _record(self, value: float, tags: dict[str, str]) -> None:
        assert set(tags) == set(self.tag_keys)  # Ray refuses undeclared or missing tags
        self.calls.append((value, tags))


@pytest.fixture
def fake_ray(monkeypatch: pytest.MonkeyPatch) -> list[_FakeRayMetric]:
    made: list[_FakeRayMetric] = []

    def new(kind: str, name: str, description: str, tag_keys: Any, bounds: Any) -> _FakeRayMetric:
        made.append(_FakeRayMetric(kind, name, tuple(tag_keys), bounds))
        return made[-1]

    monkeypatch.setattr(ray_metrics, "_ray_connected", lambda: True)
    monkeypatch.setattr(ray_metrics, "_new_ray_metric", new)
    return made


def _meter(exporter: RayMetricsExporter) -> tuple[Any, InMemoryMetricReader]:
    reader = InMemoryMetricReader(preferred_temporality=exporter._preferred_temporality)
    return MeterProvider(metric_readers=[reader]).get_meter("test"), reader


def test_counters_travel_as_deltas_with_prometheus_labels(fake_ray: list[_FakeRayMetric]) -> None:
    exporter = RayMetricsExporter()
    meter, reader = _meter(exporter)
    counter = meter.create_counter("serve_drift.drift.windows_tested")
    attributes = {"serve_drift.model.name": "digits", "serve_drift.drift.is_drift": True}
    counter.add(2, attributes)
    exporter.export(reader.get_metrics_data())
    counter.add(3, attributes)
    exporter.export(reader.get_metrics_data())
    exporter.export(reader.get_metrics_data())  # nothing new: nothing added
    (metric,) = fake_ray
    assert (metric.kind, metric.name) == ("counter", "serve_drift_drift_windows_tested")
    labels = {"model_name": "digits", "drift_is_drift": "true"}
    assert metric.calls == [(2, labels), (3, labels)]


def test_gauges_keep_their_latest_value_and_label_sets_get_their_own_metric(
    fake_ray: list[_FakeRayMetric],
) -> None:
    exporter = RayMetricsExporter()
    meter, reader = _meter(exporter)
    gauge = meter.create_gauge("serve_drift.drift.p_value.last")
    gauge.set(0.2, {"serve_drift.detector": "combined"})
    gauge.set(0.01, {"serve_drift.detector": "combined"})
    gauge.set(1.0, {"serve_drift.detector": "mmd", "serve_drift.model.name": "digits"})
    exporter.export(reader.get_metrics_data())
    exporter.export(reader.get_metrics_data())  # re-sent: Ray keeps live series alive
    by_keys = {m.tag_keys: m for m in fake_ray}
    assert [v for v, _ in by_keys[("detector",)].calls] == [0.01, 0.01]
    assert [v for v, _ in by_keys[("detector", "model_name")].calls] == [1.0, 1.0]


def test_histograms_replay_into_the_same_buckets_with_the_same_sum(
    fake_ray: list[_FakeRayMetric],
) -> None:
    exporter = RayMetricsExporter()
    meter, reader = _meter(exporter)
    histogram = meter.create_histogram(
        "serve_drift.drift.distance", explicit_bucket_boundaries_advisory=DISTANCE_BUCKETS
    )
    values = [0.0, 0.0004, 0.03, 0.03, 0.7, 5.0]
    for value in values:
        histogram.record(value)
    exporter.export(reader.get_metrics_data())
    (metric,) = fake_ray
    assert metric.bounds == [b for b in DISTANCE_BUCKETS if b > 0]  # Ray needs positive bounds
    observed = [v for v, _ in metric.calls]
    assert len(observed) == len(values)
    assert math.isclose(sum(observed), sum(values), rel_tol=1e-9)
    assert _ray_buckets(observed, metric.bounds) == _ray_buckets(values, metric.bounds)


def _ray_buckets(values: list[float], bounds: list[float]) -> list[int]:
    """Counts per Prometheus bucket (upper bounds inclusive), as Ray's agent exports them."""
    counts = defaultdict(int)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return [counts[i] for i in range(len(bounds) + 1)]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=60))
def test_replayed_values_keep_every_bucket_count_and_the_sum(values: list[float]) -> None:
    reader = InMemoryMetricReader()
    histogram = (
        MeterProvider(metric_readers=[reader])
        .get_meter("t")
        .create_histogram("h", explicit_bucket_boundaries_advisory=P_VALUE_BUCKETS)
    )
    for value in values:
        histogram.record(value)
    (point,) = [
        p
        for rm in reader.get_metrics_data().resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        for p in m.data.data_points
    ]
    assert isinstance(point, HistogramDataPoint)
    replayed = [v for v, count in replay_values(point) for _ in range(count)]
    bounds = list(P_VALUE_BUCKETS)
    assert _ray_buckets(replayed, bounds) == _ray_buckets(values, bounds)
    assert math.isclose(sum(replayed), sum(values), rel_tol=1e-9, abs_tol=1e-12)


def test_without_ray_the_data_is_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_metrics, "_ray_connected", lambda: False)
    exporter = RayMetricsExporter()
    meter, reader = _meter(exporter)
    meter.create_counter("c").add(1)
    exporter.export(reader.get_metrics_data())
    assert exporter.dropped == 1


def test_otel_metrics_exporter_ray_is_a_choice_of_the_sdk_setup(tmp_path: Any) -> None:
    # In a fresh process: the SDK setup installs its providers once per process.
    script = (
        "from serve_drift.telemetry.setup import configure_telemetry\n"
        f"destination = configure_telemetry(fallback_dir={str(tmp_path)!r})\n"
        "print(destination.metrics)\nprint(destination.traces)\n"
    )
    env = {**os.environ, "OTEL_METRICS_EXPORTER": "ray", "OTEL_TRACES_EXPORTER": "ray"}
    env["PYTHONPATH"] = str(ROOT)
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    metrics, traces = done.stdout.splitlines()[-2:]
    assert metrics == "ray metrics (Prometheus scrapes Ray's metrics agent)"
    assert traces == "none (ray exports metrics only)"
