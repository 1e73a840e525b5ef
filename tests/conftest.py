"""Shared fixtures: an isolated cache, one real OTLP receiver and (when a test asks for it) one
real PostgreSQL server per test run, and the event-store backends the contract suite runs over.

Unit tests never start Ray; ``tests/integration/conftest.py`` starts one Ray Serve instance for
the whole run, on loopback only.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from serve_drift.tools.local_ray import bind_ray_to_loopback
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.postgres import PostgresServer, PostgresUnavailable
from tests.support.store_backends import BACKENDS, PostgresBackend, SqliteBackend

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


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on 127.0.0.1 for the whole run; a missing server fails, never skips."""
    try:
        with PostgresServer.started() as server:
            yield server
    except PostgresUnavailable as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(params=BACKENDS)
def store_backend(
    request: pytest.FixtureRequest, tmp_path: Path
) -> SqliteBackend | PostgresBackend:
    """Each event-store backend in turn: a fresh store location (file or schema) per test."""
    if request.param == "sqlite":
        return SqliteBackend(tmp_path)
    return PostgresBackend(request.getfixturevalue("postgres_server"))
