"""Opt-in: an OpenTelemetry SDK ``LoggerProvider`` that ships event records over OTLP.

The library's code uses the logs API only (:mod:`serve_drift.eventlog.otlp_logs`). This helper
is for the process that owns the SDK (the drift monitor, a script), like
:func:`serve_drift.configure_telemetry` is for traces and metrics. It does not install the
provider globally: pass it to :class:`~serve_drift.eventlog.otlp_logs.EventLogExporter`.

Settings come from the standard environment variables, read by the OTLP exporter itself:
``OTEL_EXPORTER_OTLP_LOGS_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_EXPORTER_OTLP_LOGS_PROTOCOL`` or ``OTEL_EXPORTER_OTLP_PROTOCOL`` (``grpc``, the default,
or ``http/protobuf``), headers, timeout, compression, and ``OTEL_BLRP_*`` for batching.

>>> provider = build_logger_provider(endpoint="http://127.0.0.1:4317")  # connects on export
>>> type(provider).__name__
'LoggerProvider'
>>> provider.shutdown()
"""

from __future__ import annotations

import os

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor, LogRecordExporter
from opentelemetry.sdk.resources import Resource


def build_logger_provider(
    *, service_name: str | None = None, endpoint: str | None = None, protocol: str | None = None
) -> LoggerProvider | None:
    """An SDK provider exporting to OTLP, or ``None`` when no endpoint is configured.

    ``endpoint`` and ``protocol`` override the environment. No endpoint anywhere means no
    export: nothing is sent to ``localhost`` on the off chance.
    """
    endpoint = endpoint or _env("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    protocol = (
        protocol
        or _env("OTEL_EXPORTER_OTLP_LOGS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        or "grpc"
    ).lower()
    attributes = {"service.name": service_name} if service_name else {}
    provider = LoggerProvider(resource=Resource.create(attributes), shutdown_on_exit=False)
    provider.add_log_record_processor(BatchLogRecordProcessor(_exporter(endpoint, protocol)))
    return provider


def _exporter(endpoint: str, protocol: str) -> LogRecordExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        insecure = endpoint.startswith("http://") or None
        return OTLPLogExporter(endpoint=endpoint, insecure=insecure)
    if protocol in ("http/protobuf", "http/json"):
        from opentelemetry.exporter.otlp.proto.http._log_exporter import (
            OTLPLogExporter as HttpLogExporter,
        )

        specific = bool(os.environ.get("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "").strip())
        url = (
            endpoint
            if specific or endpoint.rstrip("/").endswith("/v1/logs")
            else f"{endpoint.rstrip('/')}/v1/logs"
        )
        return HttpLogExporter(endpoint=url)
    raise ValueError(f"unsupported OTLP protocol {protocol!r}; valid: grpc, http/protobuf")


def _env(*names: str) -> str | None:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None
