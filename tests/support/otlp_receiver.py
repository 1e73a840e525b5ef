"""A real OTLP receiver for tests: gRPC and HTTP (protobuf or JSON), on 127.0.0.1, ephemeral ports.

Built from ``opentelemetry-proto``'s collector service stubs, so what arrives here is exactly what
an OpenTelemetry Collector would receive. Typical use as a session fixture::

    @pytest.fixture(scope="session")
    def otlp_receiver():
        with OtlpReceiver() as receiver:
            yield receiver

    def test_spans(otlp_receiver):
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint}  # grpc
        # or: {"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        #      "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.http_endpoint}
        ...
        span = otlp_receiver.wait_for(
            lambda r: next((s for s in r.spans() if s.name == "predict"), None)
        )

Data is stored as the raw export requests (thread-safe) and flattened on every query, so
queries always see everything received so far.
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1 import trace_pb2

T = TypeVar("T")

__all__ = [
    "OtlpReceiver",
    "ReceivedEvent",
    "ReceivedLink",
    "ReceivedLog",
    "ReceivedPoint",
    "ReceivedSpan",
]


# --- flattened views -------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedLink:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class ReceivedEvent:
    name: str
    attributes: dict[str, Any]
    time_unix_nano: int


@dataclass(frozen=True)
class ReceivedSpan:
    """One span. Ids are lowercase hex; status_code is e.g. "ERROR", kind e.g. "SERVER"."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str | None
    attributes: dict[str, Any]
    links: list[ReceivedLink]
    events: list[ReceivedEvent]
    status_code: str
    status_message: str
    kind: str
    start_time_unix_nano: int
    end_time_unix_nano: int
    resource: dict[str, Any]
    scope_name: str
    transport: str  # "grpc" or "http"


@dataclass(frozen=True)
class ReceivedPoint:
    """One data point. ``value`` is set for sum/gauge; histogram fields for histograms."""

    name: str
    kind: str  # "sum", "gauge", "histogram", "exponential_histogram", "summary"
    attributes: dict[str, Any]
    value: int | float | None
    resource: dict[str, Any]
    unit: str = ""
    scope_name: str = ""
    time_unix_nano: int = 0
    is_monotonic: bool | None = None
    temporality: str | None = None  # "CUMULATIVE" or "DELTA"
    count: int | None = None
    sum: float | None = None
    min: float | None = None
    max: float | None = None
    bucket_bounds: list[float] = field(default_factory=list)
    bucket_counts: list[int] = field(default_factory=list)
    transport: str = "grpc"


@dataclass(frozen=True)
class ReceivedLog:
    body: Any
    severity_text: str
    severity_number: int
    attributes: dict[str, Any]
    trace_id: str | None
    span_id: str | None
    resource: dict[str, Any]
    transport: str


def any_value(value: AnyValue) -> Any:
    """An OTLP ``AnyValue`` as a plain Python value (arrays become lists, kvlists dicts)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_dict(value.kvlist_value.values)
    return getattr(value, kind)


def attributes_dict(attributes: Any) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in attributes}


def _hex_or_none(raw: bytes) -> str | None:
    return raw.hex() if raw and any(raw) else None


def _enum_suffix(enum: Any, number: int, prefix: str) -> str:
    try:
        return str(enum.Name(number)).removeprefix(prefix)
    except ValueError:
        return str(number)


# --- servicers -------------------------------------------------------------------------------


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver._record("traces", "grpc", request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _MetricsServicer(metrics_service_pb2_grpc.MetricsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver._record("metrics", "grpc", request)
        return metrics_service_pb2.ExportMetricsServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self._receiver = receiver

    def Export(self, request: Any, context: Any) -> Any:
        self._receiver._record("logs", "grpc", request)
        return logs_service_pb2.ExportLogsServiceResponse()


_HTTP_PATHS: dict[str, tuple[str, type[Message], type[Message]]] = {
    "/v1/traces": (
        "traces",
        trace_service_pb2.ExportTraceServiceRequest,
        trace_service_pb2.ExportTraceServiceResponse,
    ),
    "/v1/metrics": (
        "metrics",
        metrics_service_pb2.ExportMetricsServiceRequest,
        metrics_service_pb2.ExportMetricsServiceResponse,
    ),
    "/v1/logs": (
        "logs",
        logs_service_pb2.ExportLogsServiceRequest,
        logs_service_pb2.ExportLogsServiceResponse,
    ),
}


def _http_handler(receiver: OtlpReceiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            route = _HTTP_PATHS.get(self.path.split("?", 1)[0].rstrip("/"))
            if route is None:
                self._reply(404, b"", "text/plain")
                return
            signal, request_class, response_class = route
            body = self._body()
            is_json = "json" in self.headers.get("Content-Type", "")
            try:
                request = request_class()
                if is_json:
                    json_format.Parse(body, request)
                else:
                    request.ParseFromString(body)
            except Exception as exc:
                self._reply(400, str(exc).encode(), "text/plain")
                return
            receiver._record(signal, "http", request)
            response = response_class()
            if is_json:
                self._reply(200, json_format.MessageToJson(response).encode(), "application/json")
            else:
                self._reply(200, response.SerializeToString(), "application/x-protobuf")

        def _body(self) -> bytes:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            encoding = self.headers.get("Content-Encoding", "").lower()
            if encoding == "gzip":
                return gzip.decompress(raw)
            if encoding == "deflate":
                return zlib.decompress(raw)
            return raw

        def _reply(self, status: int, payload: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler


# --- the receiver ----------------------------------------------------------------------------


class OtlpReceiver:
    """OTLP/gRPC and OTLP/HTTP receiver on 127.0.0.1 with ephemeral ports.

    ``endpoint`` is the gRPC one (``http://127.0.0.1:<port>``), ``http_endpoint`` the HTTP base
    URL (exporters append ``/v1/traces`` etc. when it is given as ``OTEL_EXPORTER_OTLP_ENDPOINT``).
    """

    def __init__(self, *, http: bool = True) -> None:
        self._lock = threading.Lock()
        self._requests: list[tuple[str, str, Any]] = []  # (signal, transport, request)
        self._with_http = http
        self._grpc_server: grpc.Server | None = None
        self._http_server: ThreadingHTTPServer | None = None
        self._http_thread: threading.Thread | None = None
        self._port: int | None = None

    # lifecycle

    def start(self) -> OtlpReceiver:
        if self._grpc_server is not None:
            return self
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self), server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(
            _MetricsServicer(self), server
        )
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self), server)
        self._port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._grpc_server = server
        if self._with_http:
            self._start_http()
        return self

    def _start_http(self) -> None:
        self._http_server = ThreadingHTTPServer(("127.0.0.1", 0), _http_handler(self))
        self._http_server.daemon_threads = True
        self._http_thread = threading.Thread(
            target=self._http_server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="otlp-http-receiver",
            daemon=True,
        )
        self._http_thread.start()

    def stop(self) -> None:
        if self._grpc_server is not None:
            self._grpc_server.stop(grace=0.5).wait(2)
            self._grpc_server = None
        if self._http_server is not None:
            self._http_server.shutdown()
            self._http_server.server_close()
            self._http_server = None
        if self._http_thread is not None:
            self._http_thread.join(2)
            self._http_thread = None

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The gRPC endpoint, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` with protocol ``grpc``."""
        if self._port is None:
            raise RuntimeError("OtlpReceiver is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def http_endpoint(self) -> str:
        """The HTTP base URL, for ``OTEL_EXPORTER_OTLP_ENDPOINT`` with ``http/protobuf``."""
        if self._http_server is None:
            raise RuntimeError("OtlpReceiver HTTP side is not started")
        return f"http://127.0.0.1:{self._http_server.server_address[1]}"

    # storage

    def _record(self, signal: str, transport: str, request: Any) -> None:
        with self._lock:
            self._requests.append((signal, transport, request))

    def _snapshot(self, signal: str) -> list[tuple[str, Any]]:
        with self._lock:
            return [(t, r) for s, t, r in self._requests if s == signal]

    def clear(self) -> None:
        with self._lock:
            self._requests.clear()

    def export_counts(self) -> dict[str, int]:
        """Export requests received so far, keyed ``"<signal>/<transport>"`` (``traces/http``)."""
        with self._lock:
            return dict(Counter(f"{s}/{t}" for s, t, _ in self._requests))

    # queries

    def spans(self) -> list[ReceivedSpan]:
        out: list[ReceivedSpan] = []
        for transport, request in self._snapshot("traces"):
            for resource_spans in request.resource_spans:
                resource = attributes_dict(resource_spans.resource.attributes)
                for scope_spans in resource_spans.scope_spans:
                    scope = scope_spans.scope.name
                    out.extend(_span(s, resource, scope, transport) for s in scope_spans.spans)
        return out

    def metric_points(self, name: str) -> list[ReceivedPoint]:
        out: list[ReceivedPoint] = []
        for transport, resource, scope, metric in self._metrics():
            if metric.name == name:
                out.extend(_points(metric, resource, scope, transport))
        return out

    def metric_names(self) -> set[str]:
        return {metric.name for _, _, _, metric in self._metrics()}

    def _metrics(self) -> list[tuple[str, dict[str, Any], str, Any]]:
        out: list[tuple[str, dict[str, Any], str, Any]] = []
        for transport, request in self._snapshot("metrics"):
            for resource_metrics in request.resource_metrics:
                resource = attributes_dict(resource_metrics.resource.attributes)
                for scope_metrics in resource_metrics.scope_metrics:
                    scope = scope_metrics.scope.name
                    out.extend((transport, resource, scope, m) for m in scope_metrics.metrics)
        return out

    def logs(self) -> list[ReceivedLog]:
        out: list[ReceivedLog] = []
        for transport, request in self._snapshot("logs"):
            for resource_logs in request.resource_logs:
                resource = attributes_dict(resource_logs.resource.attributes)
                for scope_logs in resource_logs.scope_logs:
                    out.extend(_log(r, resource, transport) for r in scope_logs.log_records)
        return out

    def summary(self) -> str:
        """What was received, in a few lines, for assertion messages."""
        span_names = Counter(s.name for s in self.spans())
        return (
            f"export requests: {self.export_counts() or 'none'}; "
            f"spans: {dict(span_names) or 'none'}; "
            f"metrics: {sorted(self.metric_names()) or 'none'}; "
            f"logs: {len(self.logs())}"
        )

    def wait_for(
        self,
        predicate: Callable[[OtlpReceiver], T | bool | None],
        *,
        timeout_s: float = 30,
        interval_s: float = 0.2,
    ) -> T:
        """Poll ``predicate(self)`` until it returns something truthy, and return that.

        Raises ``AssertionError`` with a summary of what was received when time runs out.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            result = predicate(self)
            if result:
                return result  # type: ignore[return-value]
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"OTLP receiver: condition {getattr(predicate, '__name__', predicate)!s} "
                    f"not met within {timeout_s}s; received {self.summary()}"
                )
            time.sleep(interval_s)


# --- flattening helpers ----------------------------------------------------------------------


def _span(span: Any, resource: dict[str, Any], scope: str, transport: str) -> ReceivedSpan:
    return ReceivedSpan(
        name=span.name,
        trace_id=span.trace_id.hex(),
        span_id=span.span_id.hex(),
        parent_span_id=_hex_or_none(span.parent_span_id),
        attributes=attributes_dict(span.attributes),
        links=[
            ReceivedLink(link.trace_id.hex(), link.span_id.hex(), attributes_dict(link.attributes))
            for link in span.links
        ],
        events=[
            ReceivedEvent(e.name, attributes_dict(e.attributes), e.time_unix_nano)
            for e in span.events
        ],
        status_code=_enum_suffix(trace_pb2.Status.StatusCode, span.status.code, "STATUS_CODE_"),
        status_message=span.status.message,
        kind=_enum_suffix(trace_pb2.Span.SpanKind, span.kind, "SPAN_KIND_"),
        start_time_unix_nano=span.start_time_unix_nano,
        end_time_unix_nano=span.end_time_unix_nano,
        resource=resource,
        scope_name=scope,
        transport=transport,
    )


def _temporality(value: int) -> str:
    return {1: "DELTA", 2: "CUMULATIVE"}.get(value, "UNSPECIFIED")


def _number(point: Any) -> int | float | None:
    kind = point.WhichOneof("value")
    return getattr(point, kind) if kind else None


def _points(metric: Any, resource: dict[str, Any], scope: str, transport: str) -> list[Any]:
    kind = metric.WhichOneof("data")
    if kind is None:
        return []
    data: Any = getattr(metric, kind)
    common = {"name": metric.name, "kind": kind, "resource": resource, "unit": metric.unit}
    common |= {"scope_name": scope, "transport": transport}
    if kind in ("sum", "gauge"):
        extra: dict[str, Any] = {}
        if kind == "sum":
            extra = {
                "is_monotonic": data.is_monotonic,
                "temporality": _temporality(data.aggregation_temporality),
            }
        return [
            ReceivedPoint(
                attributes=attributes_dict(p.attributes),
                value=_number(p),
                time_unix_nano=p.time_unix_nano,
                **common,
                **extra,
            )
            for p in data.data_points
        ]
    if kind in ("histogram", "exponential_histogram", "summary"):
        return [_histogram_point(p, kind, data, common) for p in data.data_points]
    return []


def _histogram_point(point: Any, kind: str, data: Any, common: dict[str, Any]) -> ReceivedPoint:
    temporality = getattr(data, "aggregation_temporality", 0)
    return ReceivedPoint(
        attributes=attributes_dict(point.attributes),
        value=None,
        time_unix_nano=point.time_unix_nano,
        temporality=_temporality(temporality) if kind != "summary" else None,
        count=point.count,
        sum=point.sum if kind == "summary" or point.HasField("sum") else None,
        min=point.min if kind != "summary" and point.HasField("min") else None,
        max=point.max if kind != "summary" and point.HasField("max") else None,
        bucket_bounds=list(point.explicit_bounds) if kind == "histogram" else [],
        bucket_counts=list(point.bucket_counts) if kind == "histogram" else [],
        **common,
    )


def _log(record: Any, resource: dict[str, Any], transport: str) -> ReceivedLog:
    return ReceivedLog(
        body=any_value(record.body),
        severity_text=record.severity_text,
        severity_number=record.severity_number,
        attributes=attributes_dict(record.attributes),
        trace_id=_hex_or_none(record.trace_id),
        span_id=_hex_or_none(record.span_id),
        resource=resource,
        transport=transport,
    )
