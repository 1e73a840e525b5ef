"""Observations reach the comparator in batches; a full buffer or a failing comparator drops
and counts, and answers are parsed only there, off the request path."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import JSONResponse

from serve_drift.config import ShippingConfig
from serve_drift.routing.messages import Observation
from serve_drift.routing.shipping import PendingObservation, RawAnswer, observation_shipper


def _pending(i: int) -> PendingObservation:
    answer = JSONResponse({"class_index": i % 10, "confidence": 0.9, "model_version": "v"})
    return PendingObservation(
        correlation_id=f"r{i}",
        timestamp=float(i),
        mode="canary",
        served_by="incumbent",
        incumbent=RawAnswer(answer, 0.01),
    )


def test_observations_arrive_parsed_in_batches() -> None:
    received: list[list[Observation]] = []

    async def run() -> int:
        async def send(batch: list[Observation]) -> None:
            received.append(batch)

        shipper = observation_shipper(
            config=ShippingConfig(batch_size=4, flush_interval_s=0.01), send=send
        )
        for i in range(10):
            shipper.offer(_pending(i))
        await asyncio.sleep(0.1)
        await shipper.stop()
        return shipper.shipped

    assert asyncio.run(run()) == 10
    assert [len(b) for b in received] == [4, 4, 2]
    first = received[0][0]
    assert first.incumbent is not None and first.incumbent.rows[0].predicted == 0


def test_a_full_buffer_and_an_unreachable_comparator_drop_and_count() -> None:
    async def run() -> tuple[int, dict[str, int]]:
        async def send(batch: list[Observation]) -> Any:
            raise ConnectionError("comparator gone")

        shipper = observation_shipper(
            config=ShippingConfig(max_queue=3, batch_size=10, flush_interval_s=0.01), send=send
        )
        for i in range(5):
            shipper.offer(_pending(i))
        await asyncio.sleep(0.1)
        await shipper.stop()
        return shipper.shipped, dict(shipper.dropped)

    shipped, dropped = asyncio.run(run())
    assert shipped == 0 and dropped == {"queue_full": 2, "comparator_unreachable": 3}
