"""Shipping through a monitored deployment without Ray: the cap, the count of every row left
out, the monitor's advice, and what the request path still records itself."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import torch
from opentelemetry.trace import StatusCode

from serve_drift import monitored
from serve_drift.messages import EventBatch, IngestReceipt
from serve_drift.replica.decorator import replica_monitor
from serve_drift.replica.shipper import ANSWER_ROWS
from tests.support.telemetry_memory import memory_telemetry, metric_points
from tests.unit.replica.test_monitoring_path import _Method


class AdvisingMonitor:
    """A monitor double that answers with receipts, optionally advising a share."""

    def __init__(self, *, share: float | None = None, fail_first: int = 0) -> None:
        self.batches: list[EventBatch] = []
        self.share = share
        self.fail_first = fail_first
        self.ingest = _Method(self._ingest)

    async def _ingest(self, batch: EventBatch) -> IngestReceipt:
        if self.fail_first:
            self.fail_first -= 1
            raise RuntimeError("monitor restarting")
        self.batches.append(batch)
        return IngestReceipt(accepted=len(batch.events), recorded=True, max_rows_per_s=self.share)


def _deployment(name: str, **shipping: Any) -> Any:
    shipping = {"flush_interval_s": 0.01, "batch_size": 64, **shipping}  # several batches

    @monitored({"model_name": name, "shipping": shipping})
    class Classifier:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Linear(5, 2))

        async def __call__(self, x: torch.Tensor) -> list[int]:
            if x.shape[-1] != 3:
                raise ValueError("the application's own error")
            return self.model(x).argmax(-1).tolist()

    return Classifier


def _serve(instance: Any, n: int) -> None:
    async def run() -> None:
        for _ in range(n):
            await instance(torch.randn(1, 3))
        await replica_monitor(instance).shipper.flush()

    asyncio.run(run())


def test_above_its_cap_a_replica_ships_a_weighted_sample_and_counts_every_row() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor()
    instance = _deployment("capped", max_rows_per_s=10.0, burst_s=1.0)(drift_monitor=monitor)
    _serve(instance, 300)  # far faster than 10 rows a second
    shipper = replica_monitor(instance).shipper
    shipped = sum(len(b.events) for b in monitor.batches)
    assert shipper.shipped == shipped and 10 <= shipped < 300
    assert shipper.dropped == {"sampled_out": 300 - shipped}
    assert sum(b.unsampled for b in monitor.batches) == 300 - shipped  # the monitor was told
    weights = [e.sampling_weight for b in monitor.batches for e in b.events]
    assert sum(weights) == pytest.approx(300)  # and the weights stand for every served row


def test_under_its_cap_every_row_ships_unweighted() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor()
    instance = _deployment("uncapped")(drift_monitor=monitor)
    _serve(instance, 70)
    events = [e for b in monitor.batches for e in b.events]
    assert len(events) == 70 and {e.sampling_weight for e in events} == {1.0}
    assert all(b.unsampled == 0 for b in monitor.batches)
    assert replica_monitor(instance).replica_health().sampling_rate_cap is None


def test_the_monitors_share_caps_a_replica_that_has_no_cap_of_its_own() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor(share=5.0)
    instance = _deployment("advised")(drift_monitor=monitor)
    _serve(instance, 200)
    health = replica_monitor(instance).replica_health()
    assert health.sampling_rate_cap == 5.0 and health.dropped.get("sampled_out", 0) > 0


def test_rows_left_out_are_reported_with_the_next_batch_the_monitor_takes() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor(fail_first=1)
    instance = _deployment("carry", max_rows_per_s=20.0, burst_s=1.0)(drift_monitor=monitor)
    _serve(instance, 100)  # its batch fails: the monitor has not heard of the 80 left out
    shipper = replica_monitor(instance).shipper
    assert shipper.dropped == {"monitor_unreachable": 20, "sampled_out": 80}
    time.sleep(0.3)  # tokens for a few more rows
    _serve(instance, 100)
    assert monitor.batches and monitor.batches[0].unsampled == shipper.dropped["sampled_out"]
    assert shipper.dropped["sampled_out"] > 80


def test_rows_left_out_reach_the_monitor_even_when_no_row_ships() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor()
    instance = _deployment("all-out", max_rows_per_s=5.0, burst_s=1.0)(drift_monitor=monitor)
    _serve(instance, 20)  # the bucket's 5 rows ship, 15 are left out
    _serve(instance, 20)  # no token left: nothing ships, yet the monitor hears of all 20
    reported = sum(b.unsampled for b in monitor.batches)
    assert reported == replica_monitor(instance).shipper.dropped["sampled_out"] == 35
    assert len(monitor.batches[-1].events) == 0 and monitor.batches[-1].embeddings.shape == (0, 5)


def test_request_counts_reach_the_counter_at_the_next_tick() -> None:
    _, reader = memory_telemetry()
    instance = _deployment("counted")(drift_monitor=AdvisingMonitor())
    _serve(instance, 7)
    with pytest.raises(ValueError):
        asyncio.run(instance(torch.randn(1, 4)))
    replica_monitor(instance).requests.flush()
    points = [
        p
        for p in metric_points(reader, "serve_drift.requests")
        if p.attributes.get("serve_drift.model.name") == "counted"
    ]
    assert {p.attributes["outcome"]: p.value for p in points} == {"ok": 7, "error": 1}


def test_an_application_error_is_recorded_on_its_request_span() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    instance = _deployment("failing-span")(drift_monitor=AdvisingMonitor())
    with pytest.raises(ValueError, match="the application's own error"):
        asyncio.run(instance(torch.randn(1, 4)))
    (span,) = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
    assert span.status.status_code == StatusCode.ERROR
    assert [e.name for e in span.events] == ["exception"]


def _serve_yielding(instance: Any, n: int) -> None:
    """``n`` requests, each followed by a turn of the loop (the drain task's chance to run)."""

    async def run() -> None:
        for _ in range(n):
            await instance(torch.randn(1, 3))
            await asyncio.sleep(0)

    asyncio.run(run())


def test_spans_end_every_few_dozen_rows_while_their_rows_wait_for_the_send() -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    monitor = AdvisingMonitor()
    instance = _deployment("answered", batch_size=256, flush_interval_s=30.0)(drift_monitor=monitor)

    async def run() -> None:
        for _ in range(ANSWER_ROWS + 8):
            await instance(torch.randn(1, 3))
            await asyncio.sleep(0)
        ended = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
        # The first drain's spans ended (the task wakes a turn or two after the 32nd row),
        # the last requests' spans still open, and nothing sent yet.
        assert ANSWER_ROWS <= len(ended) < ANSWER_ROWS + 8 and not monitor.batches
        shipper = replica_monitor(instance).shipper
        assert shipper.pending() == ANSWER_ROWS + 8  # every row still counted as pending
        await shipper.flush()

    asyncio.run(run())
    assert [len(b.events) for b in monitor.batches] == [ANSWER_ROWS + 8]  # one send
    ended = [s for s in spans.get_finished_spans() if s.name == "serve_drift.request"]
    assert len(ended) == ANSWER_ROWS + 8


def test_answered_rows_count_against_the_queue_bound_until_they_are_sent() -> None:
    memory_telemetry()
    monitor = AdvisingMonitor()
    instance = _deployment("bounded", batch_size=256, flush_interval_s=30.0, max_queue=40)(
        drift_monitor=monitor
    )
    _serve_yielding(instance, 60)  # 40 taken (answered, waiting), then the bound refuses
    shipper = replica_monitor(instance).shipper
    assert shipper.dropped == {"queue_full": 20} and shipper.pending() == 40
    asyncio.run(shipper.flush())
    assert shipper.shipped == 40 and shipper.pending() == 0
    _serve_yielding(instance, 10)  # sent: the bound has room again
    asyncio.run(shipper.flush())
    assert shipper.shipped == 50 and shipper.dropped == {"queue_full": 20}


@pytest.mark.parametrize("turns", [0, 1, 2, 3, 4])
def test_stop_ends_the_drain_task_even_as_rows_wake_it(turns: int) -> None:
    memory_telemetry()
    monitor = AdvisingMonitor()
    instance = _deployment(f"stopped-{turns}", batch_size=256, flush_interval_s=30.0)(
        drift_monitor=monitor
    )

    async def run() -> None:
        for _ in range(ANSWER_ROWS + 1):  # the last offer wakes the task
            await instance(torch.randn(1, 3))
        for _ in range(turns):  # the cancellation lands at each point of the wake-up
            await asyncio.sleep(0)
        shipper = replica_monitor(instance).shipper
        await asyncio.wait_for(shipper.stop(), timeout=5.0)
        assert shipper._task is not None and shipper._task.done()
        assert shipper.shipped == ANSWER_ROWS + 1 and shipper.pending() == 0

    asyncio.run(run())
