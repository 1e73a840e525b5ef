"""The monitor's detectors calibrated for its reference and window; the accuracy estimate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.config import CalibrationConfig, DetectorConfig
from serve_drift.detectors.calibration import CalibratedDetector
from serve_drift.monitor import calibration as monitor_calibration
from serve_drift.monitor.calibration import calibrate_reference
from serve_drift.monitor.state import MonitorState
from serve_drift.monitor.windows import Window
from serve_drift.telemetry import instruments as tel
from tests.support.batches import event_batch
from tests.support.telemetry_memory import memory_telemetry, metric_points

DIM, CLASSES = 4, 3
PLAN = {"references": 10, "windows": 20, "min_references": 5}  # small: these test wiring
NATIVE_MMD = {"backend": "native", "device": "cpu"}


def _probabilities(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.dirichlet(np.ones(CLASSES) * 0.3, size=rows)


def _reference(tmp_path: Path, *, rows: int = 200, calibrate_for: int | None = None) -> str:
    rng = np.random.default_rng(0)
    probabilities = _probabilities(rng, rows)
    reference = ReferenceSet.from_embeddings(
        rng.normal(size=(rows, DIM)),
        probabilities=probabilities,
        labels=probabilities.argmax(axis=1),
        model_name="m",
        model_version="1",
        data_version="normal",
    )
    if calibrate_for is not None:
        reference = calibrate_reference(
            reference,
            detectors=[DetectorConfig(**NATIVE_MMD)],
            window_size=calibrate_for,
            plan=CalibrationConfig(**PLAN),
        )
    path = tmp_path / f"ref-{rows}-{calibrate_for}.npz"
    reference.save(path)
    return str(path)


def _state(tmp_path: Path, *, reference: str | None = None, **config: Any) -> MonitorState:
    base: dict[str, Any] = {
        "model_name": "m",
        "reference_path": reference or _reference(tmp_path),
        "window": {"size": 20},
        "detectors": [NATIVE_MMD],
        "calibration": PLAN,
        "events": {"enabled": False},
    }
    return MonitorState(DriftConfig.model_validate({**base, **config}))


def _one_window(state: MonitorState, *, rows: int = 20, seed: int = 1, start: int = 0) -> Window:
    rng = np.random.default_rng(seed)
    batch = event_batch(
        rng.normal(size=(rows, DIM)), start=start, probabilities=_probabilities(rng, rows)
    )
    (window,) = [job for job in state.accept(batch) if isinstance(job, Window)]
    return window


def test_results_carry_the_calibrated_and_raw_p_values_and_the_accuracy_estimate(
    tmp_path: Path,
) -> None:
    spans, reader = memory_telemetry()
    spans.clear()
    state = _state(tmp_path, model_name="estimates")
    (result,) = state.test(_one_window(state))
    assert result.uncalibrated_p_value is not None
    assert result.uncalibrated_p_value <= result.p_value <= 1
    assert result.is_drift == (result.p_value < result.p_value_threshold)
    assert result.estimated_accuracy is not None and 0 <= result.estimated_accuracy <= 1
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.drift_test")
    assert span.attributes[tel.ATTR_P_VALUE] == result.p_value
    assert span.attributes[tel.ATTR_P_VALUE_UNCALIBRATED] == result.uncalibrated_p_value
    assert span.attributes[tel.ATTR_ESTIMATED_ACCURACY] == result.estimated_accuracy
    (point,) = _points(reader, "serve_drift.accuracy.estimated", model="estimates")
    assert point.value == result.estimated_accuracy
    assert state.runner is not None and 0 < (state.runner.accuracy_baseline or 0) <= 1


def test_a_stored_calibration_is_used_without_drawing_and_a_new_size_draws(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    memory_telemetry()
    reference = _reference(tmp_path, calibrate_for=20)

    def no_drawing(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("drew null p-values the reference file already holds")

    monkeypatch.setattr(monitor_calibration, "draw_nulls", no_drawing)
    state = _state(tmp_path, reference=reference)
    assert state.detectors is not None
    (detector,) = state.detectors.detectors
    assert isinstance(detector, CalibratedDetector) and detector.calibration is not None
    (result,) = state.test(_one_window(state))
    assert result.uncalibrated_p_value is not None
    # A window size the file holds nothing for is drawn for, at its first window: here the
    # drawing fails, so the detector runs uncalibrated and health says so.
    state.reconfigure(_update(window_size=30))
    (result,) = state.test(_one_window(state, rows=30, start=100))
    assert result.uncalibrated_p_value is None
    health = state.health()
    assert health.status == "degraded"
    assert any("mmd/native runs uncalibrated: calibration failed" in r for r in health.reasons)


def test_a_new_window_size_is_calibrated_at_its_first_window(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    assert state.detectors is not None
    (detector,) = state.detectors.detectors
    assert isinstance(detector, CalibratedDetector)
    assert detector.calibration is not None and detector.calibration.window_size == 20
    state.reconfigure(_update(window_size=30))
    (result,) = state.test(_one_window(state, rows=30))
    assert result.window_size == 30 and result.uncalibrated_p_value is not None
    assert detector.calibration is not None and detector.calibration.window_size == 30


def test_a_window_too_large_for_the_reference_is_a_health_reason(tmp_path: Path) -> None:
    memory_telemetry()
    small = _reference(tmp_path, rows=40)
    assert not any("too large" in r for r in _state(tmp_path, reference=small).health().reasons)
    state = _state(tmp_path, reference=small, window={"size": 30})  # M/N = 0.75 > 0.5
    health = state.health()
    assert health.status == "degraded"
    assert any("M/N = 0.75 > 0.5" in r for r in health.reasons)


def test_calibration_can_be_switched_off(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path, calibration={"enabled": False})
    (result,) = state.test(_one_window(state))
    assert result.uncalibrated_p_value is None and result.estimated_accuracy is not None


def test_labels_compare_the_window_estimate_with_the_truth(tmp_path: Path) -> None:
    from serve_drift.eventlog.labels import parse_labels

    _, reader = memory_telemetry()
    events = {"path": str(tmp_path / "e.sqlite"), "sample_rate": 1.0}
    state = _state(tmp_path, model_name="estimate-vs-labels", events=events)
    (result,) = state.process(_one_window(state))
    assert state.event_log is not None and result.estimated_accuracy is not None
    (stored,) = state.event_log.store.drift_results()
    assert stored.estimated_accuracy == result.estimated_accuracy
    assert stored.uncalibrated_p_value == result.uncalibrated_p_value
    # Every event predicted class 0 (tests.support.batches): 12 of 20 labels agree.
    labels = [{"correlation_id": f"c-{i}", "label": 0 if i < 12 else 1} for i in range(20)]
    state.event_log.submit_labels(parse_labels({"labels": labels}))
    (metrics,) = state.event_log.store.concept_metrics()
    assert metrics.metrics.accuracy == pytest.approx(0.6)
    assert metrics.estimated_accuracy == result.estimated_accuracy
    (point,) = _points(reader, "serve_drift.accuracy.estimate_error", model="estimate-vs-labels")
    assert point.value == pytest.approx(result.estimated_accuracy - 0.6)


def _points(reader: Any, name: str, *, model: str) -> list[Any]:
    """This test's points: the in-memory SDK is shared by every test of the run."""
    return [p for p in metric_points(reader, name) if p.attributes[tel.ATTR_MODEL_NAME] == model]


def _update(**fields: Any) -> Any:
    from serve_drift.config import MonitorUpdate

    return MonitorUpdate.model_validate(fields)
