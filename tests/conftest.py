"""Shared fixtures: an isolated cache and one real OTLP receiver per test run.

Unit tests never start Ray; ``tests/integration/conftest.py`` starts one Ray Serve instance for
the whole run, on loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from serve_drift.tools.local_ray import bind_ray_to_loopback
from tests.support.otlp_receiver import OtlpReceiver

# Before any test module imports Ray: it reads the switch once, at import.
bind_ray_to_loopback()


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
