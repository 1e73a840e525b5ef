"""The OTLP/gRPC span exporter, with spans encoded by :mod:`.span_encoding`.

Everything else (endpoint, credentials, headers, retries, timeouts) is the SDK exporter's own:
only ``_translate_data``, the step that turns a batch of spans into the request message, is
replaced, and :meth:`OTLPSpanExporter.encode_ended` offers the batch processor the form in
which an ended span waits for its export (a tuple of atoms: see
:class:`~serve_drift.telemetry.span_encoding.SpanEncoder`). The request's bytes are parsed back
into the SDK's message class (in C, well under a microsecond per span) because the gRPC stub
serialises that class itself.

>>> OTLPSpanExporter.__mro__[1].__module__
'opentelemetry.exporter.otlp.proto.grpc.trace_exporter'
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.grpc import trace_exporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan

from serve_drift.telemetry.span_encoding import PendingSpan, SpanEncoder

__all__ = ["OTLPSpanExporter"]

if not callable(getattr(trace_exporter.OTLPSpanExporter, "_translate_data", None)):
    # The step this class replaces is gone from this SDK release: telemetry setup falls back
    # to the SDK's own exporter rather than export nothing.
    raise ImportError("opentelemetry's OTLPSpanExporter has no _translate_data to replace")


class OTLPSpanExporter(trace_exporter.OTLPSpanExporter):
    """``opentelemetry``'s OTLP/gRPC span exporter with the cheaper span encoding; it exports
    spans, and what its :meth:`encode_ended` made of spans."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._encoder = SpanEncoder()

    def encode_ended(self, span: ReadableSpan) -> PendingSpan | ReadableSpan:
        return self._encoder.pending(span)

    def _translate_data(
        self, data: Sequence[PendingSpan | ReadableSpan]
    ) -> ExportTraceServiceRequest:
        return ExportTraceServiceRequest.FromString(self._encoder.request(data))
