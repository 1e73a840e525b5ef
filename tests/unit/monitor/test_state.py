"""The drift monitor's logic without Ray: windows, rejection, tests, spans with links, health."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.messages import EventBatch
from serve_drift.monitor.state import MonitorState, Untested
from serve_drift.monitor.windows import Window
from serve_drift.telemetry import instruments as tel
from tests.support.batches import event_batch
from tests.support.telemetry_memory import memory_telemetry, metric_points

DIM = 8


def _reference(tmp_path: Path, *, rows: int = 300) -> str:
    data = np.random.default_rng(0).normal(size=(rows, DIM)).astype(np.float32)
    path = tmp_path / "ref.npz"
    ReferenceSet.from_embeddings(
        data, model_name="m", model_version="1", data_version="normal"
    ).save(path)
    return str(path)


def _batch(embeddings: np.ndarray, *, start: int = 0, version: str = "1") -> EventBatch:
    return event_batch(embeddings, start=start, version=version)


def _windows(jobs: list) -> list[Window]:
    return [job for job in jobs if isinstance(job, Window)]


def _state(tmp_path: Path, **config: object) -> MonitorState:
    base = {
        "model_name": "m",
        "reference_path": _reference(tmp_path),
        "window": {"size": 20},
        "detectors": [{"backend": "native"}],
        "telemetry": {"link_sample_size": 5},
    }
    return MonitorState(DriftConfig.model_validate({**base, **config}))


def test_full_window_is_tested_and_linked_to_its_requests(tmp_path: Path) -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    state = _state(tmp_path)
    rows = np.random.default_rng(1).normal(size=(25, DIM))
    windows = _windows(state.accept(_batch(rows)))
    assert [len(w.embeddings) for w in windows] == [20]
    assert state.windows.pending_rows() == 5
    (result,) = state.test(windows[0])
    assert result.window_size == 20 and result.reference_size == 300
    assert 0 < result.p_value <= 1 and not result.is_drift
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.drift_test")
    linked = [link.attributes[tel.ATTR_CORRELATION_ID] for link in span.links]
    assert linked == list(result.correlation_ids_sample) and len(linked) == 5
    assert linked[0] == "c-0" and linked[-1] == "c-19"  # evenly spaced over the window
    assert format(span.context.span_id, "016x") == result.span_id


def test_shifted_window_is_drift(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    rows = np.random.default_rng(2).normal(loc=1.5, size=(20, DIM))
    (result,) = state.test(_windows(state.accept(_batch(rows)))[0])
    # The detector's own p-value is the smallest of 100 permutations; the calibrated one,
    # which is_drift uses, is at least as large and still below the threshold.
    assert result.uncalibrated_p_value == pytest.approx(1 / 101)
    assert result.is_drift and 1 / 101 <= result.p_value < 0.05


def test_non_finite_and_wrong_dimension_rows_never_reach_a_window(tmp_path: Path) -> None:
    _, reader = memory_telemetry()
    state = _state(tmp_path)
    rows = np.random.default_rng(3).normal(size=(20, DIM))
    rows[[1, 7]] = np.nan
    rows[4, 2] = np.inf
    (kept_out,) = state.accept(_batch(rows))
    assert isinstance(kept_out, Untested)
    assert [e.correlation_id for e in kept_out.events] == ["c-1", "c-4", "c-7"]
    assert state.counts.rejected == 3 and state.windows.pending_rows() == 17
    assert _windows(state.accept(_batch(np.ones((5, DIM + 1)), start=100))) == []
    assert state.counts.rejected == 8
    reasons = {
        p.attributes["reason"] for p in metric_points(reader, "serve_drift.embeddings.rejected")
    }
    assert reasons >= {"non_finite", "dimension_mismatch"}


def test_windows_never_mix_model_versions(tmp_path: Path) -> None:
    state = _state(tmp_path)
    rows = np.random.default_rng(4).normal(size=(15, DIM))
    assert state.accept(_batch(rows, version="1")) == []
    assert state.accept(_batch(rows, start=15, version="2")) == []
    windows = _windows(state.accept(_batch(rows[:5], start=30, version="1")))
    assert [w.model_version for w in windows] == ["1"]
    assert {e.model_version for e in windows[0].events} == {"1"}


def test_without_reference_the_monitor_is_degraded_and_does_not_test(tmp_path: Path) -> None:
    state = MonitorState(DriftConfig(model_name="m"))
    rows = np.random.default_rng(5).normal(size=(200, DIM))
    windows = _windows(state.accept(_batch(rows)))
    assert windows and state.test(windows[0]) == []
    health = state.health()
    assert health.status == "degraded" and "no reference set" in health.reasons[0]


def test_a_failing_detector_is_recorded_not_raised(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    window = _windows(state.accept(_batch(np.random.default_rng(6).normal(size=(20, DIM)))))[0]
    assert state.runner is not None

    class Broken:
        name, backend = "mmd", "broken"

        def test(self, window: np.ndarray, *, probabilities: np.ndarray | None = None) -> None:
            raise RuntimeError("detector blew up")

    state.runner._detectors = [Broken()]
    assert state.test(window) == []
    health = state.health()
    assert health.status == "degraded" and "detector blew up" in health.reasons[0]
    assert health.counts.test_errors == 1


def test_tested_windows_and_kept_out_rows_are_logged_and_accounted(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path, events={"path": str(tmp_path / "e.sqlite"), "sample_rate": 0.0})
    rows = np.random.default_rng(7).normal(size=(23, DIM))
    rows[3] = np.nan
    for job in state.accept(_batch(rows)):
        state.process(job)
    log = state.event_log
    assert log is not None
    counts = log.recorder.accounting()
    # 20 in the tested window + 1 kept out; 2 still in the open window.
    assert counts.accepted == 23 and counts.stored + counts.sampled_out == 21
    assert counts.pending == 2
    stored = {r.correlation_id: r for r in log.store.recent(limit=100)}
    assert "c-3" in stored and stored["c-3"].drift_window is None  # kept out, always stored
    assert all(r.drift_window == 0 for cid, r in stored.items() if cid != "c-3")
    assert len(log.store.drift_results()) == 1


def test_labels_join_stored_events_and_give_window_metrics(tmp_path: Path) -> None:
    from serve_drift.eventlog.labels import parse_labels

    memory_telemetry()
    state = _state(tmp_path, events={"path": str(tmp_path / "e.sqlite"), "sample_rate": 1.0})
    for job in state.accept(_batch(np.random.default_rng(8).normal(size=(20, DIM)))):
        state.process(job)
    assert state.event_log is not None
    labels = [{"correlation_id": f"c-{i}", "label": 0 if i < 15 else 1} for i in range(20)]
    labels += [{"correlation_id": "nobody", "label": 1}, {"correlation_id": "c-0", "label": 0}]
    answers = state.event_log.submit_labels(parse_labels({"labels": labels}))
    statuses = [a.status for a in answers]
    assert statuses[:20] == ["accepted"] * 20
    assert statuses[20:] == ["unknown_correlation_id", "duplicate_label"]
    (metrics,) = state.event_log.store.concept_metrics()
    # Every event predicted class 0 (see _batch): 15 of 20 labels agree.
    assert metrics.window_index == 0 and metrics.metrics.accuracy == pytest.approx(0.75)
    assert metrics.metrics.ece == pytest.approx(abs(0.9 - 0.75))


def test_combined_detector_results_explain_their_components(tmp_path: Path) -> None:
    spans, _ = memory_telemetry()
    spans.clear()
    state = _state(tmp_path, detectors=[{"kind": "combined", "n_permutations": 99}])
    rows = np.random.default_rng(9).normal(loc=1.0, size=(20, DIM))
    (result,) = state.test(_windows(state.accept(_batch(rows)))[0])
    # The reference has no softmax probabilities: the confidence test is skipped, and said so.
    assert result.skipped_components == ("confidence",)
    assert dict(result.component_p_values).keys() == {"classifier"}
    assert result.is_drift and result.to_dict()["component_p_values"]["classifier"] < 0.05
    span = next(s for s in spans.get_finished_spans() if s.name == "serve_drift.drift_test")
    assert span.attributes[f"{tel.ATTR_P_VALUE}.classifier"] == result.component_p_values[0][1]
