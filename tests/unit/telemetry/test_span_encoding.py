"""The wire encoder writes the message the SDK's ``encode_spans`` builds, for every kind of span."""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from serve_drift.telemetry.bounded import CountingBatchSpanProcessor, GuardedSpanExporter, Ledger
from serve_drift.telemetry.otlp_grpc import OTLPSpanExporter
from serve_drift.telemetry.span_encoding import SpanEncoder, encode_spans_bytes


def _finished(make: Callable[[TracerProvider], None], **provider: object) -> list[ReadableSpan]:
    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider(shutdown_on_exit=False, **provider)  # type: ignore[arg-type]
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    make(tracer_provider)
    return list(memory.get_finished_spans())


def _assert_same_message(spans: list[ReadableSpan]) -> None:
    expected = encode_spans(spans)
    assert ExportTraceServiceRequest.FromString(encode_spans_bytes(spans)) == expected


def _request_spans(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("serve_drift")
    for i in range(20):
        kind = (SpanKind.SERVER, SpanKind.INTERNAL)[i % 2]
        span = tracer.start_span("serve_drift.request", kind=kind)
        span.set_attributes(
            {
                "serve_drift.correlation_id": f"client-{i}",
                "serve_drift.internal_id": "0" * 32,
                "serve_drift.model.name": "digits",
                "serve_drift.request.latency_s": 0.001 * i,
                "serve_drift.prediction.class": i - 10,
                "serve_drift.embedding.captured": i % 3 == 0,
            }
        )
        span.end()


def test_request_spans_are_encoded_byte_for_byte_as_the_sdk_does() -> None:
    spans = _finished(_request_spans)
    assert encode_spans_bytes(spans) == encode_spans(spans).SerializeToString()


def test_children_of_local_and_remote_parents_carry_parent_and_flags() -> None:
    def make(provider: TracerProvider) -> None:
        from opentelemetry import trace

        tracer = provider.get_tracer("serve_drift")
        with tracer.start_as_current_span("parent"):
            tracer.start_span("local child").end()
        remote = SpanContext(0xAB, 0xCD, is_remote=True, trace_flags=TraceFlags(1))
        context = trace.set_span_in_context(trace.NonRecordingSpan(remote))
        tracer.start_span("remote child", context=context, kind=SpanKind.SERVER).end()

    spans = _finished(make)
    _assert_same_message(spans)
    assert encode_spans_bytes(spans) == encode_spans(spans).SerializeToString()


def test_events_links_status_and_trace_state_go_through_the_sdk_encoder() -> None:
    def make(provider: TracerProvider) -> None:
        from opentelemetry import trace

        tracer = provider.get_tracer("serve_drift", "1.0", schema_url="https://example/1")
        span = tracer.start_span("events")
        span.add_event("serve_drift.monitoring_error", {"stage": "capture"})
        span.set_status(Status(StatusCode.ERROR, "RuntimeError: boom"))
        span.end()
        other = SpanContext(0x12, 0x34, is_remote=False, trace_state=TraceState([("k", "v")]))
        tracer.start_span("linked", links=[Link(other, {"why": "window"})]).end()
        state = SpanContext(0x56, 0x78, is_remote=True, trace_state=TraceState([("a", "b")]))
        context = trace.set_span_in_context(trace.NonRecordingSpan(state))
        tracer.start_span("with state", context=context).end()
        ok = tracer.start_span("ok")
        ok.set_status(Status(StatusCode.OK))
        ok.end()

    _assert_same_message(_finished(make))


def test_attribute_values_beyond_the_fast_path_are_encoded_as_the_sdk_does() -> None:
    def make(provider: TracerProvider) -> None:
        span = provider.get_tracer("serve_drift").start_span("values")
        span.set_attributes(
            {
                "sequence": [1, 2, 3],
                "strings": ("a", "b"),
                "negative": -(2**63),
                "largest": 2**63 - 1,
                "beyond int64": 2**64,
                "non-ascii": "é—☃",
                "long": "x" * 300,
                "": "empty key",
            }
        )
        span.end()

    _assert_same_message(_finished(make))


def test_dropped_attributes_and_several_resources_and_scopes() -> None:
    def make(provider: TracerProvider) -> None:
        for scope in ("serve_drift", "other"):
            span = provider.get_tracer(scope).start_span("many")
            span.set_attributes({f"a{i}": i for i in range(5)})
            span.end()

    limited = _finished(make, span_limits=SpanLimits(max_span_attributes=2))
    second = _finished(make, resource=Resource({"service.name": "second"}))
    _assert_same_message(limited + second)
    assert any(s.dropped_attributes for s in limited)


def test_spans_built_outside_a_tracer_are_encoded_too() -> None:
    context = SpanContext(0x1, 0x2, is_remote=False)
    span = ReadableSpan(
        name="built",
        context=context,
        attributes={"serve_drift.n": 4},
        start_time=10,
        end_time=20,
        resource=Resource({}),
    )
    _assert_same_message([span])


_VALUES = st.one_of(
    st.text(max_size=200),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
)


@settings(max_examples=60, deadline=None)
@given(attributes=st.dictionaries(st.text(max_size=40), _VALUES, max_size=10))
def test_any_attribute_mapping_gives_the_sdk_message(attributes: dict[str, object]) -> None:
    def make(provider: TracerProvider) -> None:
        span = provider.get_tracer("serve_drift").start_span("hypothesis")
        span.set_attributes(attributes)  # type: ignore[arg-type]
        span.end()

    _assert_same_message(_finished(make))


def test_exporter_sends_the_encoded_request() -> None:
    spans = _finished(_request_spans)
    exporter = OTLPSpanExporter(endpoint="http://127.0.0.1:9", insecure=True)
    try:
        assert exporter._translate_data(spans) == encode_spans(spans)
    finally:
        exporter.shutdown()


@pytest.mark.parametrize("name", ["", "serve_drift.request"])
def test_span_names_including_the_empty_one(name: str) -> None:
    def make(provider: TracerProvider) -> None:
        provider.get_tracer("serve_drift").start_span(name).end()

    spans = _finished(make)
    assert encode_spans_bytes(spans) == encode_spans(spans).SerializeToString()


# --- spans encoded as they end ------------------------------------------------------------------


def _two_scopes(provider: TracerProvider) -> None:
    for scope in ("serve_drift", "other", "serve_drift"):
        tracer = provider.get_tracer(scope)  # a new scope object each time, equal by value
        for i in range(3):
            span = tracer.start_span(f"{scope}.{i}")
            span.set_attributes({"serve_drift.n": i, "scope": scope})
            span.end()


def test_spans_encoded_as_they_end_make_the_request_the_sdk_builds() -> None:
    spans = _finished(_two_scopes)
    encoder = SpanEncoder()
    items = [encoder.pending(span) for span in spans]
    assert all(isinstance(item, tuple) for item in items)
    assert encoder.request(items) == encode_spans(spans).SerializeToString()
    mixed = [
        item if i % 2 else span for i, (item, span) in enumerate(zip(items, spans, strict=True))
    ]
    assert ExportTraceServiceRequest.FromString(encoder.request(mixed)) == encode_spans(spans)


def test_encoder_past_its_groups_leaves_spans_to_the_request() -> None:
    spans = _finished(_two_scopes)
    encoder = SpanEncoder(max_groups=1)
    items = [encoder.pending(span) for span in spans]
    assert any(item is span for item, span in zip(items, spans, strict=True))
    assert ExportTraceServiceRequest.FromString(encoder.request(items)) == encode_spans(spans)


class _EncodingExporter(SpanExporter):
    """Takes what ``encode_ended`` made, as serve-drift's OTLP exporter does."""

    def __init__(self, *, fail: bool = False) -> None:
        self.encoder = SpanEncoder()
        self.items: list[object] = []
        self.fail = fail

    def encode_ended(self, span: ReadableSpan) -> object:
        if self.fail:
            raise RuntimeError("encoding failed")
        return self.encoder.pending(span)

    def export(self, spans: Sequence[object]) -> SpanExportResult:  # type: ignore[override]
        self.items.extend(spans)
        return SpanExportResult.SUCCESS


def _through_processor(exporter: _EncodingExporter) -> tuple[list[ReadableSpan], Ledger]:
    memory = InMemorySpanExporter()
    ledger = Ledger()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    guarded = GuardedSpanExporter(exporter, ledger=ledger)
    provider.add_span_processor(CountingBatchSpanProcessor(guarded, ledger=ledger))
    _request_spans(provider)
    provider.force_flush()
    provider.shutdown()
    return list(memory.get_finished_spans()), ledger


def test_processor_queues_spans_in_the_form_the_exporter_encodes() -> None:
    exporter = _EncodingExporter()
    spans, ledger = _through_processor(exporter)
    assert len(exporter.items) == len(spans) and all(isinstance(i, tuple) for i in exporter.items)
    order = {format(s.context.span_id, "016x"): s for s in spans}
    request = ExportTraceServiceRequest.FromString(exporter.encoder.request(exporter.items))
    exported = [s.span_id.hex() for s in request.resource_spans[0].scope_spans[0].spans]
    assert request == encode_spans([order[span_id] for span_id in exported])
    result = ledger.result(completed=True, elapsed_s=0.0, timeout_s=1.0)
    assert (result.spans_exported, result.spans_pending) == (len(spans), 0)


def test_a_span_that_fails_to_encode_is_exported_as_the_span_itself() -> None:
    exporter = _EncodingExporter(fail=True)
    spans, _ = _through_processor(exporter)
    assert sorted(s.context.span_id for s in exporter.items) == sorted(  # type: ignore[attr-defined]
        s.context.span_id for s in spans
    )


def test_a_waiting_plain_span_is_untracked_by_the_garbage_collector() -> None:
    spans = _finished(_request_spans)
    pending = SpanEncoder().pending(spans[0])
    assert isinstance(pending, tuple) and gc.is_tracked(pending)  # until its first collection
    gc.collect(0)
    assert not gc.is_tracked(pending)


def test_the_span_exporter_falls_back_to_the_sdks_where_its_internals_moved(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib

    from opentelemetry.exporter.otlp.proto.grpc import trace_exporter

    from serve_drift.telemetry import setup

    ours = setup._exporter_class(setup._OTLP_CLASSES[("traces", "grpc")])
    assert ours.__module__ == "serve_drift.telemetry.otlp_grpc"
    real_import = importlib.import_module

    def sdk_without_it(name: str) -> object:
        if name == "serve_drift.telemetry.otlp_grpc":
            raise ImportError("opentelemetry's OTLPSpanExporter has no _translate_data to replace")
        return real_import(name)

    monkeypatch.setattr(importlib, "import_module", sdk_without_it)
    assert setup._exporter_class(setup._OTLP_CLASSES[("traces", "grpc")]) is (
        trace_exporter.OTLPSpanExporter
    )
    with pytest.raises(ImportError):  # only the span exporter has a fallback
        setup._exporter_class("serve_drift.telemetry.otlp_grpc_missing:Nothing")
