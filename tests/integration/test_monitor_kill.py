"""The drift monitor's process is SIGKILLed while it writes, repeatedly: requests keep being
answered, and the event store opens cleanly with every event reported stored, exactly once."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from typing import Any

import httpx
import pytest

from serve_drift.eventlog.store import EventStore
from serve_drift.models.digits import split_digits
from serve_drift.tools.imageio import encode_png
from tests.support.serve import ADMIN, ServeInstance

pytestmark = pytest.mark.integration

KILLS = 3
PER_ROUND = 30


@pytest.fixture(scope="module")
def app(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    db = tmp_path_factory.mktemp("kill") / "events.sqlite"
    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits-kill",
            "window": {"size": 10},
            "detectors": [{"kind": "mmd", "backend": "native"}],
            "monitor_deployment": "KillMonitor",
            "shipping": {"flush_interval_s": 0.05},
            "events": {"path": str(db), "sample_rate": 1.0},
        },
    }
    serve.run(build_app(args), name="kill", route_prefix="/kill")
    yield {"url": serve_instance.url("/kill"), "db": db}
    serve.delete("kill")


def _monitor(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()["monitor"]


def _wait(predicate: Any, *, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except (httpx.HTTPError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError("timed out")


def test_sigkilled_monitor_loses_no_reported_event(app: dict[str, Any]) -> None:
    images = split_digits(seed=0).test_images
    reported_stored = 0
    sent: list[str] = []
    with httpx.Client(timeout=30) as client:
        for round_ in range(KILLS):
            for i in range(PER_ROUND):
                cid = f"kill-{round_}-{i:03d}"
                response = client.post(
                    f"{app['url']}/predict",
                    content=encode_png(images[i]),
                    headers={"content-type": "image/png", "x-request-id": cid},
                )
                assert response.status_code == 200  # whatever the monitor is doing
                sent.append(cid)
            # Windows of 10 fill exactly: wait until this incarnation has settled them.
            health = _wait(
                lambda: (
                    (h := _monitor(app["url"]))["event_log"]["events"]["pending"] == 0
                    and h["event_log"]["events"]["accepted"] > 0
                    and h
                )
            )
            reported_stored += health["event_log"]["events"]["stored"]
            os.kill(health["pid"], signal.SIGKILL)
            _wait(lambda pid=health["pid"]: _monitor(app["url"]).get("pid") not in (None, pid))

    with sqlite3.connect(app["db"]) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = EventStore(app["db"])
    rows = store.recent(limit=10_000)
    ids = [r.correlation_id for r in rows]
    assert len(ids) == len(set(ids)), "an event was stored twice"
    assert set(ids) <= set(sent)
    # Every event an incarnation reported stored before it was killed is in the store.
    assert len(ids) >= reported_stored > 0
