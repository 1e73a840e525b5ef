"""Faults with real processes: the event store locked by another process while traffic flows,
and the drift monitor SIGKILLed in the middle of a window."""

from __future__ import annotations

import os
import signal
import sqlite3
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

WINDOW = 10


def _deploy(name: str, db: Path, **events: Any) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": f"digits-{name}",
            "window": {"size": WINDOW},
            "detectors": [{"backend": "native"}],
            "monitor_deployment": f"{name.title()}Monitor",
            "shipping": {"flush_interval_s": 0.05},
            "events": {"path": str(db), "sample_rate": 1.0, **events},
        },
    }
    serve.run(build_app(args), name=name, route_prefix=f"/{name}")


def _send(url: str, ids: list[str]) -> None:
    images = split_digits(seed=0).test_images
    with httpx.Client(timeout=30) as client:
        for i, cid in enumerate(ids):
            response = client.post(
                f"{url}/predict",
                content=encode_png(images[i % len(images)]),
                headers={"content-type": "image/png", "x-request-id": cid},
            )
            assert response.status_code == 200  # whatever the store or the monitor is doing


def _health(url: str) -> dict[str, Any]:
    return httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()


def _results(url: str) -> list[dict[str, Any]]:
    return httpx.get(f"{url}/drift?limit=500", headers=ADMIN, timeout=10).json()["results"]


def _wait(check: Any, *, timeout_s: float = 60) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = check()
        except (httpx.HTTPError, KeyError):
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def test_a_locked_store_never_stops_drift_tests(
    serve_instance: ServeInstance, tmp_path: Path
) -> None:
    db = tmp_path / "locked.sqlite"
    _deploy("locked", db, arrival_timeout_s=0.5)
    url = serve_instance.url("/locked")
    try:
        _send(url, [f"warm-{i}" for i in range(WINDOW)])
        _wait(lambda: len(_results(url)) == 1)
        holder = sqlite3.connect(db, isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # every write of the monitor now fails
        try:
            _send(url, [f"locked-{i}" for i in range(3 * WINDOW)])
            # All three windows are tested while the store refuses every write.
            _wait(lambda: len(_results(url)) == 4, timeout_s=30)
            monitor = _health(url)["monitor"]
            assert monitor["unrecorded"] > 0 and monitor["windows_tested"] == 4
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        settled = _wait(
            lambda: (h := _health(url))["monitor"]["event_log"]["events"]["pending"] == 0 and h
        )
        events = settled["monitor"]["event_log"]["events"]
        assert events["accepted"] == 4 * WINDOW
        assert events["stored"] + events["sampled_out"] + events["dropped_total"] == 40
        replica = settled["replica"]
        assert replica["dropped"].get("monitor_not_recorded", 0) > 0  # told, and counted
        assert replica["shipped"] + sum(replica["dropped"].values()) == 4 * WINDOW
    finally:
        from ray import serve

        serve.delete("locked")


def test_a_monitor_killed_mid_window_loses_no_shipped_request(
    serve_instance: ServeInstance, tmp_path: Path
) -> None:
    db = tmp_path / "killed.sqlite"
    _deploy("midkill", db)
    url = serve_instance.url("/midkill")
    try:
        sent = [f"mid-{i:03d}" for i in range(2 * WINDOW + 5)]  # two windows and a half
        _send(url, sent)
        before = _wait(
            lambda: (
                (h := _health(url))["replica"]["pending"] == 0
                and h["replica"]["shipped"] + sum(h["replica"]["dropped"].values()) == len(sent)
                and h
            )
        )
        os.kill(before["monitor"]["pid"], signal.SIGKILL)  # 5 rows sit in an open window
        old_pid = before["monitor"]["pid"]
        after = _wait(
            lambda: (h := _health(url))["monitor"].get("pid") not in (None, old_pid) and h
        )
        shipped = before["replica"]["shipped"]
        with EventStore(db) as store:
            served = store.served(sent)
            assert set(served) <= set(sent)
            # Every request the replica counted shipped has its row; the rest were counted dropped.
            assert shipped <= len(served) <= len(sent)
            assert len(served) == len(sent) - sum(before["replica"]["dropped"].values())
        assert after["monitor"]["rows_lost_at_restart"] >= 5
        tested = {r["window_index"] for r in _results(url)}
        _send(url, [f"post-{i:03d}" for i in range(WINDOW)])
        new = _wait(lambda: {r["window_index"] for r in _results(url)} - tested)
        assert min(new) > max(tested, default=-1)  # numbering continues after the restart
    finally:
        from ray import serve

        serve.delete("midkill")
