"""Many requests in one handle call: each answered as if it had come alone, under its own IDs,
and one copy's failure or hang is its own, never its batch neighbours'."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import torch

from serve_drift import answer_batch, monitored
from serve_drift.replica.decorator import replica_monitor
from serve_drift.request_context import (
    BATCH_METHOD,
    BatchedAnswer,
    BatchedFailure,
    BatchedRequest,
    RequestIds,
    current_request_ids,
)
from tests.support.telemetry_memory import memory_telemetry
from tests.unit.replica.test_monitoring_path import FakeMonitorHandle
from tests.unit.replica.test_monitoring_path import _deployment as monitored_classifier


def _items(n: int) -> list[BatchedRequest]:
    return [BatchedRequest(i, RequestIds(f"client-{i}", f"internal-{i}")) for i in range(n)]


def _ray_request_id() -> str:
    from ray.serve.context import _get_serve_request_context

    return str(_get_serve_request_context().request_id)


def test_each_item_is_answered_in_order_under_its_own_ids() -> None:
    async def handler(x: int) -> tuple[int, str, str, str]:
        await asyncio.sleep(0.01 * (3 - x))  # finish out of order
        ids = current_request_ids()
        return x, ids.correlation_id, ids.internal_id, _ray_request_id()

    outcomes = asyncio.run(answer_batch(handler, _items(3), timeout_s=5.0))
    assert [o.result for o in outcomes if isinstance(o, BatchedAnswer)] == [
        (i, f"client-{i}", f"internal-{i}", f"client-{i}") for i in range(3)
    ]
    assert all(0 < o.latency_s < 5.0 for o in outcomes)


def test_a_raising_item_is_its_own_failure_and_the_others_answer() -> None:
    async def handler(x: int) -> int:
        if x == 1:
            raise KeyError("bad copy")
        return x * 10

    outcomes = asyncio.run(answer_batch(handler, _items(3), timeout_s=5.0))
    assert isinstance(outcomes[0], BatchedAnswer) and outcomes[0].result == 0
    assert isinstance(outcomes[1], BatchedFailure) and outcomes[1].kind == "error"
    assert outcomes[1].error_type == "KeyError"
    assert isinstance(outcomes[2], BatchedAnswer) and outcomes[2].result == 20


def test_a_hanging_item_times_out_alone_and_is_cancelled() -> None:
    cancelled: list[int] = []

    async def handler(x: int) -> int:
        if x == 0:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                cancelled.append(x)
                raise
        return x

    started = time.perf_counter()
    outcomes = asyncio.run(answer_batch(handler, _items(3), timeout_s=0.1))
    elapsed_s = time.perf_counter() - started
    assert outcomes[0] == BatchedFailure("timeout", 0.1)
    assert [o.result for o in outcomes[1:] if isinstance(o, BatchedAnswer)] == [1, 2]
    assert cancelled == [0] and elapsed_s < 5.0


def test_a_sync_handler_runs_in_a_thread_with_the_items_ids() -> None:
    def handler(x: int) -> str:
        return current_request_ids().correlation_id

    outcomes = asyncio.run(answer_batch(handler, _items(2), timeout_s=5.0))
    assert [o.result for o in outcomes if isinstance(o, BatchedAnswer)] == ["client-0", "client-1"]


def test_a_monitored_class_answers_a_batch_with_a_span_and_an_event_per_copy() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    handle = FakeMonitorHandle()
    instance = monitored_classifier()(drift_monitor=handle)
    items = [
        BatchedRequest(torch.full((1, 3), float(i)), RequestIds(f"c-{i}", f"in-{i}"))
        for i in range(4)
    ]

    async def run() -> list[Any]:
        outcomes = await getattr(instance, BATCH_METHOD)(items, 5.0)
        await replica_monitor(instance).shipper.flush()
        return list(outcomes)

    outcomes = asyncio.run(run())
    assert all(isinstance(o, BatchedAnswer) and len(o.result) == 1 for o in outcomes)
    requests = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
    assert sorted(str(s.attributes["serve_drift.correlation_id"]) for s in requests) == [
        f"c-{i}" for i in range(4)
    ]
    events = [event for batch in handle.batches for event in batch.events]
    assert sorted((e.correlation_id, e.internal_id) for e in events) == [
        (f"c-{i}", f"in-{i}") for i in range(4)
    ]
    embeddings = {
        e.correlation_id: row
        for b in handle.batches
        for e, row in zip(b.events, b.embeddings, strict=True)
    }
    assert len({tuple(row.round(6)) for row in embeddings.values()}) == 4  # each copy its own row


def test_a_class_with_its_own_batch_method_keeps_it() -> None:
    @monitored({"model_name": "own-batch"})
    class Own:
        def __init__(self) -> None:
            self.model = torch.nn.Sequential(torch.nn.Linear(3, 2))

        async def __call__(self, x: Any) -> Any:
            return x

        async def serve_drift_batch(self, items: list[Any], timeout_s: float) -> str:
            return "mine"

    assert asyncio.run(Own(drift_monitor=FakeMonitorHandle()).serve_drift_batch([], 1.0)) == "mine"


def test_an_empty_batch_answers_nothing() -> None:
    assert asyncio.run(answer_batch(lambda x: x, [], timeout_s=1.0)) == []
