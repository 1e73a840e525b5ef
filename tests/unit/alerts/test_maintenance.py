"""Maintenance over HTTP (admin only), stored, and mirrored as an Alertmanager silence."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from serve_drift.alerts.alertmanager import AlertmanagerSilences, maintenance_matchers
from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.control import MaintenanceService
from serve_drift.alerts.endpoints import (
    ALERTS_PATH,
    MAINTENANCE_PATH,
    alerts_endpoint,
    maintenance_endpoint,
)
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.pipeline import AlertPipeline
from serve_drift.eventlog.store import EventStore
from tests.support.alert_signals import MODEL, windows

TOKEN = "admin-token"
CONFIG = AlertsConfig(sinks=())


class _FakeAlertmanager:
    """Alertmanager's silence API, in memory (an httpx transport)."""

    def __init__(self, *, fail: bool = False) -> None:
        self.silences: dict[str, dict[str, object]] = {}
        self.expired: list[str] = []
        self.fail = fail

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if self.fail:
            return httpx.Response(503, text="down for maintenance, ironically")
        if request.method == "POST" and request.url.path == "/api/v2/silences":
            silence_id = f"s{len(self.silences) + 1}"
            self.silences[silence_id] = json.loads(request.content)
            return httpx.Response(200, json={"silenceID": silence_id})
        if request.method == "DELETE":
            self.expired.append(request.url.path.rsplit("/", 1)[-1])
            return httpx.Response(200)
        return httpx.Response(404)


@pytest.fixture
def pipeline() -> Iterator[AlertPipeline]:
    built = AlertPipeline.from_config(CONFIG, model_name=MODEL, started_at=0.0)
    yield built
    built.close()


def _service(
    pipeline: AlertPipeline,
    fake: _FakeAlertmanager,
    store: EventStore | None = None,
    now: float = 1000.0,
) -> MaintenanceService:
    silences = AlertmanagerSilences(
        "http://alertmanager:9093",
        matchers=maintenance_matchers(CONFIG, model_name=MODEL),
        transport=httpx.MockTransport(fake),
    )
    persist = store.write_maintenance if store is not None else None
    return MaintenanceService(pipeline, silences=silences, persist=persist, clock=lambda: now)


def test_maintenance_creates_a_silence_stores_itself_and_expires_both(
    pipeline: AlertPipeline, tmp_path: Path
) -> None:
    fake = _FakeAlertmanager()
    with EventStore(tmp_path / "events.sqlite") as store:
        service = _service(pipeline, fake, store)
        started = service.start(who="alice", why="retraining v7", duration_s=1800)
        assert started.active and started.silence_error is None
        assert started.window is not None and started.window.silence_id == "s1"
        silence = fake.silences["s1"]
        assert silence["createdBy"] == "alice" and "retraining v7" in str(silence["comment"])
        assert silence["startsAt"] == "1970-01-01T00:16:40.000Z"
        assert silence["endsAt"] == "1970-01-01T00:46:40.000Z"
        assert silence["matchers"] == maintenance_matchers(CONFIG, model_name=MODEL)
        stored = store.active_maintenance(at=1001.0)
        assert stored is not None and stored["silence_id"] == "s1"
        stopped = service.stop(who="bob")
        assert not stopped.active and fake.expired == ["s1"]
        assert store.active_maintenance(at=1001.0) is None


def test_maintenance_holds_notifications_in_the_pipeline(pipeline: AlertPipeline) -> None:
    service = _service(pipeline, _FakeAlertmanager(), now=0.0)
    service.start(who="alice", why="retraining", duration_s=3600)
    held = [t for w in windows([0.002, 0.003, 0.004]) for t in pipeline.observe(w)]
    assert [(t.kind, t.notify) for t in held] == [("opened", False)]
    assert pipeline.maintenance(at=10.0) is not None


def test_an_unreachable_alertmanager_does_not_stop_maintenance(pipeline: AlertPipeline) -> None:
    service = _service(pipeline, _FakeAlertmanager(fail=True))
    started = service.start(who="alice", why="retraining", duration_s=600)
    assert started.active and "503" in (started.silence_error or "")
    assert service.status().active


class _Client:
    """A synchronous client of an ASGI app (httpx's ASGI transport, no server)."""

    def __init__(self, app: Starlette) -> None:
        self._transport = httpx.ASGITransport(app=app)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        async def call() -> httpx.Response:
            async with httpx.AsyncClient(transport=self._transport, base_url="http://app") as c:
                return await c.request(method, path, **kwargs)

        return asyncio.run(call())

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", path, **kwargs)


def _app(service: MaintenanceService, pipeline: AlertPipeline) -> _Client:
    def admin(request: Request) -> bool:
        return request.headers.get("authorization") == f"Bearer {TOKEN}"

    async def maintenance(request: Request) -> object:
        return await maintenance_endpoint(request, control=service, check_admin=admin)

    async def alerts(request: Request) -> object:
        return await alerts_endpoint(
            request, open_incidents=pipeline.engine.open_incidents, check_admin=admin
        )

    routes = [
        Route(MAINTENANCE_PATH, maintenance, methods=["GET", "POST", "DELETE", "PUT"]),
        Route(ALERTS_PATH, alerts),
    ]
    return _Client(Starlette(routes=routes))


def test_the_http_surface_needs_the_admin_credential(pipeline: AlertPipeline) -> None:
    client = _app(_service(pipeline, _FakeAlertmanager()), pipeline)
    for method, path in (
        ("GET", MAINTENANCE_PATH),
        ("POST", MAINTENANCE_PATH),
        ("GET", ALERTS_PATH),
    ):
        answer = client.request(method, path, headers={"x-request-id": "r1"})
        assert answer.status_code == 401
        assert answer.json()["error"] == {
            "code": "unauthorized",
            "message": answer.json()["error"]["message"],
            "request_id": "r1",
        }


def test_maintenance_over_http_start_status_stop(pipeline: AlertPipeline) -> None:
    client = _app(_service(pipeline, _FakeAlertmanager()), pipeline)
    auth = {"authorization": f"Bearer {TOKEN}"}
    started = client.post(
        MAINTENANCE_PATH,
        json={"who": "alice", "why": "retraining", "duration_s": 900},
        headers=auth,
    )
    assert started.status_code == 200 and started.json()["active"] is True
    window = MaintenanceWindow.from_dict(started.json()["maintenance"])
    assert (window.who, window.until - window.started_at) == ("alice", 900)
    assert client.get(MAINTENANCE_PATH, headers=auth).json()["active"] is True
    stopped = client.delete(MAINTENANCE_PATH, params={"who": "bob"}, headers=auth)
    assert stopped.json()["active"] is False
    assert stopped.json()["maintenance"]["cleared_by"] == "bob"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"why": "x", "duration_s": 60}, "'who' is required"),
        ({"who": "a", "duration_s": 60}, "'why' is required"),
        ({"who": "a", "why": "x"}, "duration_s"),
        ({"who": "a", "why": "x", "duration_s": 10**9}, "at most"),
        ({"who": "a", "why": "x", "duration_s": "1h"}, "must be a number"),
        ([1, 2], "JSON object"),
    ],
)
def test_a_bad_maintenance_request_is_a_400(
    pipeline: AlertPipeline, body: object, message: str
) -> None:
    client = _app(_service(pipeline, _FakeAlertmanager()), pipeline)
    answer = client.post(MAINTENANCE_PATH, json=body, headers={"authorization": f"Bearer {TOKEN}"})
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "invalid_maintenance"
    assert message in answer.json()["error"]["message"]
    assert not pipeline.engine.maintenance_active(at=1000.0)


def test_open_alerts_over_http(pipeline: AlertPipeline) -> None:
    for signal in windows([0.002, 0.003, 0.004]):
        pipeline.observe(signal)
    client = _app(_service(pipeline, _FakeAlertmanager()), pipeline)
    answer = client.get(ALERTS_PATH, headers={"authorization": f"Bearer {TOKEN}"})
    assert [i["rule"] for i in answer.json()["open"]] == ["input-drift"]
