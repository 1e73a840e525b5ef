"""Opt-in OpenTelemetry SDK setup for a process that runs serve-drift code.

The library itself only uses the OpenTelemetry *API*. Importing serve-drift never installs a
provider; :func:`configure_telemetry` does, once per process (a Ray Serve replica, the drift
monitor, a script), from the standard ``OTEL_*`` environment variables:

- ``OTEL_SDK_DISABLED=true`` installs nothing;
- ``OTEL_TRACES_EXPORTER`` / ``OTEL_METRICS_EXPORTER``: ``otlp`` (default), ``console``, ``none``
  (a comma-separated list is accepted); metrics also take ``ray``, into Ray's metrics agent for
  Prometheus to scrape (:mod:`serve_drift.telemetry.ray_metrics`);
- ``OTEL_EXPORTER_OTLP_ENDPOINT`` and ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_ENDPOINT``;
- ``OTEL_EXPORTER_OTLP_PROTOCOL`` and ``OTEL_EXPORTER_OTLP_{TRACES,METRICS}_PROTOCOL``:
  ``grpc`` (default) or ``http/protobuf``;
- ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_METRIC_EXPORT_INTERVAL``,
  ``OTEL_BSP_*`` and the OTLP exporters' own variables (headers, timeout, compression,
  certificates, insecure, temporality preference), which the exporters read themselves.

When the exporter is left at its default and no OTLP endpoint is set for a signal, nothing is
sent to ``localhost:4317`` on the off chance: the signal goes to JSON-lines files
(``spans-<pid>.jsonl``, ``metrics-<pid>.jsonl``) under ``fallback_dir``.

Ray Serve's own tracing may already have installed SDK providers in a replica. Only the first
``set_*_provider`` call in a process takes effect, so an existing provider is left unchanged.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import os
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
    SpanExportResult,
)

from serve_drift import _env

__all__ = ["TelemetryDestination", "configure_telemetry", "force_flush"]

_DEFAULT_SERVICE_NAME = "serve-drift"
_DEFAULT_INTERVAL_MS = 10_000.0
_EXISTING = "existing provider (left unchanged)"
_OTLP_CLASSES = {
    ("traces", "grpc"): "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter",
    ("traces", "http/protobuf"): (
        "opentelemetry.exporter.otlp.proto.http.trace_exporter:OTLPSpanExporter"
    ),
    ("metrics", "grpc"): (
        "opentelemetry.exporter.otlp.proto.grpc.metric_exporter:OTLPMetricExporter"
    ),
    ("metrics", "http/protobuf"): (
        "opentelemetry.exporter.otlp.proto.http.metric_exporter:OTLPMetricExporter"
    ),
}
_DEFAULT_ENDPOINTS = {"grpc": "http://localhost:4317", "http/protobuf": "http://localhost:4318"}
_FILE_PREFIXES = {"traces": "spans", "metrics": "metrics"}
_KNOWN_EXPORTERS = {"otlp", "console", "none", "ray"}


@dataclass(frozen=True)
class TelemetryDestination:
    """Where each signal of this process goes, in words.

    Values look like ``"otlp grpc http://127.0.0.1:4317"``,
    ``"otlp http/protobuf http://collector:4318/v1/traces"``, ``"file /path/spans-<pid>.jsonl"``,
    ``"console"``, ``"existing provider (left unchanged)"`` or ``"none"``. A problem with the
    environment (an unsupported value, an exporter that could not be built) is appended in
    parentheses, e.g. ``"file /tmp/t/spans-7.jsonl (OTEL_TRACES_EXPORTER='zipkin' is not
    supported)"``. ``logs`` is ``None``: this helper does not configure a log pipeline.
    """

    traces: str
    metrics: str
    logs: str | None = None


@dataclass
class _State:
    result: TelemetryDestination | None = None
    tracer_provider: SDKTracerProvider | None = None
    meter_provider: SDKMeterProvider | None = None


_LOCK = threading.Lock()
_STATE = _State()


@dataclass(frozen=True)
class _Plan:
    resource: Resource
    fallback_dir: Path


def configure_telemetry(
    *,
    service_name: str | None = None,
    fallback_dir: str | os.PathLike[str] | None = None,
    metric_export_interval_ms: int | None = None,
) -> TelemetryDestination:
    """Install OpenTelemetry SDK tracer and meter providers for this process, once.

    Idempotent: later calls return the first call's result and change nothing. Never raises
    because of the environment; problems are reported in the returned destination.

    Example::

        >>> from serve_drift.telemetry.setup import configure_telemetry, force_flush
        >>> dest = configure_telemetry(service_name="digits-app")  # doctest: +SKIP
        >>> dest.traces  # doctest: +SKIP
        'file /srv/.serve-drift/telemetry/spans-4242.jsonl'
        >>> force_flush()  # doctest: +SKIP
    """
    with _LOCK:
        if _STATE.result is None:
            _STATE.result = _configure(service_name, fallback_dir, metric_export_interval_ms)
        return _STATE.result


def force_flush(timeout_ms: int = 5000) -> None:
    """Export everything buffered by the providers this module installed (no-op otherwise)."""
    for provider in (_STATE.tracer_provider, _STATE.meter_provider):
        if provider is None:
            continue
        # Flushing telemetry must never break the caller.
        with contextlib.suppress(Exception):
            provider.force_flush(timeout_ms)


def _configure(
    service_name: str | None,
    fallback_dir: str | os.PathLike[str] | None,
    interval_ms: int | None,
) -> TelemetryDestination:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        off = "none (OTEL_SDK_DISABLED=true)"
        return TelemetryDestination(traces=off, metrics=off)
    plan = _Plan(
        resource=_build_resource(service_name),
        fallback_dir=Path(fallback_dir) if fallback_dir is not None else _env.telemetry_dir(),
    )
    return TelemetryDestination(
        traces=_guarded(lambda: _setup_traces(plan)),
        metrics=_guarded(lambda: _setup_metrics(plan, interval_ms)),
    )


def _guarded(setup: Callable[[], str]) -> str:
    # Last line of defence: telemetry setup must never take the process down.
    try:
        return setup()
    except Exception as exc:
        return f"none (setup failed: {type(exc).__name__}: {exc})"


# --- resource -------------------------------------------------------------------------------


def _build_resource(service_name: str | None) -> Resource:
    attributes: dict[str, Any] = {"process.pid": os.getpid(), **_host_and_ray_attributes()}
    if service_name:
        attributes["service.name"] = service_name
    try:
        resource = Resource.create(attributes)  # merges OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME
    except Exception:
        resource = Resource(attributes)
    # The SDK's placeholder ("unknown_service:python") means nobody chose a name.
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": _DEFAULT_SERVICE_NAME}))
    return resource


def _host_and_ray_attributes() -> dict[str, Any]:
    # Environment only: Ray sets RAY_JOB_ID in its worker processes; no Ray import needed.
    attributes: dict[str, Any] = {}
    with contextlib.suppress(OSError):
        attributes["host.name"] = socket.gethostname()
    if job_id := os.environ.get("RAY_JOB_ID", "").strip():
        attributes["ray.job_id"] = job_id
    return attributes


# --- per-signal setup -----------------------------------------------------------------------


def _setup_traces(plan: _Plan) -> str:
    existing = trace.get_tracer_provider()
    if not isinstance(existing, trace.ProxyTracerProvider):
        return _existing_text(existing, SDKTracerProvider)
    exporters, text = _build_exporters("traces", plan)
    if not exporters:
        return text
    provider = SDKTracerProvider(resource=plan.resource)
    for exporter in exporters:
        processor, note = _batch_processor(exporter)
        provider.add_span_processor(processor)
        text = _with_note(text, note)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:  # another thread installed one first
        provider.shutdown()
        return _existing_text(trace.get_tracer_provider(), SDKTracerProvider)
    _STATE.tracer_provider = provider
    return text


def _setup_metrics(plan: _Plan, interval_arg: int | None) -> str:
    existing = metrics.get_meter_provider()
    if not _is_proxy_meter_provider(existing):
        return _existing_text(existing, SDKMeterProvider)
    exporters, text = _build_exporters("metrics", plan)
    if not exporters:
        return text
    interval_ms, note = _metric_interval_ms(interval_arg)
    readers = [
        PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        for exporter in exporters
    ]
    provider = SDKMeterProvider(resource=plan.resource, metric_readers=readers)
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:  # another thread installed one first
        provider.shutdown()
        return _existing_text(metrics.get_meter_provider(), SDKMeterProvider)
    _STATE.meter_provider = provider
    return _with_note(text, note)


def _is_proxy_meter_provider(provider: object) -> bool:
    # The API's placeholder class is private; its name is stable across releases.
    return type(provider).__name__ == "_ProxyMeterProvider"


def _existing_text(provider: object, sdk_class: type) -> str:
    if isinstance(provider, sdk_class):
        return _EXISTING
    return f"existing provider {type(provider).__name__} (left unchanged)"


def _batch_processor(exporter: SpanExporter) -> tuple[BatchSpanProcessor, str | None]:
    try:
        return BatchSpanProcessor(exporter), None  # reads OTEL_BSP_*
    except ValueError as exc:  # e.g. OTEL_BSP_SCHEDULE_DELAY=0 fails the SDK's validation
        defaults = BatchSpanProcessor(
            exporter,
            max_queue_size=2048,
            schedule_delay_millis=5000,
            max_export_batch_size=512,
            export_timeout_millis=30000,
        )
        return defaults, f"invalid OTEL_BSP_* ({exc}), using defaults"


def _metric_interval_ms(arg: int | None) -> tuple[float, str | None]:
    if arg is not None:
        source, raw = "metric_export_interval_ms", str(arg)
    else:
        source, raw = (
            "OTEL_METRIC_EXPORT_INTERVAL",
            os.environ.get("OTEL_METRIC_EXPORT_INTERVAL", ""),
        )
        if not raw.strip():
            return _DEFAULT_INTERVAL_MS, None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if math.isfinite(value) and value > 0:
        return value, None
    return _DEFAULT_INTERVAL_MS, f"{source}={raw!r} is invalid, using {_DEFAULT_INTERVAL_MS:.0f} ms"


# --- exporter choice ------------------------------------------------------------------------


def _build_exporters(signal: str, plan: _Plan) -> tuple[list[Any], str]:
    names, note = _exporter_names(signal)
    exporters: list[Any] = []
    texts: list[str] = []
    for name in names:
        exporter, text = _build_one(signal, name, plan)
        if exporter is not None:
            exporters.append(exporter)
        texts.append(text)
    return exporters, _with_note(" + ".join(texts) or "none", note)


def _exporter_names(signal: str) -> tuple[list[str], str | None]:
    """The exporters asked for; ``default`` means otlp if an endpoint is set, else files."""
    var = f"OTEL_{signal.upper()}_EXPORTER"
    raw = os.environ.get(var, "")
    names = list(dict.fromkeys(n.strip().lower() for n in raw.split(",") if n.strip()))
    if not names:
        return ["default"], None
    unknown = [n for n in names if n not in _KNOWN_EXPORTERS]
    chosen = [n for n in names if n in _KNOWN_EXPORTERS and n != "none"]
    if unknown and not chosen:
        chosen = ["default"]
    note = f"{var}={raw!r} is not supported" if unknown else None
    return chosen, note


def _build_one(signal: str, name: str, plan: _Plan) -> tuple[Any, str]:
    if name == "ray":  # metrics into Ray's metrics agent, which Prometheus scrapes
        if signal != "metrics":
            return None, "none (ray exports metrics only)"
        from serve_drift.telemetry.ray_metrics import RayMetricsExporter

        return RayMetricsExporter(), "ray metrics (Prometheus scrapes Ray's metrics agent)"
    if name == "console":
        return (ConsoleSpanExporter() if signal == "traces" else ConsoleMetricExporter()), "console"
    if name == "default" and not _endpoint_configured(signal):
        return _file_exporter(signal, plan)
    try:
        return _otlp_exporter(signal)
    except Exception as exc:  # bad timeout/compression/certificate values raise in __init__
        exporter, text = _file_exporter(signal, plan)
        return exporter, f"{text} (OTLP exporter failed: {type(exc).__name__}: {exc})"


def _endpoint_configured(signal: str) -> bool:
    names = (f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    return any(os.environ.get(name, "").strip() for name in names)


def _otlp_exporter(signal: str) -> tuple[Any, str]:
    protocol, note = _otlp_protocol(signal)
    module_name, _, class_name = _OTLP_CLASSES[(signal, protocol)].partition(":")
    exporter_class = getattr(importlib.import_module(module_name), class_name)
    exporter = exporter_class()  # reads its own OTEL_EXPORTER_OTLP_* variables
    return exporter, _with_note(f"otlp {protocol} {_otlp_endpoint(signal, protocol)}", note)


def _otlp_protocol(signal: str) -> tuple[str, str | None]:
    for var in (f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        raw = os.environ.get(var, "").strip()
        if raw:
            break
    else:
        return "grpc", None
    value = raw.lower()
    if value in ("grpc", "http/protobuf"):
        return value, None
    if value == "http/json":  # collectors accept protobuf on the same HTTP endpoint
        return "http/protobuf", f"{var}={raw!r} is not supported, using http/protobuf"
    return "grpc", f"{var}={raw!r} is not supported, using grpc"


def _otlp_endpoint(signal: str, protocol: str) -> str:
    """The URL the exporter will use, resolved the way the exporters resolve it."""
    specific = os.environ.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT", "").strip()
    if specific:
        return specific
    base = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip() or _DEFAULT_ENDPOINTS[protocol]
    if protocol == "grpc":
        return base
    return f"{base.rstrip('/')}/v1/{signal}"


def _file_exporter(signal: str, plan: _Plan) -> tuple[Any, str]:
    path = plan.fallback_dir / f"{_FILE_PREFIXES[signal]}-{os.getpid()}.jsonl"
    try:
        plan.fallback_dir.mkdir(parents=True, exist_ok=True)
        exporter_class = _JsonLinesSpanExporter if signal == "traces" else _JsonLinesMetricExporter
        return exporter_class(path), f"file {path}"
    except OSError as exc:
        return None, f"none (cannot write {path}: {exc})"


def _with_note(text: str, note: str | None) -> str:
    return f"{text} ({note})" if note else text


# --- JSON-lines file exporters --------------------------------------------------------------


def _open_append(path: Path) -> IO[str]:
    # Line-buffered, and the console exporters flush after every export: readers see lines
    # promptly. Append, so a restarted process with a reused pid does not erase history.
    return open(path, "a", encoding="utf-8", buffering=1)


def _span_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


def _metrics_line(data: MetricsData) -> str:
    return data.to_json(indent=None) + "\n"


class _JsonLinesSpanExporter(ConsoleSpanExporter):
    """One ``ReadableSpan.to_json()`` object per line; closes its file on shutdown."""

    def __init__(self, path: Path) -> None:
        super().__init__(out=_open_append(path), formatter=_span_line)
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        with self._lock:
            if self.out.closed:
                return SpanExportResult.FAILURE
            return super().export(spans)

    def shutdown(self) -> None:
        with self._lock:
            self.out.close()


class _JsonLinesMetricExporter(ConsoleMetricExporter):
    """One ``MetricsData.to_json()`` object per collection per line; closes on shutdown."""

    def __init__(self, path: Path) -> None:
        super().__init__(out=_open_append(path), formatter=_metrics_line)
        self._lock = threading.Lock()

    def export(
        self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: Any
    ) -> MetricExportResult:
        with self._lock:
            if self.out.closed:
                return MetricExportResult.FAILURE
            return super().export(metrics_data, timeout_millis, **kwargs)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:
        with self._lock:
            self.out.close()
