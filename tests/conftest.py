"""Shared fixtures: one real OTLP receiver and one local Ray Serve instance per test run."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.otlp_receiver import OtlpReceiver


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class ServeInstance:
    http_port: int

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http_port}{path}"


@pytest.fixture(scope="session", autouse=True)
def isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Models, reference sets and event stores of this test run live in a temporary folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SERVE_DRIFT_CACHE_DIR", str(tmp_path_factory.mktemp("serve-drift-cache")))
    patch.setenv("SERVE_DRIFT_TELEMETRY_DIR", str(tmp_path_factory.mktemp("telemetry")))
    yield
    patch.undo()


@pytest.fixture(scope="session")
def otlp_receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture(scope="session")
def serve_instance(
    otlp_receiver: OtlpReceiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServeInstance]:
    """Ray and Serve, started once; every Ray worker inherits the OTLP settings set here."""
    ray = pytest.importorskip("ray")
    from ray import serve

    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": "500",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SERVE_DRIFT_CONFIGURE_OTEL": "1",
        "RAY_SERVE_LOG_TO_STDERR": "0",
    }
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    port = free_port()
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        logging_level="ERROR",
    )
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        yield ServeInstance(http_port=port)
    finally:
        serve.shutdown()
        ray.shutdown()
        patch.undo()
        os.environ.pop("RAY_ADDRESS", None)
