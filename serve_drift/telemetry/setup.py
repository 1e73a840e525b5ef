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

The files rotate at ``file_max_bytes`` and keep ``file_backup_count`` rotated copies
(``spans-<pid>.jsonl.1`` and so on), so each takes at most ``(file_backup_count + 1) *
file_max_bytes`` bytes (see :mod:`serve_drift.telemetry.jsonlines`).

:func:`force_flush` and :func:`shutdown_telemetry` return within ``flush_timeout_s`` and
``shutdown_timeout_s`` whatever the exporter does (an OTLP exporter retries each batch up to its
own ``OTEL_EXPORTER_OTLP_TIMEOUT``, which is left as the user set it). The providers are
installed without the SDK's own exit hook, which would flush with no overall bound; a bounded
:func:`shutdown_telemetry` runs at process exit instead. Telemetry still buffered when a shutdown
reaches its bound is dropped, and counted in the returned :class:`TelemetryFlushResult` and in a
warning log line.

Ray Serve's own tracing may already have installed SDK providers in a replica. Only the first
``set_*_provider`` call in a process takes effect, so an existing provider is left unchanged
(and is neither flushed nor shut down here).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import math
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider as SDKMeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SDKTracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SpanExporter

from serve_drift import _env
from serve_drift.telemetry.bounded import (
    BoundedProviders,
    CountingBatchSpanProcessor,
    GuardedMetricExporter,
    GuardedSpanExporter,
    Ledger,
    TelemetryFlushResult,
)
from serve_drift.telemetry.jsonlines import JsonLinesMetricExporter, JsonLinesSpanExporter

__all__ = [
    "TelemetryDestination",
    "TelemetryFlushResult",
    "configure_telemetry",
    "force_flush",
    "shutdown_telemetry",
]

logger = logging.getLogger(__name__)

_DEFAULT_SERVICE_NAME = "serve-drift"
_DEFAULT_INTERVAL_MS = 10_000.0
_EXISTING = "existing provider (left unchanged)"
_SDK_GRPC_SPAN_EXPORTER = "opentelemetry.exporter.otlp.proto.grpc.trace_exporter:OTLPSpanExporter"
_OTLP_CLASSES = {
    # The SDK's exporter with a cheaper span encoding (a span per request is exported).
    ("traces", "grpc"): "serve_drift.telemetry.otlp_grpc:OTLPSpanExporter",
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


@dataclass(frozen=True)
class _Bounds:
    """The limits this process's telemetry runs under, fixed by the first configuration."""

    flush_timeout_s: float
    shutdown_timeout_s: float
    file_max_bytes: int
    file_backup_count: int


@dataclass
class _State:
    result: TelemetryDestination | None = None
    bounds: _Bounds | None = None
    providers: BoundedProviders | None = None
    exit_hook: bool = False


_LOCK = threading.Lock()
_STATE = _State()


@dataclass(frozen=True)
class _Plan:
    resource: Resource
    fallback_dir: Path
    bounds: _Bounds
    providers: BoundedProviders


def configure_telemetry(
    *,
    service_name: str | None = None,
    fallback_dir: str | os.PathLike[str] | None = None,
    metric_export_interval_ms: int | None = None,
    flush_timeout_s: float | None = None,
    shutdown_timeout_s: float | None = None,
    file_max_bytes: int | None = None,
    file_backup_count: int | None = None,
) -> TelemetryDestination:
    """Install OpenTelemetry SDK tracer and meter providers for this process, once.

    Idempotent: later calls return the first call's result and change nothing. Never raises
    because of the environment; problems are reported in the returned destination.

    ``flush_timeout_s`` and ``shutdown_timeout_s`` bound :func:`force_flush` and
    :func:`shutdown_telemetry` (which also runs at process exit); ``file_max_bytes`` and
    ``file_backup_count`` bound the JSON-lines fallback files. Left out, each comes from its
    ``SERVE_DRIFT_TELEMETRY_*`` knob or the default: 5 s, 5 s, 16 MiB, 3 rotated files.
    ``TelemetryConfig.sdk_arguments()`` gives all four from a config.

    Example::

        >>> from serve_drift.telemetry.setup import configure_telemetry, shutdown_telemetry
        >>> dest = configure_telemetry(service_name="digits-app")  # doctest: +SKIP
        >>> dest.traces  # doctest: +SKIP
        'file /srv/.serve-drift/telemetry/spans-4242.jsonl'
        >>> shutdown_telemetry().completed  # doctest: +SKIP
        True
    """
    with _LOCK:
        if _STATE.result is None:
            bounds, notes = _resolve_bounds(
                flush_timeout_s=flush_timeout_s,
                shutdown_timeout_s=shutdown_timeout_s,
                file_max_bytes=file_max_bytes,
                file_backup_count=file_backup_count,
            )
            _STATE.bounds = bounds
            result = _configure(service_name, fallback_dir, metric_export_interval_ms, bounds)
            _STATE.result = _with_notes(result, notes)
        return _STATE.result


def force_flush(*, timeout_s: float | None = None) -> TelemetryFlushResult:
    """Export what the providers installed here have buffered, waiting at most ``timeout_s``.

    ``None`` means the configured ``flush_timeout_s``. When the bound is reached the flush goes
    on in the background (nothing is dropped) and ``completed`` is ``False``. A no-op when this
    module installed nothing. Never raises.

    >>> force_flush(timeout_s=1.0).completed  # nothing installed in this process
    True
    """
    timeout_s = _timeout(timeout_s, flush=True)
    return _call_bounded(lambda p: p.force_flush(timeout_s=timeout_s), timeout_s)


def shutdown_telemetry(*, timeout_s: float | None = None) -> TelemetryFlushResult:
    """Flush and shut down the providers installed here, returning within ``timeout_s``.

    ``None`` means the configured ``shutdown_timeout_s``. Spans and metric points not exported
    by then are dropped; the result counts them (``spans_dropped``, ``metric_points_dropped``)
    and a warning is logged. Runs once (later calls return the first result), and at process
    exit. Call it where a process stops serving, e.g. a Ray Serve replica's ``__del__``, which
    Serve calls before it kills the replica (a killed process runs no exit hooks). Never raises.

    >>> shutdown_telemetry(timeout_s=1.0).spans_dropped  # nothing installed in this process
    0
    """
    timeout_s = _timeout(timeout_s, flush=False)
    return _call_bounded(lambda p: p.shutdown(timeout_s=timeout_s), timeout_s)


def _timeout(value: float | None, *, flush: bool) -> float:
    if value is not None and math.isfinite(value) and value >= 0:
        return float(value)
    bounds = _STATE.bounds
    if bounds is None:
        return _env.telemetry_flush_timeout_s() if flush else _env.telemetry_shutdown_timeout_s()
    return bounds.flush_timeout_s if flush else bounds.shutdown_timeout_s


def _call_bounded(
    call: Callable[[BoundedProviders], TelemetryFlushResult], timeout_s: float
) -> TelemetryFlushResult:
    providers = _STATE.providers
    if providers is None:
        return TelemetryFlushResult(completed=True, elapsed_s=0.0, timeout_s=timeout_s)
    try:
        return call(providers)
    except Exception:  # telemetry must never break the caller
        logger.warning("serve-drift: telemetry flush or shutdown failed", exc_info=True)
        return TelemetryFlushResult(completed=False, elapsed_s=0.0, timeout_s=timeout_s)


def _shutdown_at_exit() -> None:
    shutdown_telemetry()


def _configure(
    service_name: str | None,
    fallback_dir: str | os.PathLike[str] | None,
    interval_ms: int | None,
    bounds: _Bounds,
) -> TelemetryDestination:
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        off = "none (OTEL_SDK_DISABLED=true)"
        return TelemetryDestination(traces=off, metrics=off)
    plan = _Plan(
        resource=_build_resource(service_name),
        fallback_dir=Path(fallback_dir) if fallback_dir is not None else _env.telemetry_dir(),
        bounds=bounds,
        providers=BoundedProviders(ledger=Ledger()),
    )
    result = TelemetryDestination(
        traces=_guarded(lambda: _setup_traces(plan)),
        metrics=_guarded(lambda: _setup_metrics(plan, interval_ms)),
    )
    if not plan.providers.empty:
        _STATE.providers = plan.providers
        _register_exit_hook()
    return result


def _register_exit_hook() -> None:
    # Instead of the SDK's per-provider exit hooks, which flush with no overall bound.
    if not _STATE.exit_hook:
        atexit.register(_shutdown_at_exit)
        _STATE.exit_hook = True


# --- bounds ---------------------------------------------------------------------------------


def _resolve_bounds(
    *,
    flush_timeout_s: float | None,
    shutdown_timeout_s: float | None,
    file_max_bytes: int | None,
    file_backup_count: int | None,
) -> tuple[_Bounds, list[str]]:
    checks = (
        _seconds("flush_timeout_s", flush_timeout_s, _env.telemetry_flush_timeout_s),
        _seconds("shutdown_timeout_s", shutdown_timeout_s, _env.telemetry_shutdown_timeout_s),
        _count("file_max_bytes", file_max_bytes, _env.telemetry_file_max_bytes, minimum=1),
        _count("file_backup_count", file_backup_count, _env.telemetry_file_backup_count, minimum=0),
    )
    flush, shutdown, max_bytes, backups = (value for value, _ in checks)
    bounds = _Bounds(
        flush_timeout_s=float(flush),
        shutdown_timeout_s=float(shutdown),
        file_max_bytes=int(max_bytes),
        file_backup_count=int(backups),
    )
    return bounds, [note for _, note in checks if note]


def _seconds(
    name: str, value: float | None, default: Callable[[], float]
) -> tuple[float, str | None]:
    if value is None:
        return default(), None
    if not isinstance(value, bool) and isinstance(value, int | float) and 0 < value < math.inf:
        return float(value), None
    fallback = default()
    return fallback, f"{name}={value!r} is invalid, using {fallback:g} s"


def _count(
    name: str, value: int | None, default: Callable[[], int], *, minimum: int
) -> tuple[int, str | None]:
    if value is None:
        return default(), None
    if not isinstance(value, bool) and isinstance(value, int) and value >= minimum:
        return value, None
    fallback = default()
    return fallback, f"{name}={value!r} is invalid, using {fallback}"


def _with_notes(result: TelemetryDestination, notes: list[str]) -> TelemetryDestination:
    if not notes:
        return result
    note = "; ".join(notes)
    return TelemetryDestination(
        traces=_with_note(result.traces, note), metrics=_with_note(result.metrics, note)
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
    ledger = plan.providers.ledger
    guarded = [GuardedSpanExporter(exporter, ledger=ledger) for exporter in exporters]
    provider = SDKTracerProvider(resource=plan.resource, shutdown_on_exit=False)
    for exporter in guarded:
        processor, note = _batch_processor(exporter, ledger)
        provider.add_span_processor(processor)
        text = _with_note(text, note)
    trace.set_tracer_provider(provider)
    if trace.get_tracer_provider() is not provider:  # another thread installed one first
        provider.shutdown()
        return _existing_text(trace.get_tracer_provider(), SDKTracerProvider)
    plan.providers.add(provider, name="traces")
    plan.providers.add_exporters(guarded)
    return text


def _setup_metrics(plan: _Plan, interval_arg: int | None) -> str:
    existing = metrics.get_meter_provider()
    if not _is_proxy_meter_provider(existing):
        return _existing_text(existing, SDKMeterProvider)
    exporters, text = _build_exporters("metrics", plan)
    if not exporters:
        return text
    interval_ms, note = _metric_interval_ms(interval_arg)
    ledger = plan.providers.ledger
    guarded = [GuardedMetricExporter(exporter, ledger=ledger) for exporter in exporters]
    readers = [
        PeriodicExportingMetricReader(exporter, export_interval_millis=interval_ms)
        for exporter in guarded
    ]
    provider = SDKMeterProvider(
        resource=plan.resource, metric_readers=readers, shutdown_on_exit=False
    )
    metrics.set_meter_provider(provider)
    if metrics.get_meter_provider() is not provider:  # another thread installed one first
        provider.shutdown()
        return _existing_text(metrics.get_meter_provider(), SDKMeterProvider)
    plan.providers.add(provider, name="metrics")
    plan.providers.add_exporters(guarded)
    return _with_note(text, note)


def _is_proxy_meter_provider(provider: object) -> bool:
    # The API's placeholder class is private; its name is stable across releases.
    return type(provider).__name__ == "_ProxyMeterProvider"


def _existing_text(provider: object, sdk_class: type) -> str:
    if isinstance(provider, sdk_class):
        return _EXISTING
    return f"existing provider {type(provider).__name__} (left unchanged)"


def _batch_processor(
    exporter: SpanExporter, ledger: Ledger
) -> tuple[CountingBatchSpanProcessor, str | None]:
    try:
        return CountingBatchSpanProcessor(exporter, ledger=ledger), None  # reads OTEL_BSP_*
    except ValueError as exc:  # e.g. OTEL_BSP_SCHEDULE_DELAY=0 fails the SDK's validation
        defaults = CountingBatchSpanProcessor(
            exporter,
            ledger=ledger,
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
    exporter_class = _exporter_class(_OTLP_CLASSES[(signal, protocol)])
    exporter = exporter_class()  # reads its own OTEL_EXPORTER_OTLP_* variables
    return exporter, _with_note(f"otlp {protocol} {_otlp_endpoint(signal, protocol)}", note)


def _exporter_class(path: str) -> Any:
    """The class at ``module:Name``. serve-drift's span exporter builds on SDK internals
    (``_translate_data`` and the ``_internal`` encoders); where an SDK release moved them, the
    SDK's own exporter is used, with its slower encoding."""
    module_name, _, class_name = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        if path != _OTLP_CLASSES[("traces", "grpc")]:
            raise
        return _exporter_class(_SDK_GRPC_SPAN_EXPORTER)


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
        exporter_class = JsonLinesSpanExporter if signal == "traces" else JsonLinesMetricExporter
        limits = plan.bounds
        exporter = exporter_class(
            path, max_bytes=limits.file_max_bytes, backup_count=limits.file_backup_count
        )
        return exporter, f"file {path}"
    except OSError as exc:
        return None, f"none (cannot write {path}: {exc})"


def _with_note(text: str, note: str | None) -> str:
    return f"{text} ({note})" if note else text
