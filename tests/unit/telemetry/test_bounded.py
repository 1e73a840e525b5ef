"""Bounded flush and shutdown against exporters that hang, in process (no network, no globals).

The providers here are never installed globally; each test builds its own. The bounds asserted
are the behaviour under test (a hang is the bug), with a generous margin for a loaded machine.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.metrics import Counter, MeterProvider
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from serve_drift.telemetry.bounded import (
    BoundedProviders,
    CountingBatchSpanProcessor,
    GuardedMetricExporter,
    GuardedSpanExporter,
    Ledger,
)

MARGIN_S = 0.75


class HangingSpanExporter(SpanExporter):
    """Blocks every export until released; ``shutdown`` releases it only if ``obeys_shutdown``."""

    def __init__(self, *, obeys_shutdown: bool) -> None:
        self.release = threading.Event()
        self.calls = 0
        self._obeys_shutdown = obeys_shutdown

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.calls += 1
        self.release.wait()
        return SpanExportResult.FAILURE

    def shutdown(self) -> None:
        if self._obeys_shutdown:  # like the gRPC exporter: closing the channel cancels the call
            self.release.set()


class CollectingSpanExporter(SpanExporter):
    def __init__(self) -> None:
        self.spans: list[ReadableSpan] = []

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans.extend(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass


class Pipeline:
    """A tracer provider over one guarded exporter, with its bounded controls."""

    def __init__(self, exporter: SpanExporter) -> None:
        self.ledger = Ledger()
        self.guarded = GuardedSpanExporter(exporter, ledger=self.ledger)
        self.provider = TracerProvider(shutdown_on_exit=False)
        # A long delay: nothing is exported until a flush or shutdown asks.
        self.provider.add_span_processor(
            CountingBatchSpanProcessor(
                self.guarded, ledger=self.ledger, schedule_delay_millis=60_000
            )
        )
        self.bounded = BoundedProviders(
            tracer_provider=self.provider, exporters=[self.guarded], ledger=self.ledger
        )

    def emit(self, n: int) -> None:
        tracer = self.provider.get_tracer("t")
        for i in range(n):
            with tracer.start_as_current_span("s", attributes={"i": i}):
                pass


@pytest.fixture
def hanging() -> Iterator[HangingSpanExporter]:
    exporter = HangingSpanExporter(obeys_shutdown=False)
    yield exporter
    exporter.release.set()  # let the abandoned worker thread finish


def test_flush_returns_within_its_bound_and_keeps_the_spans(
    hanging: HangingSpanExporter,
) -> None:
    pipeline = Pipeline(hanging)
    pipeline.emit(1200)  # three batches of 512

    result = pipeline.bounded.force_flush(timeout_s=0.3)

    assert not result.completed
    assert 0.3 <= result.elapsed_s < 0.3 + MARGIN_S
    assert (result.spans_pending, result.spans_failed, result.spans_exported) == (1200, 0, 0)


def test_a_second_flush_joins_the_first_instead_of_piling_up(
    hanging: HangingSpanExporter,
) -> None:
    pipeline = Pipeline(hanging)
    pipeline.emit(10)
    assert not pipeline.bounded.force_flush(timeout_s=0.2).completed
    assert not pipeline.bounded.force_flush(timeout_s=0.2).completed
    assert hanging.calls == 1  # one export in flight, not one per flush
    hanging.release.set()
    assert pipeline.bounded.force_flush(timeout_s=5).completed


def test_shutdown_aborts_an_exporter_that_obeys_and_counts_every_span_dropped() -> None:
    exporter = HangingSpanExporter(obeys_shutdown=True)
    pipeline = Pipeline(exporter)
    pipeline.emit(1200)

    result = pipeline.bounded.shutdown(timeout_s=0.5)

    assert result.completed  # aborted at 80% of the bound, then finished within it
    assert result.elapsed_s < 0.5 + MARGIN_S
    assert result.spans_dropped == 1200 and result.spans_failed == 1200
    assert exporter.calls == 1  # the later batches were discarded, not exported one by one


def test_shutdown_gives_up_on_an_exporter_that_ignores_it(hanging: HangingSpanExporter) -> None:
    pipeline = Pipeline(hanging)
    pipeline.emit(700)

    result = pipeline.bounded.shutdown(timeout_s=0.4)

    assert not result.completed
    assert 0.4 <= result.elapsed_s < 0.4 + MARGIN_S
    assert result.spans_dropped == 700 and result.spans_exported == 0
    assert pipeline.bounded.shutdown(timeout_s=10) is result  # once; no second wait


def test_shutdown_waits_behind_a_hung_flush_only_until_its_bound() -> None:
    exporter = HangingSpanExporter(obeys_shutdown=True)
    pipeline = Pipeline(exporter)
    pipeline.emit(5)
    assert not pipeline.bounded.force_flush(timeout_s=0.1).completed

    result = pipeline.bounded.shutdown(timeout_s=0.5)

    assert result.completed and result.elapsed_s < 0.5 + MARGIN_S
    assert result.spans_dropped == 5


def test_healthy_exporter_delivers_everything_and_nothing_is_counted_dropped() -> None:
    exporter = CollectingSpanExporter()
    pipeline = Pipeline(exporter)
    pipeline.emit(1500)

    flushed = pipeline.bounded.force_flush(timeout_s=5)
    pipeline.emit(20)
    result = pipeline.bounded.shutdown(timeout_s=5)

    assert flushed.completed and flushed.spans_exported == 1500
    assert result.completed and result.spans_exported == 1520 and result.spans_dropped == 0
    assert len(exporter.spans) == 1520
    assert pipeline.bounded.force_flush(timeout_s=1).completed  # after shutdown: a no-op


def test_unsampled_spans_are_not_counted() -> None:
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

    ledger = Ledger()
    exporter = GuardedSpanExporter(CollectingSpanExporter(), ledger=ledger)
    provider = TracerProvider(sampler=ALWAYS_OFF, shutdown_on_exit=False)
    provider.add_span_processor(CountingBatchSpanProcessor(exporter, ledger=ledger))
    with provider.get_tracer("t").start_as_current_span("never-exported"):
        pass
    bounded = BoundedProviders(tracer_provider=provider, exporters=[exporter], ledger=ledger)
    result = bounded.shutdown(timeout_s=2)
    assert result.completed and result.spans_pending == 0 and result.spans_exported == 0


class HangingMetricExporter(MetricExporter):
    def __init__(
        self, *, temporality: AggregationTemporality = AggregationTemporality.CUMULATIVE
    ) -> None:
        super().__init__(preferred_temporality={Counter: temporality})
        self.release = threading.Event()
        self.exported: list[MetricsData] = []

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object
    ) -> MetricExportResult:
        self.release.wait()
        self.exported.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.release.set()


def _meter_pipeline(inner: MetricExporter) -> tuple[MeterProvider, BoundedProviders]:
    ledger = Ledger()
    guarded = GuardedMetricExporter(inner, ledger=ledger)
    reader = PeriodicExportingMetricReader(guarded, export_interval_millis=60_000)
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    return provider, BoundedProviders(meter_provider=provider, exporters=[guarded], ledger=ledger)


def test_metric_shutdown_is_bounded_and_counts_points() -> None:
    inner = HangingMetricExporter()
    provider, bounded = _meter_pipeline(inner)
    counter = provider.get_meter("t").create_counter("serve_drift.test.c")
    for route in ("a", "b", "c"):
        counter.add(1, {"route": route})

    flushed = bounded.force_flush(timeout_s=0.2)
    assert not flushed.completed and flushed.metric_points_pending == 3

    result = bounded.shutdown(timeout_s=0.5)
    assert result.completed and result.elapsed_s < 0.5 + MARGIN_S
    # The aborted exporter was released: its flush export landed; the shutdown's was discarded.
    assert result.metric_points_exported == 3 and result.metric_points_failed == 3
    assert result.metric_points_pending == 0 and len(inner.exported) == 1


def test_guarded_metric_exporter_keeps_the_exporters_temporality() -> None:
    inner = HangingMetricExporter(temporality=AggregationTemporality.DELTA)
    inner.release.set()
    provider, bounded = _meter_pipeline(inner)
    counter = provider.get_meter("t").create_counter("serve_drift.test.delta")
    counter.add(4)
    assert bounded.force_flush(timeout_s=5).completed
    counter.add(1)
    assert bounded.shutdown(timeout_s=5).completed
    values = [
        point.value
        for data in inner.exported
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        for point in metric.data.data_points
    ]
    assert values == [4, 1]  # delta, as the wrapped exporter asked; cumulative would be [4, 5]


def test_flush_and_shutdown_start_no_thread_per_call(hanging: HangingSpanExporter) -> None:
    pipeline = Pipeline(hanging)
    pipeline.emit(3)
    before = threading.active_count()
    for _ in range(5):
        pipeline.bounded.force_flush(timeout_s=0.05)
    pipeline.bounded.shutdown(timeout_s=0.2)
    time.sleep(0.05)
    assert threading.active_count() <= before
