"""The ready-made app's alerts end to end: clean and shifted traffic over real HTTP, the default
rules evaluated in its drift monitor, notifications on a real webhook receiver on 127.0.0.1.

One drift incident is notified per shift phase, at its severity: a warning for brightness
(inputs moved, estimated accuracy held), a critical page for occlusion (estimated accuracy
collapsed); none in clean phases, and nothing at all for a shift during maintenance. Ingress
flags both shifts' frames as well, and its ``flagged-inputs`` ticket is notified once per shift.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import numpy as np
import pytest

from serve_drift.models.digits import split_digits
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.shifts import apply_shift
from tests.support.serve import ADMIN, ServeInstance
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

PREFIX = "/alerts-e2e"
WINDOW = 100
# (phase, shift, windows): the default rule needs 3 of the last 4 windows at p <= 0.05, and
# resolves 3 windows after that stops holding, so 4 clean windows close each incident.
PLAN = (
    ("clean", None, 2),
    ("brightness", "brightness", 3),
    ("clean-2", None, 4),
    ("occlusion", "occlusion", 3),
    ("clean-3", None, 4),
)
DRIFT_RULES = ("input-drift", "drift-accuracy-drop")
MAINTENANCE_PLAN = (("brightness-in-maintenance", "brightness", 3), ("clean-4", None, 4))


@pytest.fixture(scope="module")
def app(serve_instance: ServeInstance, tmp_path_factory: pytest.TempPathFactory) -> Any:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    db = tmp_path_factory.mktemp("alerts-e2e") / "events.sqlite"
    with WebhookReceiver() as receiver:
        args = {
            "model": {"source": "digits"},
            "drift": {
                "model_name": "digits-alerts",
                "window": {"size": WINDOW},
                "monitor_deployment": "AlertsMonitor",
                "shipping": {"flush_interval_s": 0.05},
                "events": {"path": str(db), "sample_rate": 0.1},
                "alerts": {"sinks": [{"kind": "webhook", "url": receiver.url}]},
            },
        }
        serve.run(build_app(args), name="alerts-e2e", route_prefix=PREFIX)
        yield {"url": serve_instance.url(PREFIX), "receiver": receiver}
        serve.delete("alerts-e2e")


def _send(url: str, plan: tuple[tuple[str, str | None, int], ...], rng: Any) -> None:
    split = split_digits(seed=0)
    with httpx.Client(timeout=30) as client, ThreadPoolExecutor(max_workers=8) as pool:
        for _, shift, windows in plan:
            images = split.test_images[rng.integers(0, len(split.test_images), WINDOW * windows)]
            if shift is not None:
                images = apply_shift(shift, images, severity=0.5, fraction=1.0, rng=rng)

            def post(image: np.ndarray) -> int:
                headers = {"content-type": "image/png"}
                response = client.post(f"{url}/predict", content=encode_png(image), headers=headers)
                return response.status_code

            assert set(pool.map(post, images)) == {200}


def _wait_tested(url: str, windows: int, *, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        health = httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()
        if health["monitor"].get("windows_tested", 0) >= windows:
            return
        time.sleep(0.5)
    raise AssertionError(f"fewer than {windows} windows tested in {timeout_s} s")


def _phase_of(window: int, plan: tuple[tuple[str, str | None, int], ...]) -> str:
    end = 0
    for name, _, windows in plan:
        end += windows
        if window < end:
            return name
    return "after"


def _notified(receiver: WebhookReceiver) -> list[tuple[str, str, int]]:
    """(rule, severity, window that opened it) of every firing notification."""
    found = []
    for call in receiver.received:
        body = call.json()
        if body["status"] != "firing":
            continue
        incident = body["serve_drift"]["incident"]
        windows = [w["window_index"] for w in incident["evidence"]["windows"]]
        found.append((incident["rule"], incident["severity"], max(windows, default=-1)))
    return found


def test_one_notified_incident_per_shift_phase_none_clean_none_in_maintenance(
    app: dict[str, Any],
) -> None:
    url, receiver = app["url"], app["receiver"]
    rng = np.random.default_rng(0)
    _send(url, PLAN, rng)
    tested = sum(w for _, _, w in PLAN)
    _wait_tested(url, tested)
    time.sleep(2.0)  # the alert lane and the webhook's own queue, after the last window
    notified = _notified(receiver)
    drift = [(r, sev, w) for r, sev, w in notified if r in DRIFT_RULES]
    by_phase = {_phase_of(window, PLAN): (rule, severity) for rule, severity, window in drift}
    assert len(drift) == 2, notified
    assert by_phase == {
        "brightness": ("input-drift", "warning"),
        "occlusion": ("drift-accuracy-drop", "critical"),
    }
    # Ingress sees both shifts too (saturated, dark frames): its own ticket, once per shift.
    others = sorted((r, sev) for r, sev, _ in notified if r not in DRIFT_RULES)
    assert others == [("flagged-inputs", "warning")] * 2, notified
    # The ticket muted by the page was still recorded, not sent.
    listed = httpx.get(f"{url}/admin/alerts?state=all", headers=ADMIN, timeout=10).json()
    rules = sorted(i["rule"] for i in listed["incidents"] if i["rule"] in DRIFT_RULES)
    assert rules == ["drift-accuracy-drop", "input-drift", "input-drift"]
    before = len(receiver.received)

    start = {"who": "ci", "why": "the maintenance check", "duration_s": 600}
    status = httpx.post(f"{url}/admin/maintenance", json=start, headers=ADMIN, timeout=10)
    assert status.status_code == 200 and status.json()["active"]
    _send(url, MAINTENANCE_PLAN, rng)
    _wait_tested(url, tested + sum(w for _, _, w in MAINTENANCE_PLAN))
    stop = httpx.delete(f"{url}/admin/maintenance?who=ci", headers=ADMIN, timeout=10)
    assert stop.status_code == 200 and not stop.json()["active"]
    time.sleep(2.0)
    assert len(receiver.received) == before, [r.json()["status"] for r in receiver.received]
    # It was seen and recorded all the same: opened and resolved inside maintenance.
    listed = httpx.get(f"{url}/admin/alerts?state=all", headers=ADMIN, timeout=10).json()
    assert sum(i["rule"] == "input-drift" for i in listed["incidents"]) == 3
    health = httpx.get(f"{url}/admin/health", headers=ADMIN, timeout=10).json()
    alerts = health["monitor"]["alerts"]
    assert (
        alerts["sink_failures"] == 0
        and alerts["sinks"][f"webhook {receiver.url}"]["delivered"] >= 4
    )
