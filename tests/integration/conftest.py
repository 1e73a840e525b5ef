"""One local Ray Serve instance for every integration test of the run, bound to loopback."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from serve_drift.tools.local_ray import start_local_ray
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ADMIN_TOKEN, ServeInstance, free_port


@pytest.fixture(scope="session")
def serve_instance(
    otlp_receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeInstance]:
    """Ray and Serve, started once; every Ray worker inherits the OTLP settings set here."""
    import ray
    from ray import serve

    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVE_DRIFT_CONFIGURE_OTEL": "1",
        "RAY_SERVE_LOG_TO_STDERR": "0",
        "SERVE_DRIFT_ADMIN_TOKEN": ADMIN_TOKEN,
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    port = free_port()
    start_local_ray(  # on 127.0.0.1 only
        num_cpus=8, log_to_driver=False, configure_logging=False, logging_level="ERROR"
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeInstance(http_port=port)
    finally:
        serve.shutdown()
        ray.shutdown()
        patch.undo()
        os.environ.pop("RAY_ADDRESS", None)
