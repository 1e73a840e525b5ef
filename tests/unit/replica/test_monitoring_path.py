"""The replica side without Ray: decorator, capture, spans, shipping, drops."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import pytest
import torch

from serve_drift import monitored
from serve_drift.messages import EventBatch
from serve_drift.replica.decorator import replica_monitor
from serve_drift.replica.shipper import BoundedBuffer
from serve_drift.request_context import sanitize_correlation_id
from serve_drift.telemetry import instruments as tel
from tests.support.telemetry_memory import memory_telemetry, metric_points
from tests.unit.replica.rows import pending_rows


class _Method:
    def __init__(self, behaviour: Any) -> None:
        self.behaviour = behaviour

    async def remote(self, *args: Any) -> Any:
        return await self.behaviour(*args)


class FakeMonitorHandle:
    """Stands in for a DeploymentHandle: ``handle.ingest.remote(batch)``."""

    def __init__(self, *, fail: bool = False) -> None:
        self.batches: list[EventBatch] = []
        self.fail = fail
        self.ingest = _Method(self._ingest)

    async def _ingest(self, batch: EventBatch) -> int:
        if self.fail:
            raise RuntimeError("monitor down")
        self.batches.append(batch)
        return len(batch.events)


def _deployment(**config: Any) -> type:
    @monitored({"model_name": "unit", "shipping": {"flush_interval_s": 0.01}, **config})
    class Classifier:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Linear(3, 5), torch.nn.ReLU(), torch.nn.Linear(5, 2)
            )

        async def __call__(self, x: torch.Tensor) -> list[int]:
            if x.shape[-1] != 3:
                raise ValueError("the application's own error")
            return self.model(x).argmax(-1).tolist()

    return Classifier


async def _serve(instance: Any, inputs: list[torch.Tensor]) -> list[Any]:
    outputs = [await instance(x) for x in inputs]
    await replica_monitor(instance).shipper.flush()
    return outputs


def test_response_unchanged_and_embedding_is_penultimate_activation() -> None:
    memory_telemetry()
    handle = FakeMonitorHandle()
    instance = _deployment()(drift_monitor=handle)
    x = torch.randn(1, 3)
    outputs = asyncio.run(_serve(instance, [x]))
    expected = instance.model(x).argmax(-1).tolist()
    assert outputs == [expected]
    batch = handle.batches[0]
    hidden = instance.model[1](instance.model[0](x))
    np.testing.assert_allclose(batch.embeddings[0], hidden[0].detach().numpy(), rtol=1e-6)
    event = batch.events[0]
    assert event.model_name == "unit" and event.predicted_class == expected[0]
    assert 0.5 <= event.confidence <= 1.0


def test_request_span_carries_correlation_id_and_prediction() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    handle = FakeMonitorHandle()
    instance = _deployment()(drift_monitor=handle)
    asyncio.run(_serve(instance, [torch.randn(1, 3)]))
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.request")
    event = handle.batches[0].events[0]
    assert span.attributes[tel.ATTR_CORRELATION_ID] == event.correlation_id
    assert span.attributes[tel.ATTR_PREDICTED_CLASS] == event.predicted_class
    assert span.attributes[tel.ATTR_CONFIDENCE] == event.confidence
    assert format(span.context.span_id, "016x") == event.span_id


def test_request_span_ends_at_the_answer_even_though_its_batch_ends_it_later() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    instance = _deployment(shipping={"flush_interval_s": 60})(drift_monitor=FakeMonitorHandle())

    async def answer_then_ship() -> tuple[int, int]:
        before = time.time_ns()
        await instance(torch.randn(1, 3))
        answered = time.time_ns()
        await asyncio.sleep(0.05)
        await replica_monitor(instance).shipper.flush()
        return before, answered

    before, answered = asyncio.run(answer_then_ship())
    (span,) = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
    assert span.end_time is not None and before <= span.end_time <= answered
    assert span.attributes[tel.ATTR_LATENCY_S] > 0


def test_request_latencies_reach_the_histogram_at_the_next_tick() -> None:
    _, reader = memory_telemetry()
    instance = _deployment(model_name="timed")(drift_monitor=FakeMonitorHandle())
    asyncio.run(_serve(instance, [torch.randn(1, 3) for _ in range(6)]))
    (point,) = [
        p
        for p in metric_points(reader, "serve_drift.request.duration")
        if p.attributes.get("serve_drift.model.name") == "timed"
    ]
    assert point.count == 6 and point.sum > 0


def test_unreachable_monitor_drops_and_counts_but_serves() -> None:
    _, reader = memory_telemetry()
    instance = _deployment(model_name="unit-failing")(drift_monitor=FakeMonitorHandle(fail=True))
    outputs = asyncio.run(_serve(instance, [torch.randn(1, 3) for _ in range(5)]))
    assert len(outputs) == 5
    assert replica_monitor(instance).shipper.dropped == {"monitor_unreachable": 5}
    assert replica_monitor(instance).replica_health().reasons
    dropped = [
        p
        for p in metric_points(reader, "serve_drift.embeddings.dropped")
        if p.attributes.get("reason") == "monitor_unreachable"
    ]
    assert sum(p.value for p in dropped) >= 5


def test_full_queue_drops_and_counts_without_blocking() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    handle = FakeMonitorHandle()
    instance = _deployment(shipping={"max_queue": 2, "flush_interval_s": 60})(drift_monitor=handle)

    async def burst() -> None:
        for _ in range(5):
            await instance(torch.randn(1, 3))

    asyncio.run(burst())
    assert replica_monitor(instance).shipper.dropped == {"queue_full": 3}
    assert replica_monitor(instance).shipper.pending() == 2
    # The dropped requests' spans end at once; the two waiting ones end with their batch.
    ended = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
    assert len(ended) == 3 and all(tel.ATTR_CORRELATION_ID in s.attributes for s in ended)


def test_application_exception_passes_through_unchanged() -> None:
    memory_telemetry()
    instance = _deployment()(drift_monitor=FakeMonitorHandle())
    with pytest.raises(ValueError, match="the application's own error"):
        asyncio.run(instance(torch.randn(1, 4)))


def test_sync_handler_runs_in_thread_and_is_captured() -> None:
    memory_telemetry()

    @monitored({"model_name": "sync"})
    class SyncClassifier:
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))

        def __call__(self, x: torch.Tensor) -> int:
            return int(self.model(x).argmax())

    handle = FakeMonitorHandle()
    instance = SyncClassifier(drift_monitor=handle)
    asyncio.run(_serve(instance, [torch.randn(1, 3)]))
    assert handle.batches[0].embeddings.shape == (1, 4)


def test_ambiguous_model_attribute_is_a_clear_error() -> None:
    @monitored({})
    class TwoModels:
        def __init__(self) -> None:
            self.a = torch.nn.Linear(2, 2)
            self.b = torch.nn.Linear(2, 2)

        async def __call__(self, x: torch.Tensor) -> None:
            return None

    with pytest.raises(TypeError, match=r"model_attr.*a, b"):
        TwoModels()


def test_decorator_rejects_missing_method() -> None:
    with pytest.raises(TypeError, match="no method"):
        monitored({}, methods=("predict",))(type("NoPredict", (), {}))


def test_bounded_buffer_counts_rows_and_refuses_when_full() -> None:
    buffer = BoundedBuffer(capacity=3)
    two, one, another = pending_rows(rows=2), pending_rows(rows=1), pending_rows(rows=1)
    assert buffer.offer(two) and buffer.offer(one) and not buffer.offer(another)
    assert len(buffer) == 3
    assert buffer.drain(max_rows=2) == [two] and buffer.drain(max_rows=10) == [one]
    assert len(buffer) == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("abc-123", "abc-123"), ("a\r\nb", "a__b"), ("x" * 500, "x" * 128), ("é", "_")],
)
def test_correlation_ids_are_sanitised(raw: str, expected: str) -> None:
    assert sanitize_correlation_id(raw) == expected


def test_request_spans_follow_the_reference_version_the_monitor_answers_with() -> None:
    """After a reference swap in the monitor, the replica's next spans carry the new version."""
    from serve_drift.messages import IngestReceipt

    spans, _ = memory_telemetry()
    spans.clear()
    answered = {"version": "old@000000000000"}

    async def ingest(batch: EventBatch) -> IngestReceipt:
        return IngestReceipt(
            accepted=len(batch.events), recorded=True, reference_version=answered["version"]
        )

    handle = FakeMonitorHandle()
    handle.ingest = _Method(ingest)
    instance = _deployment()(drift_monitor=handle)
    asyncio.run(_serve(instance, [torch.randn(1, 3)]))  # the monitor says: old
    answered["version"] = "new@111111111111"  # swapped: the next receipt says so
    asyncio.run(_serve(instance, [torch.randn(1, 3)]))
    asyncio.run(_serve(instance, [torch.randn(1, 3)]))
    versions = [
        s.attributes[tel.ATTR_REFERENCE_VERSION]
        for s in spans.get_finished_spans()
        if s.name == "serve_drift.request"
    ]
    assert versions == ["none", "old@000000000000", "new@111111111111"]
