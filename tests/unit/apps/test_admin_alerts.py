"""``/admin/maintenance`` and ``/admin/alerts`` in the ready-made app, behind the admin credential,
against the monitor's real alert wiring (its calls answered in process, without Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from serve_drift.apps.classifier import ImageClassifier
from serve_drift.config import DriftConfig
from serve_drift.monitor.alerting import MonitorAlerts
from serve_drift.replica.decorator import monitored
from tests.unit.apps.test_ingress_app import (
    ADMIN_HEADER,
    FakeMonitor,
    _with_headers,
    assert_error,
    cache_dir,
    call,
    make_request,
)

__all__ = ["cache_dir"]  # the module-scoped fixture, shared with the ingress tests


class _Call:
    """A monitor method answered by ``work`` (what ``handle.method.remote`` returns)."""

    def __init__(self, work: Any) -> None:
        self.work = work

    async def remote(self, *args: Any, **kwargs: Any) -> Any:
        return self.work(*args, **kwargs)


class AlertingMonitor(FakeMonitor):
    def __init__(self, alerts: MonitorAlerts) -> None:
        super().__init__()
        self.maintenance = _Call(
            lambda op, **kw: alerts.maintenance_call(op, **kw).result(timeout=5)
        )
        self.alerts = _Call(lambda state, limit: alerts.incidents(state=state, limit=limit))
        self.alert = _Call(alerts.history)


@pytest.fixture
def alerts(cache_dir: Path) -> Any:
    found = MonitorAlerts(DriftConfig(alerts={"sinks": []}), store=None, clock=lambda: 0.0)
    yield found
    found.close()


@pytest.fixture
def app(cache_dir: Path, alerts: MonitorAlerts) -> Any:
    cls = monitored({"model_name": "alerts-unit"}, methods=("predict",))(ImageClassifier)
    return cls({"source": "digits"}, top_k=3, drift_monitor=AlertingMonitor(alerts))


def _admin(method: str, path: str, body: dict[str, Any] | None = None, query: bytes = b"") -> Any:
    raw = json.dumps(body).encode() if body is not None else b""
    request = make_request(
        raw, method=method, path=path, query=query, content_type="application/json"
    )
    return _with_headers(request, ADMIN_HEADER)


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/admin/maintenance"), ("DELETE", "/admin/maintenance"), ("GET", "/admin/alerts")],
)
def test_maintenance_and_alerts_refuse_a_missing_credential(
    app: Any, method: str, path: str
) -> None:
    status, body = call(app, make_request(b"", method=method, path=path))
    assert_error(status, body, "unauthorized")


def test_maintenance_starts_shows_and_stops_with_who_and_why(app: Any) -> None:
    start = {"who": "alice", "why": "retraining v7", "duration_s": 3600}
    status, body = call(app, _admin("POST", "/admin/maintenance", start))
    assert status == 200 and body["active"] and body["maintenance"]["who"] == "alice"
    status, body = call(app, _admin("GET", "/admin/maintenance"))
    assert status == 200 and body["maintenance"]["why"] == "retraining v7"
    status, body = call(app, _admin("DELETE", "/admin/maintenance", query=b"who=bob"))
    assert status == 200 and not body["active"] and body["maintenance"]["cleared_by"] == "bob"


def test_a_bad_maintenance_request_follows_the_error_contract(app: Any) -> None:
    status, body = call(app, _admin("POST", "/admin/maintenance", {"who": "alice"}))
    assert_error(status, body, "invalid_maintenance")
    status, body = call(app, _admin("DELETE", "/admin/maintenance"))
    assert_error(status, body, "invalid_maintenance")
    status, body = call(app, _admin("PUT", "/admin/maintenance", {}))
    assert_error(status, body, "method_not_allowed")


def test_open_incidents_are_listed_and_shown(app: Any, alerts: MonitorAlerts) -> None:
    status, body = call(app, _admin("GET", "/admin/alerts"))
    assert status == 200 and body == {"state": "open", "incidents": []}
    future = alerts.tick(at=7200.0)  # an hour without a tested window: monitor-silent
    assert future is not None and future.result(timeout=5)
    status, body = call(app, _admin("GET", "/admin/alerts", query=b"state=all&limit=5"))
    (incident,) = body["incidents"]
    assert status == 200 and incident["rule"] == "monitor-silent"
    status, body = call(app, _admin("GET", f"/admin/alerts/{incident['incident_id'][:6]}"))
    assert status == 200 and body["incident"]["incident_id"] == incident["incident_id"]
    status, body = call(app, _admin("GET", "/admin/alerts/nothing-like-it"))
    assert_error(status, body, "not_found")
    status, body = call(app, _admin("GET", "/admin/alerts", query=b"state=sideways"))
    assert_error(status, body, "invalid_query")
