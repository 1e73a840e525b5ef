"""Ingress checks and input statistics for a decorator user's own handler, in one call."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
import torch

from serve_drift import monitored
from serve_drift.ingress import IngressError, IngressGate
from serve_drift.replica.decorator import replica_monitor
from tests.support.telemetry_memory import memory_telemetry
from tests.unit.apps.test_ingress_app import make_request, png_bytes
from tests.unit.replica.test_monitoring_path import FakeMonitorHandle


def _deployment() -> Any:
    @monitored({"model_name": "own-handler", "shipping": {"flush_interval_s": 0.01}})
    class OwnHandler:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Flatten(), torch.nn.Linear(64, 8), torch.nn.Linear(8, 3)
            )
            self.gate = IngressGate(input_shape=(1, 8, 8))

        async def __call__(self, request: Any) -> Any:
            try:
                admitted = await self.gate.admit(request)
            except IngressError as error:
                return self.gate.error_response(error)
            pixels = np.asarray(admitted.payload.images[0].image, dtype=np.float32) / 255
            with torch.no_grad():
                return {"class": int(self.model(torch.tensor(pixels)[None, None]).argmax())}

    return OwnHandler


def _call(instance: Any, request: Any) -> Any:
    async def run() -> Any:
        answer = await instance(request)
        await replica_monitor(instance).shipper.flush()
        return answer

    return asyncio.run(run())


def test_the_gate_marks_statistics_and_flags_on_the_event() -> None:
    memory_telemetry()
    handle = FakeMonitorHandle()
    instance = _deployment()(drift_monitor=handle)
    noise = np.random.default_rng(0).integers(0, 256, size=(8, 8), dtype=np.uint8)
    assert "class" in _call(instance, make_request(png_bytes(noise)))
    assert "class" in _call(instance, make_request(png_bytes(np.zeros((8, 8), dtype=np.uint8))))
    plain, blank = (batch.events[0] for batch in handle.batches)
    assert plain.input_stats is not None and plain.input_stats.width == 8
    assert plain.input_stats.contrast > 0 and not plain.flags
    assert {"constant", "dark"} <= set(blank.flags) and blank.exclude_from_drift


def test_the_gate_answers_refusals_with_the_error_contract() -> None:
    memory_telemetry()
    instance = _deployment()(drift_monitor=FakeMonitorHandle())
    response = _call(instance, make_request(b"GIF89a....", content_type="image/png"))
    body = json.loads(bytes(response.body))
    assert response.status_code == 415 and body["error"]["code"] == "unsupported_image_format"
    assert set(body["error"]) == {"code", "message", "request_id"}
