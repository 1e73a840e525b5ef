"""What a drill reads from the endpoint, against a fake endpoint (no Ray): results merged
across polls, alerts from wherever they are, losses, refusals."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_drift.alerts import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.eventlog.store import BaseEventStore, EventStore, PostgresEventStore
from serve_drift.tools.drill import EXIT_USAGE, DrillOptions, _alerts
from serve_drift.tools.drill import main as drill_main
from serve_drift.tools.drill_collect import (
    Collector,
    DrillError,
    backtest,
    drift_result,
    endpoint_info,
    losses,
    signals_from_results,
)
from tests.support.postgres import PostgresServer
from tests.unit.tools.drill_fakes import T0, run_results

RESULTS = run_results([0.5] * 3 + [0.001] * 3, [[0]] * 3 + [[1]] * 3)
HEALTH = {
    "status": "ready",
    "model_version": "v1",
    "replica": {"shipped": 10, "dropped": {"queue_full": 2}, "pending": 0, "reasons": []},
    "monitor": {
        "window_size": 10,
        "pending_windows": 0,
        "rejected": 1,
        "windows_skipped": 0,
        "test_errors": 0,
        "unrecorded": 0,
        "event_log": {"events": {"dropped": {"store_locked": 3}}},
    },
}


class FakeEndpoint:
    """``/drift`` answers the latest ``keep`` results, like the monitor's bounded deque."""

    def __init__(self, *, alerts: list[dict[str, Any]] | None, keep: int = 2) -> None:
        self.results: list[dict[str, Any]] = []
        self.alerts, self.keep = alerts, keep

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer right":
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "no"}})
        path = request.url.path
        if path == "/drift":
            return httpx.Response(200, json={"results": self.results[-self.keep :]})
        if path == "/admin/health":
            return httpx.Response(200, json=HEALTH)
        if path == "/admin/alerts" and self.alerts is not None:
            return httpx.Response(200, json={"open": self.alerts})
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "m"}})

    def client(self, token: str = "right") -> httpx.Client:
        headers = {"authorization": f"Bearer {token}"}
        return httpx.Client(
            transport=httpx.MockTransport(self), base_url="http://app", headers=headers
        )


def _incidents() -> list[dict[str, Any]]:
    return backtest(RESULTS, config=AlertsConfig(sinks=()), model_name="digits")


def test_results_pushed_out_of_the_monitors_latest_are_kept_across_polls() -> None:
    endpoint = FakeEndpoint(alerts=None)
    collector = Collector(endpoint.client())
    for result in RESULTS:
        endpoint.results.append(result)
        collector.poll()
    results, incidents = collector.snapshot()
    assert [r["window_index"] for r in results] == list(range(6)) and incidents == []
    assert collector.alerts_served is False
    assert collector.poll() == 0  # nothing new


def test_open_incidents_are_merged_when_the_endpoint_serves_them() -> None:
    endpoint = FakeEndpoint(alerts=_incidents())
    collector = Collector(endpoint.client())
    collector.poll()
    assert collector.alerts_served is True
    assert [i["rule"] for i in collector.snapshot()[1]] == ["input-drift"]


def test_the_endpoints_window_and_losses_are_read_from_its_health() -> None:
    client = FakeEndpoint(alerts=None).client()
    assert endpoint_info(client).window_size == 10
    found = losses(client)
    assert found["embeddings dropped (queue_full)"] == 2
    assert found["rows rejected by the monitor"] == 1
    assert found["events dropped (store_locked)"] == 3 and found["windows skipped"] == 0


def test_a_wrong_token_is_said_plainly() -> None:
    with pytest.raises(DrillError, match=r"401 unauthorized.*check the admin token"):
        endpoint_info(FakeEndpoint(alerts=None).client(token="wrong"))


def test_results_of_a_newer_schema_still_read() -> None:
    newer = {**RESULTS[0], "estimated_accuracy": 0.91, "uncalibrated_p_value": 0.4, "novel": 1}
    assert drift_result(newer).window_index == 0


def _collector(served: bool, incidents: list[dict[str, Any]]) -> Collector:
    collector = Collector(FakeEndpoint(alerts=incidents if served else None).client())
    collector.poll()
    return collector


def test_alerts_come_from_the_store_the_endpoint_or_a_backtest(tmp_path: Path) -> None:
    options = DrillOptions(url="http://app", admin_token="right")
    polled = _incidents()
    found, source = _alerts(options, _collector(False, []), RESULTS, [], T0 - 5, {})
    assert source == "backtest" and [i["rule"] for i in found] == ["input-drift"]
    found, source = _alerts(options, _collector(True, polled), RESULTS, polled, T0 - 5, {})
    assert source == "endpoint" and found == polled
    # Incidents opened before the drill started are not the drill's.
    assert _alerts(options, _collector(True, polled), RESULTS, polled, T0 + 100, {})[0] == []
    db = tmp_path / "events.sqlite"
    with EventStore(db) as store:
        _store_incidents(store)
    stored = DrillOptions(url="http://app", admin_token="right", db=db)
    found, source = _alerts(stored, _collector(True, []), RESULTS, [], T0 - 5, {})
    assert source == "store" and [i["rule"] for i in found] == ["input-drift"]
    with pytest.raises(DrillError, match="does not serve"):
        _alerts(
            DrillOptions(url="u", admin_token="t", alerts="endpoint"),
            _collector(False, []),
            RESULTS,
            [],
            T0,
            {},
        )


def _store_incidents(store: BaseEventStore) -> None:
    engine = AlertEngine(AlertsConfig(sinks=()), started_at=T0, model_names=("digits",))
    signals = signals_from_results(RESULTS, model_name="digits")
    store.write_alert_transitions([t for s in signals for t in engine.observe(s)])


def test_a_postgres_store_gives_the_drill_its_incidents(postgres_server: PostgresServer) -> None:
    dsn = postgres_server.new_database()
    with PostgresEventStore(dsn, schema="sd_digits__monitor") as store:
        _store_incidents(store)
    stored = DrillOptions(url="http://app", admin_token="right", dsn=dsn)  # the only schema
    found, source = _alerts(stored, _collector(True, []), RESULTS, [], T0 - 5, {})
    assert source == "store" and [i["rule"] for i in found] == ["input-drift"]


def test_a_store_that_cannot_be_read_is_a_usage_error_before_any_traffic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", "right")
    missing = tmp_path / "missing.sqlite"
    # Nothing listens at the URL: the drill would fail differently had it sent anything.
    argv = ["digits-lighting", "--url", "http://127.0.0.1:9", "--db", str(missing)]
    assert drill_main(argv) == EXIT_USAGE
    assert "no event store at" in capsys.readouterr().out and not missing.exists()
