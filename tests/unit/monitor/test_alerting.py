"""The monitor's alert wiring without Ray: windows, failures, labels and ticks reach the rules
on a lane of their own; incidents and maintenance survive a restart through the event store."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_drift import DriftConfig
from serve_drift.alerts import LabelMetrics, SentinelRun
from serve_drift.eventlog.schema import ConceptDriftMetrics, ConceptMetricsRecord
from serve_drift.monitor.alerting import MonitorAlerts, WindowMeasures, metrics_signal
from serve_drift.monitor.state import MonitorState
from serve_drift.monitor.windows import Window
from tests.support.alert_signals import drift_result
from tests.support.batches import event_batch
from tests.support.serve import free_port
from tests.support.telemetry_memory import memory_telemetry
from tests.unit.monitor.test_state import _reference

DIM = 8
NO_SINKS: dict[str, Any] = {"sinks": []}


def _state(tmp_path: Path, **config: object) -> MonitorState:
    base = {
        "model_name": "m",
        "reference_path": _reference(tmp_path),
        "window": {"size": 20},
        "detectors": [{"backend": "native"}],
        "events": {"path": str(tmp_path / "events.sqlite"), "sample_rate": 1.0},
        "alerts": NO_SINKS,
    }
    return MonitorState(DriftConfig.model_validate({**base, **config}))


def _feed(state: MonitorState, *, loc: float, windows: int, start: int = 0) -> None:
    rng = np.random.default_rng(start + 7)
    for i in range(windows):
        rows = rng.normal(loc=loc, size=(20, DIM))
        for job in state.accept(event_batch(rows, start=start + 20 * i)):
            state.process(job)
    assert state.alerts.drain()


def _open_rules(state: MonitorState) -> list[str]:
    return sorted(rule for rule, _ in state.alerts.health().open)


def test_shifted_windows_open_one_incident_stored_with_its_evidence(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    _feed(state, loc=0.0, windows=3)
    assert _open_rules(state) == []
    _feed(state, loc=1.5, windows=4, start=60)
    assert _open_rules(state) == ["input-drift"]  # no accuracy estimate: not the page
    (stored,) = state.alerts.incidents(state="open", limit=10)
    assert stored.rule == "input-drift" and dict(stored.scope)["detector"] == "mmd"
    # Stored as last written: at its opening, the third shifted window.
    windows = [w.window_index for w in stored.evidence.windows]
    assert windows[-1] == 5 and all(w.trace_id for w in stored.evidence.windows)
    history = state.alerts.history(stored.incident_id[:6])
    assert history is not None and [t["kind"] for t in history.transitions] == ["opened"]
    health = state.health().to_dict()["alerts"]
    assert health["open_incidents"] == 1 and health["open"][0]["severity"] == "warning"


def test_a_sink_that_cannot_be_reached_makes_the_monitor_degraded(tmp_path: Path) -> None:
    memory_telemetry()
    unreachable = {"kind": "webhook", "url": f"http://127.0.0.1:{free_port()}/hook"}
    sink = {**unreachable, "max_attempts": 1, "timeout_s": 2}
    state = _state(tmp_path, alerts={"sinks": [sink]}, model_version="1")  # the reference's
    _feed(state, loc=0.0, windows=3)
    assert state.health().status == "ready"
    _feed(state, loc=1.5, windows=4, start=60)  # an incident opens: its notification fails
    assert state.alerts.drain(timeout_s=20)
    health = state.health()
    (reason,) = [r for r in health.reasons if "alert sink" in r]
    assert health.status == "degraded" and unreachable["url"] in reason
    assert "Connection refused" in reason
    (stats,) = health.to_dict()["alerts"]["sinks"].values()
    assert stats["failing"] and stats["failed"] >= 1


def test_a_restarted_monitor_resumes_its_incident_and_maintenance(tmp_path: Path) -> None:
    memory_telemetry()
    first = _state(tmp_path)
    _feed(first, loc=1.5, windows=3)
    status = first.alerts.maintenance_call("start", who="alice", why="retraining", duration_s=600)
    assert status.result(timeout=5).active
    first.alerts.close()
    again = _state(tmp_path)
    assert _open_rules(again) == ["input-drift"]
    assert again.alerts.maintenance_call("status").result(timeout=5).window.who == "alice"
    # Still drifting: the same incident goes on, none is reopened.
    _feed(again, loc=1.5, windows=2, start=60)
    incidents = again.alerts.incidents(state=None, limit=10)
    assert [i.rule for i in incidents] == ["input-drift"]


def test_three_failed_windows_raise_the_detector_failing_rule(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    assert state.runner is not None

    def broken(window: Window) -> list[Any]:
        raise RuntimeError("device lost")

    state.runner.run = broken  # type: ignore[method-assign]
    _feed(state, loc=0.0, windows=3)
    assert _open_rules(state) == ["detector-failing"]
    (incident,) = state.alerts.incidents(state="open", limit=10)
    assert dict(incident.scope)["detector"] == "mmd"


def test_flagged_inputs_are_measured_between_tested_windows(tmp_path: Path) -> None:
    state = _state(tmp_path)
    state.counts.received, state.counts.flagged = 40, 10
    assert state._window_measures() == WindowMeasures(flagged_share=0.25, dropped_share=0.0)
    state.counts.received, state.counts.flagged = 60, 10
    assert state._window_measures().flagged_share == 0.0


def test_the_detection_thread_never_waits_for_a_blocked_store(tmp_path: Path) -> None:
    """A store stuck on a write holds the alert lane, not the caller; a full lane drops and
    counts what does not fit."""
    release = threading.Event()

    class StuckStore:
        def write_alert_transitions(self, transitions: Any) -> None:
            release.wait(30)

        def alert_incidents(self, **_: Any) -> list[Any]:
            return []

        def active_maintenance(self, *, at: float) -> None:
            return None

    alerts = MonitorAlerts(DriftConfig(alerts=NO_SINKS), store=StuckStore(), clock=lambda: 0.0)  # type: ignore[arg-type]
    first = alerts.tick(at=10_000.0)  # monitor-silent opens: its record blocks the lane
    handed = [alerts.tick(at=10_001.0 + i) for i in range(400)]
    assert first is not None and not first.done() and not release.is_set()
    assert handed.count(None) == alerts.signals_dropped > 0
    release.set()
    assert alerts.drain() and alerts.health().open_incidents == 1
    alerts.close()


def test_label_and_sentinel_metrics_become_their_signals() -> None:
    metrics = ConceptDriftMetrics(
        n_labelled=80, weighted_n=80.0, accuracy=0.9, precision_macro=0.9, recall_macro=0.9,
        f1_macro=0.88, per_class=(), ece=0.04, ece_bins=10, n_with_confidence=80,
    )  # fmt: skip
    record = ConceptMetricsRecord(
        metrics_id="x", computed_at=5.0, tag="feedback", model_name="m", model_version="1",
        metrics=metrics, window_index=3,
    )  # fmt: skip
    window = metrics_signal(record)
    assert isinstance(window, LabelMetrics)
    assert (window.window_index, window.n_labels, window.accuracy, window.ece) == (3, 80, 0.9, 0.04)
    sentinel = metrics_signal(ConceptMetricsRecord(**{**record.__dict__, "tag": "sentinel"}))
    assert isinstance(sentinel, SentinelRun) and sentinel.n_images == 80


def test_labels_reach_the_rules_through_the_event_log(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    seen: list[Any] = []
    assert state.event_log is not None and state.event_log.on_metrics is not None
    state.alerts.metrics = lambda record: seen.append(record)  # type: ignore[method-assign]
    state.event_log.on_metrics = state.alerts.metrics
    _feed(state, loc=0.0, windows=1)
    from serve_drift.eventlog.labels import parse_labels

    items = parse_labels({"labels": [{"correlation_id": f"c-{i}", "label": 1} for i in range(20)]},
                         source="feedback", num_classes=3)  # fmt: skip
    state.event_log.submit_labels(items)
    assert [r.window_index for r in seen] == [0] and seen[0].metrics.n_labelled == 20


def test_a_bad_alerts_section_fails_when_the_app_is_built() -> None:
    from serve_drift.monitor.alerting import alerts_config

    with pytest.raises(ValueError, match="unknown rules"):
        alerts_config(
            DriftConfig(alerts={"rules": [], "suppress": [{"name": "x", "rules": ["y"]}]})
        )


def test_two_detectors_of_one_kind_are_two_scopes() -> None:
    from serve_drift.monitor.alerting import scoped_results

    results = [
        drift_result(0.5, window=1, detector="mmd"),
        drift_result(0.5, window=1, detector="mmd"),
    ]
    assert [r.detector for r in scoped_results(results)] == ["mmd", "mmd#2"]
