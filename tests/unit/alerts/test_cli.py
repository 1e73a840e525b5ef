"""``serve-drift alerts``: list, show, check, compile, backtest, and maintenance over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.control import MaintenanceService
from serve_drift.alerts.endpoints import MAINTENANCE_PATH, maintenance_endpoint
from serve_drift.alerts.pipeline import AlertPipeline
from serve_drift.eventlog.schema import DriftTestRecord
from serve_drift.eventlog.store import EventStore, PostgresEventStore
from serve_drift.tools.cli import main
from tests.support.alert_signals import MODEL, drift_result, replay, windows
from tests.support.postgres import PostgresServer
from tests.support.serve import free_port

P_VALUES = [0.5, 0.002, 0.003, 0.004, 0.5, 0.5, 0.5, 0.5]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "events.sqlite"
    with EventStore(path) as store:
        store.write_alert_transitions(replay(windows(P_VALUES), config=AlertsConfig(sinks=())))
        store.write_drift_results(
            [DriftTestRecord.from_result(drift_result(p, window=i)) for i, p in enumerate(P_VALUES)]
        )
    return path


def test_list_shows_the_incidents(db: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["alerts", "list", "--db", str(db)]) == 0
    table = capsys.readouterr().out
    assert "input-drift" in table and "resolved" in table and "detector=combined" in table
    assert main(["alerts", "list", "--db", str(db), "--state", "open", "--format", "jsonl"]) == 0
    assert capsys.readouterr().out == ""


def test_show_prints_the_evidence_and_the_history(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    main(["alerts", "list", "--db", str(db), "--format", "jsonl"])
    incident_id = json.loads(capsys.readouterr().out.splitlines()[0])["incident_id"]
    assert main(["alerts", "show", incident_id[:8], "--db", str(db)]) == 0
    text = capsys.readouterr().out
    assert "runbook:   https://github.com/serve-drift/serve-drift#input-drift" in text
    assert (
        "#1 combined/native p=0.002 *" in text and "trace 0000000000000000000000000000000" in text
    )
    assert "requests req-1-0,req-1-1,req-1-2" in text
    assert "opened     notified" in text and "resolved   notified" in text
    assert main(["alerts", "show", incident_id, "--db", str(db), "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [t["kind"] for t in body["transitions"]] == ["opened", "resolved"]


def test_list_and_show_read_a_postgres_store_by_dsn(
    postgres_server: PostgresServer, capsys: pytest.CaptureFixture[str]
) -> None:
    dsn = postgres_server.new_database()
    with PostgresEventStore(dsn, schema="sd_alerts__monitor") as store:
        store.write_alert_transitions(replay(windows(P_VALUES), config=AlertsConfig(sinks=())))
    assert main(["alerts", "list", "--dsn", dsn, "--format", "jsonl"]) == 0
    incident_id = json.loads(capsys.readouterr().out.splitlines()[0])["incident_id"]
    assert main(["alerts", "show", incident_id[:8], "--dsn", dsn, "--format", "json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert [t["kind"] for t in body["transitions"]] == ["opened", "resolved"]


def test_show_of_an_unknown_incident_fails_clearly(db: Path) -> None:
    with pytest.raises(SystemExit, match="no single incident"):
        main(["alerts", "show", "ffff", "--db", str(db)])


def test_check_states_each_rule_and_its_false_alert_rate(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["alerts", "check", "--config", "deployments/digits.yaml"]) == 0
    out = capsys.readouterr().out
    assert "9 rules for digits" in out
    assert any(line.startswith("input-drift") and "0.333" in line for line in out.splitlines())


def test_compile_writes_the_four_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["alerts", "compile", "--model-name", "faces", "--out-dir", str(tmp_path)]
    assert main([*args, "--metric-prefix", ""]) == 0
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "faces-alert-rules.yml",
        "faces-alertmanager.yml",
        "faces-dashboard.json",
        "faces-prometheus.yml",
    ]
    rules = (tmp_path / "faces-alert-rules.yml").read_text()
    assert 'serve_drift_alerts_active{model_name="faces"' in rules and "ray_" not in rules


def test_backtest_replays_the_stored_drift_results(
    db: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["alerts", "backtest", "--db", str(db), "--model-name", MODEL]) == 0
    out = capsys.readouterr().out
    assert "8 signals replayed through 9 rules" in out
    assert [line.split()[2] for line in out.splitlines()[2:]] == ["opened", "resolved"]


@pytest.fixture
def app_url() -> Iterator[str]:
    pipeline = AlertPipeline.from_config(AlertsConfig(sinks=()), model_name=MODEL, started_at=0.0)
    service = MaintenanceService(pipeline)

    async def maintenance(request: Request) -> object:
        def admin(r: Request) -> bool:
            return r.headers.get("authorization") == "Bearer t0ken"

        return await maintenance_endpoint(request, control=service, check_admin=admin)

    app = Starlette(
        routes=[Route(MAINTENANCE_PATH, maintenance, methods=["GET", "POST", "DELETE"])]
    )
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)
    pipeline.close()


def test_maintenance_through_the_app(
    app_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", "t0ken")
    start = ["alerts", "maintenance", "start", "--url", app_url, "--who", "alice", "--why", "v7"]
    assert main([*start, "--for", "2h"]) == 0
    started = json.loads(capsys.readouterr().out)
    assert started["active"] is True
    assert started["maintenance"]["until"] - started["maintenance"]["started_at"] == 7200
    assert main(["alerts", "maintenance", "status", "--url", app_url]) == 0
    assert json.loads(capsys.readouterr().out)["active"] is True
    assert main(["alerts", "maintenance", "stop", "--url", app_url, "--who", "alice"]) == 0
    assert json.loads(capsys.readouterr().out)["active"] is False


def test_maintenance_without_the_token_is_refused(
    app_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SERVE_DRIFT_ADMIN_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="answered 401"):
        main(["alerts", "maintenance", "status", "--url", app_url])
