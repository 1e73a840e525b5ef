"""The one-line decorator on a user's own deployment, and failures in the monitor path."""

from __future__ import annotations

import time

import httpx
import numpy as np
import pytest
import torch

from serve_drift import monitored, monitored_app
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.scorer import scorer_reference
from tests.support.serve import ServeInstance

pytestmark = pytest.mark.integration


def _user_deployment(config: dict):
    """A user's ordinary deployment (defined here so Ray ships it by value)."""
    from ray import serve

    @serve.deployment
    @monitored(config)
    class Scorer:
        def __init__(self) -> None:
            torch.manual_seed(0)
            self.model = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3)
            )

        async def __call__(self, request) -> dict:
            values = (await request.json())["x"]
            with torch.no_grad():
                scores = self.model(torch.tensor([values], dtype=torch.float32))
            return {"scores": scores[0].tolist(), "mine": True}

    return Scorer


@pytest.fixture(scope="module")
def reference_path(tmp_path_factory: pytest.TempPathFactory) -> str:
    return scorer_reference(tmp_path_factory.mktemp("ref") / "scorer.npz", model_name="scorer")


def test_decorated_deployment_keeps_its_response_and_gets_drift_tests(
    serve_instance: ServeInstance, reference_path: str, otlp_receiver: OtlpReceiver
) -> None:
    from ray import serve

    config = {
        "model_name": "scorer",
        "model_version": "1",
        "reference_path": reference_path,
        "monitor_deployment": "ScorerMonitor",
        "window": {"size": 20},
        "detectors": [{"backend": "native"}],
        "shipping": {"flush_interval_s": 0.1},
    }
    serve.run(monitored_app(_user_deployment(config)), name="scorer", route_prefix="/scorer")
    try:
        rng = np.random.default_rng(1)
        with httpx.Client(timeout=30) as client:
            for i in range(20):
                response = client.post(
                    serve_instance.url("/scorer"),
                    json={"x": rng.normal(size=4).tolist()},
                    headers={"x-request-id": f"scorer-{i}"},
                )
                assert response.status_code == 200
                assert response.json()["mine"] is True and len(response.json()["scores"]) == 3
                assert response.headers["x-request-id"] == f"scorer-{i}"
        monitor = serve.get_deployment_handle("ScorerMonitor", app_name="scorer")
        deadline = time.monotonic() + 60
        while not (results := monitor.results.remote().result()) and time.monotonic() < deadline:
            time.sleep(0.3)
        assert results and results[0].window_size == 20 and results[0].backend == "native"
        assert set(results[0].correlation_ids_sample) <= {f"scorer-{i}" for i in range(20)}
    finally:
        serve.delete("scorer")


def test_failing_monitor_never_turns_200_into_500(
    serve_instance: ServeInstance, otlp_receiver: OtlpReceiver
) -> None:
    from ray import serve

    @serve.deployment
    class BrokenMonitor:
        async def ingest(self, batch) -> None:
            raise RuntimeError("injected monitor failure")

    config = {
        "model_name": "scorer-broken",
        "shipping": {"flush_interval_s": 0.05, "batch_size": 4},
    }
    app = _user_deployment(config).bind(drift_monitor=BrokenMonitor.bind())
    serve.run(app, name="broken", route_prefix="/broken")
    try:
        with httpx.Client(timeout=30) as client:
            for _i in range(12):
                response = client.post(
                    serve_instance.url("/broken"), json={"x": [0.1, 0.2, 0.3, 0.4]}
                )
                assert response.status_code == 200, response.text
                assert response.json()["mine"] is True

        def dropped(r: OtlpReceiver):
            points = [
                p
                for p in r.metric_points("serve_drift.embeddings.dropped")
                if p.attributes.get("reason") == "monitor_unreachable"
                and p.resource.get("service.name") == "scorer-broken"
            ]
            return points and max(p.value for p in points) >= 12

        otlp_receiver.wait_for(dropped)
    finally:
        serve.delete("broken")
