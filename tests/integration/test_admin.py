"""Who may tell the monitor what, over real HTTP: every refusal has its status, its stable code
and a body without internals; the admin credential is checked (missing, wrong, right)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_drift.eventlog.store import EventStore
from serve_drift.models.digits import split_digits
from serve_drift.tools.imageio import encode_png
from tests.support.serve import ADMIN, ServeInstance

pytestmark = pytest.mark.integration

PREFIX = "/adm"
LEAK_MARKERS = ("Traceback", ".py", "/tmp", "/home", "/work", "sqlite")
WRONG = {"authorization": "Bearer wrong-token-but-long-enough"}
ADMIN_ROUTES = [("GET", "/drift"), ("POST", "/labels"), ("GET", "/admin/health")]


@pytest.fixture(scope="module")
def app(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    db = tmp_path_factory.mktemp("admin") / "events.sqlite"
    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits-admin",
            "window": {"size": 10},
            "detectors": [{"backend": "native"}],
            "monitor_deployment": "AdminMonitor",
            "shipping": {"flush_interval_s": 0.05},
            "events": {"path": str(db), "sample_rate": 1.0},
        },
    }
    serve.run(build_app(args), name="adm", route_prefix=PREFIX)
    yield {"url": serve_instance.url(PREFIX), "db": db}
    serve.delete("adm")


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "request_id"}
    assert body["error"]["code"] == code
    assert not any(marker in response.text for marker in LEAK_MARKERS), response.text


def _call(url: str, method: str, path: str, headers: dict[str, str]) -> httpx.Response:
    body = {"correlation_id": "nobody", "label": 1} if method == "POST" else None
    return httpx.request(method, f"{url}{path}", json=body, headers=headers, timeout=30)


def _predict(url: str, index: int, cid: str, **headers: str) -> httpx.Response:
    image = split_digits(seed=0).test_images[index]
    return httpx.post(
        f"{url}/predict",
        content=encode_png(image),
        headers={"content-type": "image/png", "x-request-id": cid, **headers},
        timeout=30,
    )


def _monitor(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()["monitor"]


def _wait(check: Any, timeout_s: float = 30) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES)
def test_admin_routes_need_the_credential(app: dict[str, Any], method: str, path: str) -> None:
    missing = _call(app["url"], method, path, {})
    _refused(missing, 401, "unauthorized")
    assert missing.headers["www-authenticate"].startswith("Bearer")
    _refused(_call(app["url"], method, path, WRONG), 401, "unauthorized")
    assert _call(app["url"], method, path, ADMIN).status_code == 200


def test_public_health_is_ready_or_degraded_and_nothing_more(app: dict[str, Any]) -> None:
    response = httpx.get(f"{app['url']}/healthz", timeout=10)
    assert response.status_code == 200 and response.json() == {"status": "ready"}
    details = httpx.get(f"{app['url']}/admin/health", headers=ADMIN, timeout=10).json()
    assert details["monitor"]["event_log"]["event_store"]["path"]  # for the operator only


def test_a_bad_limit_is_a_400_not_a_503(app: dict[str, Any]) -> None:
    for limit in ("abc", "²", "0", "501", "-3"):
        response = httpx.get(
            f"{app['url']}/drift", params={"limit": limit}, headers=ADMIN, timeout=10
        )
        _refused(response, 400, "invalid_query")


def test_labels_are_bounded_checked_and_never_echo_what_is_stored(app: dict[str, Any]) -> None:
    assert _predict(app["url"], 0, "lab-1").status_code == 200
    first = {"correlation_id": "lab-1", "label": 3}
    url = f"{app['url']}/labels"
    answers = _wait(
        lambda: (
            (a := httpx.post(url, json=first, headers=ADMIN, timeout=30).json()["results"])[0][
                "status"
            ]
            == "accepted"
            and a
        )
    )
    assert answers[0]["status"] == "accepted"
    items = [
        {"correlation_id": "lab-1", "label": 7},  # a second label for it
        {"correlation_id": "big", "label": 10**6},
        {"correlation_id": "huge", "label": 2**63},
        *({"correlation_id": f"unknown-{i}", "label": 1} for i in range(9997)),
    ]
    response = httpx.post(url, json={"labels": items}, headers=ADMIN, timeout=60)
    assert response.status_code == 200  # one bad label never fails the batch
    results = response.json()["results"]
    assert [r["status"] for r in results[:3]] == ["duplicate_label", "invalid", "invalid"]
    assert "3" not in results[0]["detail"] and "feedback" not in results[0]["detail"]
    assert all(set(r) == {"correlation_id", "status", "detail"} for r in results[:3])
    assert {r["status"] for r in results[3:]} == {"unknown_correlation_id"}
    too_many = httpx.post(url, json={"labels": items + items[:4]}, headers=ADMIN, timeout=60)
    _refused(too_many, 413, "too_many_labels")


def test_only_the_credential_keeps_traffic_out_of_windows(app: dict[str, Any]) -> None:
    excluded_before = _monitor(app["url"])["excluded"]
    claim = {"x-serve-drift-context-source": "sentinel"}
    _refused(_predict(app["url"], 1, "claims-sentinel", **claim), 401, "unauthorized")
    assert _predict(app["url"], 1, "real-sentinel", **claim, **ADMIN).status_code == 200
    monitor = _wait(lambda: (m := _monitor(app["url"]))["excluded"] > excluded_before and m)
    assert monitor["excluded"] == excluded_before + 1


def test_only_allow_listed_context_is_stored(app: dict[str, Any]) -> None:
    context = {
        "x-serve-drift-context-camera": "cam-7",
        "x-serve-drift-context-user-email": "someone@example.com",
    }
    for i in range(10):  # a whole window: its events are stored once it is tested
        assert _predict(app["url"], 2 + i, f"ctx-{i}", **context).status_code == 200
    store = EventStore(Path(app["db"]))
    record = _wait(lambda: store.by_correlation_id("ctx-1"), timeout_s=60)[0]
    assert record.context == {"camera": "cam-7"}
    assert "example.com" not in json.dumps(record.to_dict())


def test_without_a_token_admin_operations_are_disabled(serve_instance: ServeInstance) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits-noadmin",
            "monitor_deployment": "NoAdminMonitor",
            "admin": {"token_env": "SERVE_DRIFT_TEST_UNSET_TOKEN"},
            "events": {"enabled": False},
        },
    }
    serve.run(build_app(args), name="noadm", route_prefix="/noadm")
    try:
        for method, path in ADMIN_ROUTES:
            response = _call(serve_instance.url("/noadm"), method, path, ADMIN)
            _refused(response, 403, "admin_disabled")
    finally:
        serve.delete("noadm")
