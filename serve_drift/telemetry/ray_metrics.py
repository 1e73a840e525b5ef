"""An OpenTelemetry metric exporter into Ray's metrics, for Prometheus to scrape.

Ray Serve users already scrape Ray: each node's metrics agent serves every Ray process of that
node on one port, and Ray writes a Prometheus file service-discovery document
(``prom_metrics_service_discovery.json`` in the session folder) that lists every node. With
``OTEL_METRICS_EXPORTER=ray`` (or ``otlp,ray``) serve-drift's metrics take the same path: many
replicas on one node share that node's port (told apart by Ray's ``WorkerId`` label), and a
monitor rescheduled to another node shows up under that node with nothing to reconfigure.

Names: ``serve_drift.drift.p_value`` becomes ``serve_drift_drift_p_value``, which Ray exports as
``ray_serve_drift_drift_p_value`` (counters with ``_total``, histograms with ``_bucket``,
``_sum``, ``_count``). Attributes become labels without their ``serve_drift.`` prefix
(``serve_drift.model.name`` -> ``model_name``, see :func:`prometheus_label`).

How each kind travels (Ray's API records measurements, not aggregates):

- counters are exported as deltas and added to a Ray counter;
- gauges and up-down counters set a Ray gauge to their latest value;
- histograms are exported as deltas and replayed into a Ray histogram with the same bucket
  bounds: each bucket's count is observed at one value inside that bucket, chosen so that the
  replayed sum equals the real one. Counts, buckets and sums are exact; only the positions of
  values inside a bucket are not (they never are in Prometheus). Bounds must be positive for
  Ray, so a bound of 0 is dropped (values <= 0 land in the first bucket).

The exporter needs a connected Ray worker or driver; elsewhere it drops the data and says so in
:attr:`RayMetricsExporter.dropped`.

>>> ray_metric_name("serve_drift.drift.p_value.last"), prometheus_label("serve_drift.model.name")
('serve_drift_drift_p_value_last', 'model_name')
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from opentelemetry.sdk.metrics import (
    Counter,
    Histogram,
    ObservableCounter,
    ObservableGauge,
    ObservableUpDownCounter,
    UpDownCounter,
    _Gauge,
)
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    Sum,
)
from opentelemetry.sdk.metrics.export import Histogram as HistogramData

__all__ = [
    "RAY_PROMETHEUS_PREFIX",
    "RayMetricsExporter",
    "prometheus_label",
    "ray_metric_name",
    "replay_values",
]

RAY_PROMETHEUS_PREFIX = "ray_"  # what Ray's agent puts before every application metric
_INVALID = re.compile(r"[^a-zA-Z0-9_]")
_PREFIX = "serve_drift."

_TEMPORALITY: dict[type, AggregationTemporality] = {
    Counter: AggregationTemporality.DELTA,
    ObservableCounter: AggregationTemporality.DELTA,
    Histogram: AggregationTemporality.DELTA,
    UpDownCounter: AggregationTemporality.CUMULATIVE,
    ObservableUpDownCounter: AggregationTemporality.CUMULATIVE,
    ObservableGauge: AggregationTemporality.CUMULATIVE,
    _Gauge: AggregationTemporality.CUMULATIVE,  # keeps re-sending the last value
}


def ray_metric_name(otel_name: str) -> str:
    """The Ray metric name of an OpenTelemetry instrument (Ray adds ``ray_`` in Prometheus)."""
    return _INVALID.sub("_", otel_name)


def prometheus_label(attribute: str) -> str:
    """The Prometheus label of an attribute key: ``serve_drift.`` dropped, dots to ``_``."""
    key = attribute[len(_PREFIX) :] if attribute.startswith(_PREFIX) else attribute
    return _INVALID.sub("_", key)


def _label_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(_label_value(v) for v in value)
    return str(value)


def _tags(attributes: Mapping[str, Any] | None) -> dict[str, str]:
    return {prometheus_label(k): _label_value(v) for k, v in (attributes or {}).items()}


def replay_values(point: HistogramDataPoint) -> list[tuple[float, int]]:
    """``(value, count)`` per non-empty bucket, inside the bucket, with the exact total sum.

    Each bucket ``(lo, hi]`` gets one value ``lo + t * (hi - lo)`` with a common ``t`` in
    ``[0, 1]`` that makes the weighted total equal ``point.sum`` (the open-ended first and last
    buckets are closed by the point's min and max).
    """
    bounds = list(point.explicit_bounds)
    spans = []
    for i, count in enumerate(point.bucket_counts):
        if count:
            lo = min(point.min, bounds[0]) if i == 0 else bounds[i - 1]
            hi = bounds[i] if i < len(bounds) else max(point.max, bounds[-1])
            spans.append((i, lo, hi, count))
    floor = sum(lo * c for _, lo, _, c in spans)
    room = sum((hi - lo) * c for _, lo, hi, c in spans)
    t = 1.0 if room <= 0 else min(1.0, max(0.0, (point.sum - floor) / room))
    return [(_inside(i, lo, lo + t * (hi - lo)), c) for i, lo, hi, c in spans]


def _inside(bucket: int, lo: float, value: float) -> float:
    # Bounds are inclusive above: a value exactly on a bucket's lower bound belongs to the
    # bucket below, so move it up by one ulp. The first bucket's ``lo`` is its minimum: fine.
    if bucket == 0 or value > lo:
        return value
    return math.nextafter(lo, math.inf)


class RayMetricsExporter(MetricExporter):
    """Pushes OpenTelemetry metric data into ``ray.util.metrics``; see the module docstring."""

    def __init__(self) -> None:
        super().__init__(preferred_temporality=dict(_TEMPORALITY))
        self._lock = threading.Lock()
        self._metrics: dict[tuple[str, str, tuple[str, ...], tuple[float, ...]], Any] = {}
        self.dropped = 0

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        if not _ray_connected():
            self.dropped += 1
            return MetricExportResult.FAILURE
        with self._lock:
            for metric in _metrics(metrics_data):
                self._export_metric(metric)
        return MetricExportResult.SUCCESS

    def _export_metric(self, metric: Metric) -> None:
        name = ray_metric_name(metric.name)
        description = metric.description or ""
        data = metric.data
        if isinstance(data, Sum) and data.is_monotonic:
            for point in data.data_points:
                self._add(name, description, point)
        elif isinstance(data, Sum | Gauge):
            for point in data.data_points:
                self._set(name, description, point)
        elif isinstance(data, HistogramData):
            for hist_point in data.data_points:
                self._observe(name, description, hist_point)

    def _add(self, name: str, description: str, point: NumberDataPoint) -> None:
        if point.value > 0:
            tags = _tags(point.attributes)
            self._ray_metric("counter", name, description, tags).inc(point.value, tags=tags)

    def _set(self, name: str, description: str, point: NumberDataPoint) -> None:
        tags = _tags(point.attributes)
        self._ray_metric("gauge", name, description, tags).set(point.value, tags=tags)

    def _observe(self, name: str, description: str, point: HistogramDataPoint) -> None:
        if not point.count:
            return
        tags = _tags(point.attributes)
        bounds = tuple(b for b in point.explicit_bounds if b > 0)
        if not bounds:  # Ray needs a positive bound; such a histogram cannot travel
            self.dropped += 1
            return
        histogram = self._ray_metric("histogram", name, description, tags, bounds)
        for value, count in replay_values(point):
            for _ in range(count):  # Ray's API takes one measurement at a time
                histogram.observe(value, tags=tags)

    def _ray_metric(
        self,
        kind: str,
        name: str,
        description: str,
        tags: Mapping[str, str],
        bounds: tuple[float, ...] = (),
    ) -> Any:
        # One Ray metric per label set: Ray wants the tag keys declared up front, and merges
        # metrics of one name with different keys into one schema on export.
        key = (kind, name, tuple(sorted(tags)), bounds)
        if key not in self._metrics:
            self._metrics[key] = _new_ray_metric(kind, name, description, key[2], bounds)
        return self._metrics[key]

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        return None


def _metrics(data: MetricsData | None) -> Iterable[Metric]:
    if data is None:  # a collection with nothing new (delta temporality)
        return
    for resource_metrics in data.resource_metrics:
        for scope_metrics in resource_metrics.scope_metrics:
            yield from scope_metrics.metrics


def _ray_connected() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return bool(ray.is_initialized())


def _new_ray_metric(
    kind: str, name: str, description: str, tag_keys: Sequence[str], bounds: Sequence[float]
) -> Any:
    from ray.util import metrics as ray_metrics

    keys = tuple(tag_keys)
    if kind == "counter":
        return ray_metrics.Counter(name, description=description, tag_keys=keys)
    if kind == "gauge":
        return ray_metrics.Gauge(name, description=description, tag_keys=keys)
    return ray_metrics.Histogram(
        name, description=description, boundaries=list(bounds), tag_keys=keys
    )
