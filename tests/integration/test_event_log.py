"""The event log over real HTTP: stored events, labels joined later, metrics, sentinel runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from serve_drift.eventlog.store import EventStore
from serve_drift.models.digits import split_digits
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.sentinel import run_sentinel
from tests.support.otlp_receiver import OtlpReceiver
from tests.support.serve import ADMIN, ADMIN_TOKEN, ServeInstance

pytestmark = pytest.mark.integration

WINDOW = 20


@pytest.fixture(scope="module")
def event_app(
    serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    db = tmp_path_factory.mktemp("events") / "digits.sqlite"
    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits-ev",
            "window": {"size": WINDOW},
            "detectors": [{"backend": "native"}],
            "monitor_deployment": "EventMonitor",
            "shipping": {"flush_interval_s": 0.1},
            "events": {"path": str(db), "sample_rate": 0.5, "keep_confidence_below": 0.0},
        },
    }
    serve.run(build_app(args), name="ev", route_prefix="/ev")
    yield {"url": serve_instance.url("/ev"), "db": db}
    serve.delete("ev")


def _monitor_health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()["monitor"]


def _wait_settled(url: str, accepted: int, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        events = _monitor_health(url)["event_log"]["events"]
        if events["accepted"] >= accepted and events["pending"] == 0:
            return events
        time.sleep(0.3)
    raise AssertionError(f"event log did not settle: {events}")


def test_events_labels_and_window_metrics(
    event_app: dict[str, Any], otlp_receiver: OtlpReceiver
) -> None:
    split = split_digits(seed=0)
    images, labels = split.test_images[: 2 * WINDOW], split.test_labels[: 2 * WINDOW]
    ids = [f"ev-{i:03d}" for i in range(len(images))]
    with httpx.Client(timeout=30) as client:
        for image, cid in zip(images, ids, strict=True):
            response = client.post(
                f"{event_app['url']}/predict",
                content=encode_png(image),
                headers={
                    "content-type": "image/png",
                    "x-request-id": cid,
                    "x-serve-drift-context-camera": "cam-7",
                },
            )
            assert response.status_code == 200
    counts = _wait_settled(event_app["url"], accepted=len(ids))
    # The accounting invariant: every accepted event is stored, sampled out or dropped.
    assert (
        counts["stored"] + counts["sampled_out"] + counts["dropped_total"]
        == counts["accepted"]
        == 40
    )
    assert 0 < counts["sampled_out"] < 40 and counts["dropped_total"] == 0

    store = EventStore(event_app["db"])
    stored = {r.correlation_id: r for r in store.recent(limit=100)}
    assert len(stored) == counts["stored"]
    record = next(iter(stored.values()))
    assert record.context == {"camera": "cam-7"} and record.sampling_weight == 2.0
    assert record.input_stats is not None and record.input_stats.width == 8
    assert record.latency_s and record.latency_s > 0 and len(record.outputs.top_k) == 5
    assert record.drift_window is not None and record.trace_id

    body = {
        "labels": [{"correlation_id": c, "label": int(y)} for c, y in zip(ids, labels, strict=True)]
        + [
            {"correlation_id": "nobody-sent-this", "label": 1},
            {"correlation_id": min(stored), "label": 3},  # a second label for a stored event
        ]
    }
    answers = httpx.post(f"{event_app['url']}/labels", json=body, headers=ADMIN, timeout=30).json()[
        "results"
    ]
    # Every served request, stored in full or sampled out, has a compact row a label joins.
    assert [a["status"] for a in answers[:40]] == ["accepted"] * 40
    assert [a["status"] for a in answers[40:]] == ["unknown_correlation_id", "duplicate_label"]
    assert set(answers[0]) == {"correlation_id", "status", "detail"}  # nothing internal

    metrics = store.concept_metrics(tag="feedback")
    latest = {m.window_index: m for m in reversed(metrics)}  # newest record per window
    assert set(latest) == {r.drift_window for r in stored.values()} == {0, 1}
    assert all(m.metrics.n_labelled == WINDOW for m in latest.values())  # all, not the sample
    assert all(0.9 <= m.metrics.accuracy <= 1.0 for m in latest.values())  # the model is ~98%
    otlp_receiver.wait_for(lambda r: "serve_drift.concept.accuracy" in r.metric_names())
    otlp_receiver.wait_for(lambda r: "serve_drift.drift.windows_tested" in r.metric_names())


def test_bad_label_bodies_get_clear_errors(event_app: dict[str, Any]) -> None:
    url = f"{event_app['url']}/labels"
    json_type = {"content-type": "application/json", **ADMIN}
    response = httpx.post(url, content=b"{not json", headers=json_type)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_json"
    response = httpx.post(url, json="not a label", headers=ADMIN)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_labels"
    (answer,) = httpx.post(url, json={"correlation_id": "x"}, headers=ADMIN).json()["results"]
    assert answer["status"] == "invalid" and "label" in answer["detail"]
    response = httpx.post(url, params={"source": "oracle"}, json={"labels": []}, headers=ADMIN)
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid_query"


def test_sentinel_run_through_the_deployed_model(event_app: dict[str, Any]) -> None:
    split = split_digits(seed=0)
    run = run_sentinel(
        event_app["url"],
        split.test_images[:30],
        split.test_labels[:30],
        admin_token=ADMIN_TOKEN,
        run_id="t1",
    )
    assert run.sent == 30 and run.failed == 0 and run.label_status == {"accepted": 30}
    assert run.accuracy > 0.9
    store = EventStore(event_app["db"])
    sentinel = store.concept_metrics(tag="sentinel")[0]  # the newest record of the run
    assert sentinel.metrics.n_labelled == 30
    assert sentinel.metrics.accuracy == pytest.approx(run.accuracy)
    records = store.by_correlation_id("sentinel-t1-0000")
    assert records[0].drift_window is None and "sentinel" in records[0].validation_flags


def test_the_store_is_readable_while_the_monitor_writes(event_app: dict[str, Any]) -> None:
    """The store file is a valid SQLite database that a second reader opens while written
    (restarts are tested in test_monitor_kill.py)."""
    import sqlite3

    with sqlite3.connect(Path(event_app["db"])) as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
