"""Flush and shutdown of SDK providers that return within a bound, whatever the exporter does.

Why: the SDK's ``BatchSpanProcessor.force_flush`` ignores its timeout and exports every queued
batch in turn, and an OTLP exporter retries each batch with backoff up to its own timeout
(``OTEL_EXPORTER_OTLP_TIMEOUT``, 10 s by default). Against an endpoint that never answers, a
flush of a few thousand spans took 50 s and process exit another 20 s.

So each provider's flush and shutdown run on a thread of their own, and the caller waits at most
the bound. A flush that overruns keeps going in the background (nothing is dropped; a later
flush waits for it instead of starting another). A shutdown that overruns is cut short: after
80% of the bound the exporters are aborted (further batches are discarded at once and an
in-flight gRPC call is cancelled), and whatever has not been exported when the bound is reached
is dropped. Every exporter is wrapped so that those drops are counted, not silent.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> ledger = Ledger()
>>> exporter = GuardedSpanExporter(InMemorySpanExporter(), ledger=ledger)
>>> provider = TracerProvider(shutdown_on_exit=False)
>>> provider.add_span_processor(CountingBatchSpanProcessor(exporter, ledger=ledger))
>>> with provider.get_tracer("doc").start_as_current_span("one"):
...     pass
>>> bounded = BoundedProviders(tracer_provider=provider, exporters=[exporter], ledger=ledger)
>>> result = bounded.shutdown(timeout_s=2.0)
>>> result.completed, result.spans_exported, result.spans_dropped
(True, 1, 0)
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

__all__ = [
    "BoundedProviders",
    "CountingBatchSpanProcessor",
    "GuardedMetricExporter",
    "GuardedSpanExporter",
    "Ledger",
    "TelemetryFlushResult",
]

logger = logging.getLogger(__name__)

# Share of a shutdown's bound spent waiting politely before the exporters are aborted; the rest
# lets aborted calls return, so the providers usually still finish inside the bound.
_GRACEFUL_SHARE = 0.8


@dataclass(frozen=True)
class TelemetryFlushResult:
    """What a bounded flush or shutdown achieved; the counts are totals since configuration.

    - ``completed``: every provider finished within ``timeout_s``;
    - ``spans_exported`` / ``metric_points_exported``: accepted by an exporter;
    - ``spans_failed`` / ``metric_points_failed``: refused by an exporter (after its own
      retries), or discarded because a shutdown ran out of time;
    - ``spans_pending``: ended spans not yet through an exporter: still queued or in flight, or
      dropped by the SDK's full queue; ``metric_points_pending``: in an export still running.

    After a shutdown, pending telemetry is lost: ``spans_dropped`` and ``metric_points_dropped``
    add it to the failed counts.
    """

    completed: bool
    elapsed_s: float
    timeout_s: float
    spans_exported: int = 0
    spans_failed: int = 0
    spans_pending: int = 0
    metric_points_exported: int = 0
    metric_points_failed: int = 0
    metric_points_pending: int = 0

    @property
    def spans_dropped(self) -> int:
        return self.spans_failed + self.spans_pending

    @property
    def metric_points_dropped(self) -> int:
        return self.metric_points_failed + self.metric_points_pending


class Ledger:
    """Thread-safe counts of what entered the pipelines and what came out of the exporters."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()
        self._spans_ended = 0  # apart: counted once per span, so kept to one addition

    def add(self, **deltas: int) -> None:
        with self._lock:
            self._counts.update(deltas)

    def span_ended(self) -> None:
        with self._lock:
            self._spans_ended += 1

    def result(
        self, *, completed: bool, elapsed_s: float, timeout_s: float
    ) -> TelemetryFlushResult:
        with self._lock:
            c = Counter(self._counts)
            c["spans_ended"] += self._spans_ended
        done = c["spans_exported"] + c["spans_failed"]
        return TelemetryFlushResult(
            completed=completed,
            elapsed_s=elapsed_s,
            timeout_s=timeout_s,
            spans_exported=c["spans_exported"],
            spans_failed=c["spans_failed"],
            spans_pending=max(0, c["spans_ended"] - done),
            metric_points_exported=c["points_exported"],
            metric_points_failed=c["points_failed"],
            metric_points_pending=c["points_in_flight"],
        )


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """A ``BatchSpanProcessor`` that counts the spans it is handed (only sampled ones export).

    An exporter with an ``encode_ended(span)`` method (serve-drift's OTLP/gRPC one) gets its
    spans in the form that method returns, made as each span ends: a request span then waits
    for its export as one tuple of atoms, which the garbage collector stops tracking, instead
    of a dozen objects it keeps traversing (:class:`~.span_encoding.SpanEncoder`).
    """

    def __init__(self, exporter: SpanExporter, *, ledger: Ledger, **options: Any) -> None:
        super().__init__(exporter, **options)
        self._ledger = ledger
        encode = getattr(exporter, "encode_ended", None)
        # How the SDK's processor queues an ended span (absent in another SDK: its own on_end).
        emit = getattr(getattr(self, "_batch_processor", None), "emit", None)
        self._encoded = (encode, emit) if callable(encode) and callable(emit) else None

    def on_end(self, span: ReadableSpan) -> None:
        if span.context is None or not span.context.trace_flags.sampled:
            return  # as the SDK's processor: only sampled spans are exported
        self._ledger.span_ended()
        if self._encoded is None:
            super().on_end(span)
            return
        encode, emit = self._encoded
        try:
            item: object = encode(span)
        except Exception:  # never into the caller: the exporter encodes it with its batch
            logger.debug("serve-drift: span conversion failed, left to the export", exc_info=True)
            item = span
        emit(item)


class _Abortable:
    """Shared by both guarded exporters: abort once, shut the wrapped exporter down once."""

    def __init__(self, shutdown: Callable[[], object]) -> None:
        self._inner_shutdown = shutdown
        self._lock = threading.Lock()
        self._shut = False
        self.aborted = threading.Event()

    def abort(self) -> None:
        self.aborted.set()
        self.shutdown()

    def shutdown(self) -> None:
        with self._lock:
            if self._shut:
                return
            self._shut = True
        try:
            self._inner_shutdown()  # OTLP: sets its shutdown event (no more retries), closes
        except Exception:
            logger.debug("serve-drift: exporter shutdown failed", exc_info=True)


class GuardedSpanExporter(SpanExporter):
    """Counts what the wrapped exporter delivers; after :meth:`abort`, discards (and counts)."""

    def __init__(self, inner: SpanExporter, *, ledger: Ledger) -> None:
        self._inner = inner
        self._ledger = ledger
        self._state = _Abortable(inner.shutdown)

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = SpanExportResult.FAILURE
        try:
            if not self._state.aborted.is_set():
                result = self._inner.export(spans)
        finally:
            exported = result is SpanExportResult.SUCCESS
            self._ledger.add(**{"spans_exported" if exported else "spans_failed": len(spans)})
        return result

    def abort(self) -> None:
        self._state.abort()

    def shutdown(self) -> None:
        self._state.shutdown()

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return self._inner.force_flush(timeout_millis)

    @property
    def encode_ended(self) -> Callable[[ReadableSpan], object] | None:
        """The wrapped exporter's, if it has one (see :class:`CountingBatchSpanProcessor`)."""
        encode = getattr(self._inner, "encode_ended", None)
        return encode if callable(encode) else None


class GuardedMetricExporter(MetricExporter):
    """The metric counterpart of :class:`GuardedSpanExporter` (counts data points)."""

    def __init__(self, inner: MetricExporter, *, ledger: Ledger) -> None:
        # The periodic reader reads these two attributes of its exporter: pass them through.
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self._inner = inner
        self._ledger = ledger
        self._state = _Abortable(inner.shutdown)

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        points = _count_points(metrics_data)
        result = MetricExportResult.FAILURE
        self._ledger.add(points_in_flight=points)
        try:
            if not self._state.aborted.is_set():
                result = self._inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
        finally:
            exported = result is MetricExportResult.SUCCESS
            key = "points_exported" if exported else "points_failed"
            self._ledger.add(points_in_flight=-points, **{key: points})
        return result

    def abort(self) -> None:
        self._state.abort()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self._inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        self._state.shutdown()


def _count_points(data: MetricsData) -> int:
    return sum(
        len(metric.data.data_points)
        for resource_metrics in data.resource_metrics
        for scope_metrics in resource_metrics.scope_metrics
        for metric in scope_metrics.metrics
    )


class _Guarded(Protocol):
    def abort(self) -> None: ...


# --- running provider calls with a bound ----------------------------------------------------


@dataclass
class _Job:
    call: Callable[[], object]
    done: threading.Event = field(default_factory=threading.Event)


def _run(job: _Job) -> None:
    try:
        job.call()
    except Exception:  # the SDK raises when a reader fails; the caller only learns "done"
        logger.debug("serve-drift: telemetry flush or shutdown raised", exc_info=True)
    finally:
        job.done.set()


class _Worker:
    """Runs one provider's flush and shutdown calls in order, on a thread of its own.

    The thread is started with the provider, not at shutdown: Python 3.12 refuses to start
    threads from ``atexit`` handlers, where the bounded shutdown at process exit runs.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job] | None = None
        self._thread: threading.Thread | None = None
        self._flush: _Job | None = None
        with self._lock:
            self._ensure_thread()

    def submit(self, call: Callable[[], object]) -> threading.Event:
        return self._enqueue(_Job(call))

    def flush(self, call: Callable[[], object]) -> threading.Event:
        """Like :meth:`submit`, but joins a flush that is still running instead of queueing."""
        with self._lock:
            if self._flush is not None and not self._flush.done.is_set():
                return self._flush.done
            job = self._flush = _Job(call)
        return self._enqueue(job)

    def _enqueue(self, job: _Job) -> threading.Event:
        with self._lock:
            jobs = self._ensure_thread()
            if jobs is not None:
                jobs.put(job)
        if jobs is None:  # no thread can be started (a fork child at exit): SDK timeouts only
            _run(job)
        return job.done

    def _ensure_thread(self) -> queue.SimpleQueue[_Job] | None:
        # After os.fork the child has none of the parent's threads: start one again.
        if self._thread is not None and self._thread.is_alive():
            return self._jobs
        jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        thread = threading.Thread(target=_loop, args=(jobs,), name=self._name, daemon=True)
        try:
            thread.start()
        except RuntimeError:
            return None
        self._jobs, self._thread = jobs, thread
        return jobs


def _loop(jobs: queue.SimpleQueue[_Job]) -> None:
    while True:
        _run(jobs.get())


def _wait_all(events: Sequence[threading.Event], *, deadline: float) -> bool:
    return all(event.wait(max(0.0, deadline - time.monotonic())) for event in events)


class BoundedProviders:
    """The SDK providers one process installed, with bounded :meth:`force_flush` and
    :meth:`shutdown`. Neither raises; both return a :class:`TelemetryFlushResult`."""

    def __init__(
        self,
        *,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        exporters: Sequence[_Guarded] = (),
        ledger: Ledger,
    ) -> None:
        self._ledger = ledger
        self._exporters: list[_Guarded] = list(exporters)
        self._providers: list[tuple[Any, _Worker]] = []
        self._shutdown: TelemetryFlushResult | None = None
        self._shutdown_lock = threading.Lock()
        for provider, name in ((tracer_provider, "traces"), (meter_provider, "metrics")):
            if provider is not None:
                self.add(provider, name=name)

    @property
    def ledger(self) -> Ledger:
        return self._ledger

    @property
    def empty(self) -> bool:
        return not self._providers

    def add(self, provider: TracerProvider | MeterProvider, *, name: str) -> None:
        """Track one more provider (its exporters go to :meth:`add_exporters`)."""
        self._providers.append((provider, _Worker(f"serve-drift-otel-{name}")))

    def add_exporters(self, exporters: Sequence[_Guarded]) -> None:
        self._exporters.extend(exporters)

    def force_flush(self, *, timeout_s: float) -> TelemetryFlushResult:
        """Export what is buffered, waiting at most ``timeout_s``; an overrun keeps going."""
        started = time.monotonic()
        if self._shutdown is not None:
            return self._result(completed=True, started=started, timeout_s=timeout_s)
        millis = timeout_s * 1000
        done = [
            worker.flush(functools.partial(provider.force_flush, millis))
            for provider, worker in self._providers
        ]
        completed = _wait_all(done, deadline=started + timeout_s)
        return self._result(completed=completed, started=started, timeout_s=timeout_s)

    def shutdown(self, *, timeout_s: float) -> TelemetryFlushResult:
        """Flush and stop every provider within ``timeout_s``; what is left then is dropped."""
        with self._shutdown_lock:  # once: later calls get the first call's result
            if self._shutdown is None:
                self._shutdown = self._shutdown_once(timeout_s)
                _log_losses(self._shutdown)
            return self._shutdown

    def _shutdown_once(self, timeout_s: float) -> TelemetryFlushResult:
        started = time.monotonic()
        millis = timeout_s * 1000
        done = [
            worker.submit(functools.partial(_shutdown_provider, provider, millis))
            for provider, worker in self._providers
        ]
        completed = _wait_all(done, deadline=started + timeout_s * _GRACEFUL_SHARE)
        if not completed:
            for exporter in self._exporters:
                exporter.abort()
            completed = _wait_all(done, deadline=started + timeout_s)
        return self._result(completed=completed, started=started, timeout_s=timeout_s)

    def _result(self, *, completed: bool, started: float, timeout_s: float) -> TelemetryFlushResult:
        elapsed_s = time.monotonic() - started
        return self._ledger.result(completed=completed, elapsed_s=elapsed_s, timeout_s=timeout_s)


def _shutdown_provider(provider: TracerProvider | MeterProvider, millis: float) -> None:
    if isinstance(provider, MeterProvider):
        provider.shutdown(timeout_millis=millis)
    else:
        provider.shutdown()  # TracerProvider.shutdown takes no timeout: the bound is ours


def _log_losses(result: TelemetryFlushResult) -> None:
    if result.completed and not (result.spans_dropped or result.metric_points_dropped):
        return
    logger.warning(
        "serve-drift: telemetry shutdown %s after %.2f s (bound %.2f s); not delivered, dropped: "
        "%d spans, %d metric points",
        "completed" if result.completed else "hit its bound",
        result.elapsed_s,
        result.timeout_s,
        result.spans_dropped,
        result.metric_points_dropped,
    )
