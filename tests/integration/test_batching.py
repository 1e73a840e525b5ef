"""Capture where GPU models are really served: inside ``@serve.batch`` (one forward pass for
several requests) and in ``loop.run_in_executor`` threads, on real Ray Serve under load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import numpy as np
import pytest
import torch

from serve_drift import monitored
from tests.support.serve import ServeInstance

pytestmark = pytest.mark.integration

REQUESTS = 48


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _recorder() -> Any:
    """A stand-in drift monitor that keeps every row it is sent, by correlation ID."""
    from ray import serve

    @serve.deployment
    class Recorder:
        def __init__(self) -> None:
            self.rows: dict[str, list[float]] = {}

        async def ingest(self, batch: Any) -> int:
            for event, embedding in zip(batch.events, batch.embeddings, strict=True):
                self.rows[event.correlation_id] = embedding.tolist()
            return len(batch.events)

        async def dump(self) -> dict[str, list[float]]:
            return self.rows

    return Recorder


def _batched(config: dict[str, Any]) -> Any:
    from ray import serve

    @serve.deployment(max_ongoing_requests=64)
    @monitored(config)
    class Batched:
        def __init__(self) -> None:
            self.model = _model().eval()

        @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.05)
        async def forward(self, inputs: list[list[float]]) -> list[dict[str, Any]]:
            with torch.no_grad():
                scores = self.model(torch.tensor(inputs, dtype=torch.float32))
            return [{"scores": s.tolist(), "batch_size": len(inputs)} for s in scores]

        async def __call__(self, request: Any) -> dict[str, Any]:
            return await self.forward((await request.json())["x"])

    return Batched


def _in_executor(config: dict[str, Any]) -> Any:
    from ray import serve

    @serve.deployment(max_ongoing_requests=64)
    @monitored(config)
    class InExecutor:
        def __init__(self) -> None:
            self.model = _model().eval()

        def _forward(self, x: list[float]) -> list[float]:
            with torch.no_grad():
                return self.model(torch.tensor([x], dtype=torch.float32))[0].tolist()

        async def __call__(self, request: Any) -> dict[str, Any]:
            x = (await request.json())["x"]
            loop = asyncio.get_running_loop()
            return {"scores": await loop.run_in_executor(None, self._forward, x)}

    return InExecutor


def _hidden(x: np.ndarray) -> np.ndarray:
    model = _model()
    with torch.no_grad():
        return model[1](model[0](torch.tensor(x, dtype=torch.float32))).numpy()


async def _load(url: str, inputs: np.ndarray, prefix: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(timeout=60) as client:
        responses = await asyncio.gather(
            *(
                client.post(url, json={"x": x.tolist()}, headers={"x-request-id": f"{prefix}-{i}"})
                for i, x in enumerate(inputs)
            )
        )
    assert all(r.status_code == 200 for r in responses)
    assert [r.headers["x-request-id"] for r in responses] == [
        f"{prefix}-{i}" for i in range(len(inputs))
    ]
    return [r.json() for r in responses]


@pytest.mark.parametrize("kind", ["serve_batch", "run_in_executor"])
def test_every_request_gets_its_own_row(serve_instance: ServeInstance, kind: str) -> None:
    from ray import serve

    name = f"rows-{kind.replace('_', '-')}"
    config = {"model_name": name, "shipping": {"flush_interval_s": 0.05}}
    deployment = (_batched if kind == "serve_batch" else _in_executor)(config)
    serve.run(deployment.bind(drift_monitor=_recorder().bind()), name=name, route_prefix=f"/{name}")
    try:
        inputs = np.random.default_rng(1).normal(size=(REQUESTS, 4))
        answers = asyncio.run(_load(serve_instance.url(f"/{name}"), inputs, name))
        if kind == "serve_batch":
            assert max(a["batch_size"] for a in answers) > 1, "no request was batched"
        recorder = serve.get_deployment_handle("Recorder", app_name=name)
        rows: dict[str, list[float]] = {}
        for _ in range(100):
            rows = recorder.dump.remote().result()
            if len(rows) == REQUESTS:
                break
            time.sleep(0.1)
        assert set(rows) == {f"{name}-{i}" for i in range(REQUESTS)}
        expected = _hidden(inputs)
        for i in range(REQUESTS):  # each row is the classifier input of that request's input
            np.testing.assert_allclose(rows[f"{name}-{i}"], expected[i], rtol=1e-5, atol=1e-6)
    finally:
        serve.delete(name)
