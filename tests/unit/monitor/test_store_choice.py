"""Which store a monitor opens: SQLite by default, PostgreSQL when a DSN is configured (in the
config or the environment), in a schema of the monitor's own."""

from __future__ import annotations

from pathlib import Path

import pytest

from serve_drift.config import DriftConfig
from serve_drift.eventlog.store import EventStore, PostgresEventStore
from serve_drift.monitor.event_log import open_event_store
from tests.support.postgres import PostgresServer


def test_sqlite_unless_a_dsn_is_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SERVE_DRIFT_EVENTS_DSN", raising=False)
    config = DriftConfig(model_name="digits", events={"path": str(tmp_path / "e.sqlite")})
    with open_event_store(config) as store:
        assert isinstance(store, EventStore) and store.path == tmp_path / "e.sqlite"


def test_a_dsn_in_the_config_or_the_environment_means_postgres(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    dsn = postgres_server.new_database()
    config = DriftConfig(model_name="digits", events={"dsn": dsn, "pg_schema": "mine"})
    with open_event_store(config) as store:
        assert isinstance(store, PostgresEventStore) and store.schema == "mine"
        assert not store.health().degraded
    monkeypatch.setenv("SERVE_DRIFT_EVENTS_DSN", dsn)
    with open_event_store(DriftConfig(model_name="Digits-CNN")) as store:
        # Outside a Serve replica the app is "local"; the monitor's default name follows.
        assert isinstance(store, PostgresEventStore)
        assert store.schema == "sd_local__digits_cnndriftmonitor"


def test_a_schema_name_that_is_not_an_identifier_is_refused() -> None:
    with pytest.raises(ValueError, match="pg_schema"):
        DriftConfig(events={"pg_schema": 'x"; DROP TABLE labels; --'})
