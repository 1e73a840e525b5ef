"""``serve-drift events``: filters, table and JSON-lines output, time parsing, ``--db`` and
``--dsn`` (a real PostgreSQL server)."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest

from serve_drift.eventlog.labels import compute_metrics, metrics_record
from serve_drift.eventlog.schema import DriftTestRecord, _example_drift_dict, record_from_json
from serve_drift.eventlog.store import EventStore, PostgresEventStore
from serve_drift.tools import events_cli as cli
from tests.support.eventlog_helpers import make_record, make_records, with_window
from tests.support.postgres import PostgresServer


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.db"
    with EventStore(path) as store:
        store.write_batch(
            [
                *make_records(20, model_version="v1"),
                *with_window(make_records(5, start=20, model_version="v2"), 2),
                make_record(30, validation_flags=("too_dark",), correlation_id="dark-1"),
            ]
        )
        store.write_drift_results([DriftTestRecord.from_result(_example_drift_dict())])
        metrics = compute_metrics(y_true=[1, 2], y_pred=[1, 1], confidence=[0.9, 0.6])
        store.write_concept_metrics(
            [
                metrics_record(
                    metrics, tag="feedback", model_name="m", model_version="v1", window_index=2
                )
            ]
        )
    return path


def _jsonl(capsys: pytest.CaptureFixture[str]) -> list:
    return [record_from_json(line) for line in capsys.readouterr().out.splitlines()]


def test_recent_events_as_a_table_by_default(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--db", str(db), "--limit", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["time", "(UTC)", "correlation_id"]
    assert len(lines) == 4 and "dark-1" in lines[1] and "too_dark" in lines[1]
    assert "1970-01-01 00:17:10.000" in lines[1]  # timestamp 1030 in UTC, to the millisecond
    assert "camera=cam-0 site=berlin" in lines[1]


def test_filters_and_jsonl(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["list", "--db", str(db), "--format", "jsonl", "--limit", "100"]
    assert cli.main([*base, "--correlation-id", "req-3"]) == 0
    assert [r.correlation_id for r in _jsonl(capsys)] == ["req-3"]
    cli.main([*base, "--model-version", "v2"])
    assert len(_jsonl(capsys)) == 5
    cli.main([*base, "--flagged"])
    assert [r.correlation_id for r in _jsonl(capsys)] == ["dark-1"]
    cli.main([*base, "--window", "2"])
    assert {r.drift_window for r in _jsonl(capsys)} == {2}
    cli.main([*base, "--since", "1970-01-01T00:16:45", "--until", "1005"])  # 1005 s = 00:16:45
    assert _jsonl(capsys) == []
    cli.main([*base, "--since", "1000", "--until", "1003"])
    assert sorted(r.timestamp for r in _jsonl(capsys)) == [1000.0, 1001.0, 1002.0]
    cli.main([*base, "--since", "15m"])  # relative to now: these test events are from 1970
    assert _jsonl(capsys) == []


def test_drift_metrics_and_health_commands(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["drift", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "mmd/native" in out and "DRIFT" in out
    assert cli.main(["metrics", "--db", str(db), "--format", "jsonl"]) == 0
    (record,) = _jsonl(capsys)
    assert record.tag == "feedback" and record.metrics.accuracy == 0.5
    assert cli.main(["metrics", "--db", str(db), "--tag", "sentinel"]) == 0
    assert "(no records)" in capsys.readouterr().out
    assert cli.main(["health", "--db", str(db), "--format", "jsonl"]) == 0
    health = json.loads(capsys.readouterr().out)
    assert health["events"] == 26 and health["degraded"] is False


def test_missing_store_and_bad_times_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["--db", str(tmp_path / "nope.db")]) == 1
    assert "no event store" in capsys.readouterr().err
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(SystemExit):
        cli.main(["--db", str(tmp_path / "nope.db"), "--since", "yesterday-ish"])
    assert "not a time" in capsys.readouterr().err


def test_time_parsing() -> None:
    assert cli.parse_time("90s", now=1000.0) == 910.0
    assert cli.parse_time("2h", now=10_000.0) == 2800.0
    assert cli.parse_time("1.5d", now=200_000.0) == 200_000.0 - 129_600.0
    assert (
        cli.parse_time("2026-03-01T00:00:00Z")
        == datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
    )
    assert (
        cli.parse_time("2026-03-01") == datetime(2026, 3, 1, tzinfo=timezone.utc).timestamp()
    )  # UTC
    assert cli.parse_time("2026-03-01T01:00:00+01:00") == cli.parse_time("2026-03-01")
    assert cli.parse_time("12.5") == 12.5


def test_default_db_comes_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_EVENT_DB", str(tmp_path / "x.db"))
    assert cli.default_db_path() == tmp_path / "x.db"
    monkeypatch.delenv("SERVE_DRIFT_EVENT_DB")
    monkeypatch.setenv("SERVE_DRIFT_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.default_db_path() == tmp_path / "cache" / "events" / "model.sqlite"
    (tmp_path / "cache" / "events").mkdir(parents=True)
    (tmp_path / "cache" / "events" / "digits.sqlite").touch()
    assert cli.default_db_path() == tmp_path / "cache" / "events" / "digits.sqlite"


def test_dsn_reads_a_postgres_store_and_never_prints_its_password(
    postgres_server: PostgresServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dsn = postgres_server.new_database()
    secret = postgres_server.password
    with PostgresEventStore(dsn, schema="sd_app__monitor") as store:
        store.write_batch(make_records(4))
    # The only schema holding a store is found by itself.
    assert cli.main(["--dsn", dsn, "--format", "jsonl"]) == 0
    assert len(_jsonl(capsys)) == 4
    monkeypatch.setenv("SERVE_DRIFT_EVENTS_DSN", dsn)  # the same, from the environment
    assert cli.main(["health", "--format", "jsonl"]) == 0
    out = capsys.readouterr().out
    health = json.loads(out)
    assert health["events"] == 4 and health["backend"] == "postgres" and secret not in out
    assert health["path"].endswith("#sd_app__monitor")
    with PostgresEventStore(dsn, schema="sd_app__other"):
        pass
    assert cli.main(["--dsn", dsn]) == 1  # two stores now: which one?
    err = capsys.readouterr().err
    assert "sd_app__monitor, sd_app__other" in err and "--pg-schema" in err and secret not in err
    assert cli.main(["--dsn", dsn, "--pg-schema", "sd_app__other", "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == ""
    wrong = dsn.replace(secret, "not-the-password")
    assert cli.main(["--dsn", wrong]) == 1
    assert "not-the-password" not in capsys.readouterr().err
