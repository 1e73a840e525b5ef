"""What a shipping batch carries: the request's own outputs and statistics, made per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from serve_drift.ingress.stats import compute_input_stats, summarise_thumbnails, thumbnail
from serve_drift.replica.batch import BatchBuilder, batch_outputs, merged_outputs, resolve_stats
from serve_drift.replica.sampler import RowSampler
from serve_drift.request_context import PendingStats, RequestMarks, RowMark
from serve_drift.telemetry import instruments as tel
from tests.unit.replica.rows import pending_rows


def _builder(*, confidences: list[float] | None = None, errors: list | None = None) -> BatchBuilder:
    return BatchBuilder(
        model_name="m",
        model_version="v",
        replica_id="r",
        on_confidences=(confidences if confidences is not None else []).extend,
        on_error=(errors if errors is not None else []).append,
    )


def test_batch_outputs_are_each_rows_own_softmax_and_top_k() -> None:
    items = [pending_rows(rows=2, classes=7, seed=1), pending_rows(rows=1, classes=7, seed=2)]
    outputs = batch_outputs(items)
    logits = torch.cat([item.logits for item in items])  # type: ignore[misc]
    expected = torch.softmax(logits, dim=-1)
    assert outputs.probabilities is not None
    np.testing.assert_allclose(outputs.probabilities, expected.numpy(), rtol=1e-6)
    for row in range(3):
        top_p, top_i = expected[row].topk(5)
        assert [c for c, _ in outputs.top_k[row]] == top_i.tolist()
        assert outputs.predicted[row] == top_i[0] and outputs.confidence[row] == pytest.approx(
            float(top_p[0])
        )


def test_rows_without_scores_or_with_another_class_count_ship_no_probability_matrix() -> None:
    items = [pending_rows(classes=3), pending_rows(classes=None), pending_rows(classes=4)]
    outputs = batch_outputs(items)
    assert outputs.probabilities is None  # a test on outputs needs them for every row
    assert outputs.predicted[1] is None and outputs.top_k[1] == ()
    assert len(outputs.top_k[0]) == 3 and len(outputs.top_k[2]) == 4


def test_drains_answered_apart_ship_the_outputs_one_drain_would() -> None:
    items = [pending_rows(rows=2, classes=5, seed=s) for s in range(3)]
    whole = batch_outputs(items)
    merged = merged_outputs([batch_outputs(items[:1]), batch_outputs(items[1:])])
    assert merged.predicted == whole.predicted and merged.top_k == whole.top_k
    assert merged.confidence == whole.confidence
    assert merged.probabilities is not None and whole.probabilities is not None
    np.testing.assert_array_equal(merged.probabilities, whole.probabilities)
    # A drain without scores, or of another width: no probability matrix, as in one drain.
    for other in (pending_rows(classes=None), pending_rows(classes=4)):
        mixed = merged_outputs([batch_outputs(items), batch_outputs([other])])
        assert mixed.probabilities is None and len(mixed.predicted) == 7


def test_answering_ends_the_spans_and_keeps_rows_without_them() -> None:
    memory = InMemorySpanExporter()
    item = pending_rows()._replace(open_span=_open_span(memory), span_attributes={"a": 1})
    answered = _builder().answer([item])
    assert [s.attributes["a"] for s in memory.get_finished_spans()] == [1]
    (kept,) = answered.items
    assert kept.open_span is None and kept.span_attributes is None and kept.ids == item.ids
    drained = _builder().ship([answered], sampler=RowSampler(max_rows_per_s=None, burst_s=1), now=0)
    assert drained.batch is not None and len(drained.batch.events) == 1


def _open_span(memory: InMemorySpanExporter) -> trace.Span:
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    return provider.get_tracer("test").start_span("serve_drift.request")


def test_the_batch_ends_open_request_spans_with_the_events_prediction() -> None:
    memory = InMemorySpanExporter()
    spans = [_open_span(memory) for _ in range(3)]
    items = [
        pending_rows(classes=5, seed=0)._replace(
            open_span=spans[0], span_attributes={"serve_drift.n": 0}, ended_ns=1_000
        ),
        pending_rows(rows=2, classes=5, seed=1)._replace(
            open_span=spans[1], span_attributes={"serve_drift.n": 1}, ended_ns=2_000
        ),
        pending_rows(classes=None, seed=2)._replace(
            open_span=spans[2], span_attributes={"serve_drift.n": 2}, ended_ns=3_000
        ),
    ]
    drained = _builder().build(items, sampler=RowSampler(max_rows_per_s=None, burst_s=1), now=0)
    assert drained.batch is not None
    ended = {s.attributes["serve_drift.n"]: s for s in memory.get_finished_spans()}
    assert [ended[i].end_time for i in range(3)] == [1_000, 2_000, 3_000]
    first = drained.batch.events[0]
    assert ended[0].attributes[tel.ATTR_PREDICTED_CLASS] == first.predicted_class
    assert ended[0].attributes[tel.ATTR_CONFIDENCE] == first.confidence
    for many_rows_or_no_scores in (ended[1], ended[2]):
        assert tel.ATTR_PREDICTED_CLASS not in many_rows_or_no_scores.attributes


def test_spans_end_even_when_the_batch_cannot_be_built() -> None:
    memory = InMemorySpanExporter()
    broken = pending_rows(classes=3)._replace(
        logits=torch.randn(2, 3), open_span=_open_span(memory), span_attributes={}, ended_ns=5
    )  # two rows of scores for one row of embeddings: the outputs fail
    with pytest.raises(ValueError):
        _builder().build([broken], sampler=RowSampler(max_rows_per_s=None, burst_s=1), now=0)
    (span,) = memory.get_finished_spans()
    assert span.end_time == 5 and tel.ATTR_PREDICTED_CLASS not in span.attributes


def test_pending_statistics_are_computed_once_per_batch_and_equal_the_direct_ones() -> None:
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, size=(8, 8), dtype=np.uint8) for _ in range(5)]
    images.append(rng.integers(0, 256, size=(300, 200, 3), dtype=np.uint8))  # another shape
    calls: list[int] = []

    def summarise(items: list) -> list:
        calls.append(len(items))
        return summarise_thumbnails(items)

    pending = [PendingStats(item=thumbnail(im, max_side=64), summarise=summarise) for im in images]
    resolved = resolve_stats([*pending, None], on_error=pytest.fail)
    assert calls == [6] and resolved[-1] is None
    assert resolved[:-1] == [compute_input_stats(im, max_side=64) for im in images]


def test_a_failing_summary_loses_the_statistics_not_the_batch() -> None:
    def broken(items: list) -> list:
        raise RuntimeError("no statistics today")

    errors: list[Exception] = []
    marks = RequestMarks(rows={None: RowMark(input_stats=PendingStats(item=0, summarise=broken))})
    drained = _builder(errors=errors).build(
        [pending_rows(marks=marks)], sampler=RowSampler(max_rows_per_s=None, burst_s=1.0), now=0.0
    )
    assert drained.batch is not None and drained.batch.events[0].input_stats is None
    assert [str(e) for e in errors] == ["no statistics today"]


def test_sampled_out_rows_get_no_event_and_no_statistics_but_their_confidence_counts() -> None:
    summarised: list[int] = []

    def summarise(items: list) -> list:
        summarised.append(len(items))
        return summarise_thumbnails(items)

    image = np.zeros((8, 8), dtype=np.uint8)
    items = [
        pending_rows(
            marks=RequestMarks(
                rows={None: RowMark(input_stats=PendingStats(thumbnail(image), summarise))}
            ),
            seed=i,
        )
        for i in range(50)
    ]
    confidences: list[float] = []
    drained = _builder(confidences=confidences).build(
        items, sampler=RowSampler(max_rows_per_s=5.0, burst_s=1.0, seed=0), now=0.0
    )
    assert drained.batch is not None and drained.unsampled == 45
    assert len(drained.batch.events) == 5 and drained.batch.embeddings.shape == (5, 4)
    assert summarised == [5] and len(confidences) == 50
    assert {e.sampling_weight for e in drained.batch.events} == {10.0}
    shipped = {e.internal_id for e in drained.batch.events}
    expected = [item.embeddings[0].numpy() for item in items if item.ids.internal_id in shipped]
    np.testing.assert_array_equal(drained.batch.embeddings, np.stack(expected))


def test_sentinel_rows_always_ship_flagged_and_kept_out_of_windows() -> None:
    items = [pending_rows(seed=i) for i in range(30)]
    items[7] = pending_rows(marks=RequestMarks(sentinel=True), seed=7)
    drained = _builder().build(
        items, sampler=RowSampler(max_rows_per_s=2.0, burst_s=1.0, seed=0), now=0.0
    )
    assert drained.batch is not None
    sentinel = [e for e in drained.batch.events if "sentinel" in e.flags]
    assert [e.internal_id for e in sentinel] == [items[7].ids.internal_id]
    assert sentinel[0].exclude_from_drift and sentinel[0].sampling_weight == 1.0
    assert len(drained.batch.events) == 3 and drained.unsampled == 27
