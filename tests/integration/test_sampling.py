"""A replica above its rate cap, on real Ray Serve: it ships a weighted sample, and the monitor
accounts for every served request and labels its windows with the share it tested."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from serve_drift import monitored_app
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.scorer import scorer_class, scorer_reference
from tests.support.serve import ServeInstance

pytestmark = pytest.mark.integration

REQUESTS = 200


def _reference(tmp_path: Path) -> str:
    return scorer_reference(tmp_path / "scorer.npz", model_name="sampled")


def test_a_capped_replica_ships_a_sample_and_the_monitor_counts_every_request(
    serve_instance: ServeInstance, otlp_receiver: OtlpReceiver, tmp_path: Path
) -> None:
    from ray import serve

    config = {
        "model_name": "sampled",
        "model_version": "1",
        "reference_path": _reference(tmp_path),
        "monitor_deployment": "SampledMonitor",
        "window": {"size": 10},
        "detectors": [{"kind": "combined", "n_permutations": 50}],
        "shipping": {"flush_interval_s": 0.1, "max_rows_per_s": 10, "burst_s": 1},
        "events": {"path": str(tmp_path / "events.sqlite")},
    }
    deployment = serve.deployment(scorer_class(config), name="Sampled")
    serve.run(monitored_app(deployment), name="sampled", route_prefix="/sampled")
    try:
        with httpx.Client(timeout=30) as client:
            for i in range(REQUESTS):
                body = {"x": [0.1 * (i % 7), 0.2, -0.1, 0.3]}
                assert client.post(serve_instance.url("/sampled"), json=body).status_code == 200
        monitor = serve.get_deployment_handle("SampledMonitor", app_name="sampled")
        health = _wait_for_accounting(monitor)
        events = health.event_log.events
        assert health.counts.unsampled > 0 and health.counts.received < REQUESTS
        assert health.counts.received + health.counts.unsampled == REQUESTS
        assert events.accepted == REQUESTS and events.sampled_out >= health.counts.unsampled
        results = monitor.results.remote().result()
        assert results and all(r.sampling_rate < 1.0 for r in results)
    finally:
        serve.delete("sampled")


def _wait_for_accounting(monitor: object, *, timeout_s: float = 60.0) -> object:
    """The monitor's health once it has heard of every request (shipped or left out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = monitor.health.remote().result()  # type: ignore[attr-defined]
        heard = health.counts.received + health.counts.unsampled
        if (heard >= REQUESTS and health.counts.windows_tested) or time.monotonic() > deadline:
            return health
        time.sleep(0.3)
