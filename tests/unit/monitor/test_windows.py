"""Windows by count and by time, tumbling and sliding; runtime reconfiguration of the monitor."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.config import MonitorUpdate, WindowConfig
from serve_drift.messages import EventBatch
from serve_drift.monitor.deployment import DriftMonitor
from serve_drift.monitor.state import MonitorState, Untested
from serve_drift.monitor.windows import (
    CountWindows,
    TimeWindows,
    Window,
    make_windows,
    reconfigure_windows,
)
from tests.support.batches import event_batch

DIM = 4


def batch(
    n: int,
    *,
    start: int = 0,
    version: str = "1",
    times: list[float] | None = None,
    probabilities: bool = True,
) -> EventBatch:
    rows = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(DIM, axis=1)
    probs = np.full((n, 3), 1 / 3, dtype=np.float32) if probabilities else None
    return event_batch(rows, start=start, version=version, times=times, probabilities=probs)


def ids(window: Window) -> list[int]:
    return [int(e.correlation_id[2:]) for e in window.events]


def keep_all(b: EventBatch) -> np.ndarray:
    return np.ones(len(b.events), dtype=bool)


# --- count windows ---------------------------------------------------------------------------


def test_tumbling_count_windows_are_disjoint_and_carry_probabilities() -> None:
    windows = CountWindows(size=10)
    b = batch(25)
    out = windows.add(b, keep=keep_all(b))
    assert [ids(w) for w in out] == [list(range(10)), list(range(10, 20))]
    assert [w.index for w in out] == [0, 1]
    assert out[0].probabilities is not None and out[0].probabilities.shape == (10, 3)
    assert out[0].embeddings[:, 0].tolist() == list(range(10))
    assert windows.pending_rows() == 5


def test_sliding_count_windows_overlap_by_size_minus_stride() -> None:
    windows = make_windows(WindowConfig(size=10, stride=4))
    b = batch(22)
    out = windows.add(b, keep=keep_all(b))
    assert [ids(w)[0] for w in out] == [0, 4, 8, 12]
    assert all(len(w.events) == 10 for w in out)
    assert ids(out[1]) == list(range(4, 14))


def test_a_window_never_mixes_model_versions() -> None:
    windows = CountWindows(size=10)
    a, b = batch(8, version="1"), batch(8, start=100, version="2")
    assert windows.add(a, keep=keep_all(a)) == []
    assert windows.add(b, keep=keep_all(b)) == []
    more = batch(4, start=8, version="1")
    (window,) = windows.add(more, keep=keep_all(more))
    assert window.model_version == "1" and ids(window) == list(range(10))


def test_rows_not_kept_never_enter_windows() -> None:
    windows = CountWindows(size=10)
    b = batch(20)
    keep = np.arange(20) % 2 == 0
    (window,) = windows.add(b, keep=keep)
    assert ids(window) == list(range(0, 20, 2))


def test_windows_without_probabilities_for_every_row_have_none() -> None:
    windows = CountWindows(size=10)
    a, b = batch(5), batch(5, start=5, probabilities=False)
    windows.add(a, keep=keep_all(a))
    (window,) = windows.add(b, keep=keep_all(b))
    assert window.probabilities is None


def test_resizing_count_windows_keeps_collected_rows() -> None:
    windows = CountWindows(size=20)
    b = batch(15)
    windows.add(b, keep=keep_all(b))
    windows.resize(10)
    more = batch(1, start=15)
    (window,) = windows.add(more, keep=keep_all(more))
    assert ids(window) == list(range(6, 16))  # the newest 10 rows


@settings(max_examples=30, deadline=None)
@given(size=st.integers(10, 30), stride=st.integers(1, 30), rows=st.integers(0, 120))
def test_count_windows_emit_exactly_when_due(size: int, stride: int, rows: int) -> None:
    stride = min(stride, size)
    windows = CountWindows(size=size, stride=stride)
    b = batch(rows)
    out = windows.add(b, keep=keep_all(b))
    expected = 0 if rows < size else 1 + (rows - size) // stride
    assert len(out) == expected
    for k, window in enumerate(out):
        assert ids(window) == list(range(k * stride, k * stride + size))


# --- time windows ----------------------------------------------------------------------------


def test_tumbling_time_windows_close_when_a_later_row_arrives() -> None:
    windows = TimeWindows(duration_s=10.0)
    b = batch(25, times=[100.0 + i for i in range(25)])
    out = windows.add(b, keep=keep_all(b))
    assert [ids(w) for w in out] == [list(range(10)), list(range(10, 20))]
    assert windows.flush_due(now=125.0) == []  # rows 20..24 still fill [120, 130)
    (last,) = windows.flush_due(now=131.0) or [None]
    assert last is None  # only 5 rows: below min_size, not tested ...
    assert [e.correlation_id for e in windows.take_untested()] == [f"c-{i}" for i in range(20, 25)]
    assert windows.take_untested() == ()  # ... and handed out once


def test_sliding_time_windows_share_rows() -> None:
    windows = TimeWindows(duration_s=20.0, stride_s=10.0)
    b = batch(40, times=[100.0 + i for i in range(40)])
    out = windows.add(b, keep=keep_all(b))
    assert [ids(w) for w in out] == [list(range(20)), list(range(10, 30))]
    assert windows.take_untested() == ()  # every dropped row was tested


def test_late_rows_join_the_open_window() -> None:
    windows = TimeWindows(duration_s=10.0)
    b = batch(14, times=[100.0 + i for i in range(12)] + [95.0, 121.0])
    out = windows.add(b, keep=keep_all(b))
    # Row 12 is late (t=95, after [100, 110) closed): it joins [110, 120), which row 13 closes
    # with 3 rows, too few to test: they go back as untested.
    assert [ids(w) for w in out] == [list(range(10))]
    assert windows.take_untested() == tuple(
        e for e in b.events if e.correlation_id in ("c-10", "c-11", "c-12")
    )


def test_time_windows_cap_their_rows() -> None:
    windows = TimeWindows(duration_s=100.0, max_size=12)
    b = batch(20, times=[100.0 + i for i in range(20)])
    windows.add(b, keep=keep_all(b))
    assert len(windows.take_untested()) == 8  # the rows beyond the cap
    (window,) = windows.flush_due(now=300.0)
    assert len(window.events) == 12


def test_time_windows_skip_empty_stretches() -> None:
    windows = TimeWindows(duration_s=10.0)
    first, later = (
        batch(10, times=[100.0 + i for i in range(10)]),
        batch(10, start=10, times=[100_000.0 + i for i in range(10)]),
    )
    windows.add(first, keep=keep_all(first))
    (window,) = windows.add(later, keep=keep_all(later))
    assert ids(window) == list(range(10))
    (second,) = windows.flush_due(now=200_000.0)
    assert ids(second) == list(range(10, 20)) and second.index == 1


def test_window_config_is_validated() -> None:
    with pytest.raises(ValidationError, match="stride"):
        WindowConfig(size=10, stride=11)
    with pytest.raises(ValidationError, match="stride_s needs duration_s"):
        WindowConfig(stride_s=5.0)
    with pytest.raises(ValidationError, match="stride_s"):
        WindowConfig(duration_s=5.0, stride_s=6.0)
    assert isinstance(make_windows(WindowConfig(duration_s=60.0)), TimeWindows)


def test_switching_window_kinds_keeps_numbering_and_hands_back_rows() -> None:
    windows = CountWindows(size=10)
    b = batch(14)
    windows.add(b, keep=keep_all(b))
    fresh = reconfigure_windows(
        windows, old=WindowConfig(size=10), new=WindowConfig(size=10, duration_s=5.0)
    )
    assert isinstance(fresh, TimeWindows)
    assert [e.correlation_id for e in fresh.take_untested()] == [f"c-{i}" for i in range(10, 14)]
    more = batch(12, start=100, times=[2000.0 + i * 0.1 for i in range(12)])
    fresh.add(more, keep=keep_all(more))
    (window,) = fresh.flush_due(now=3000.0)
    assert window.index == 1


# --- runtime reconfiguration of the monitor (no restart, no Ray) ---------------------------


def reference_file(tmp_path: Path) -> str:
    rows = np.random.default_rng(0).normal(size=(200, DIM)).astype(np.float32)
    path = tmp_path / "ref.npz"
    ReferenceSet.from_embeddings(rows, model_name="m", model_version="1", data_version="d").save(
        path
    )
    return str(path)


def monitor_state(tmp_path: Path) -> MonitorState:
    return MonitorState(
        DriftConfig.model_validate(
            {
                "model_name": "m",
                "reference_path": reference_file(tmp_path),
                "window": {"size": 20},
                "detectors": [
                    {"kind": "mmd", "backend": "native", "device": "cpu"},
                    {"kind": "classifier", "device": "cpu"},
                ],
                "events": {"enabled": False},
            }
        )
    )


def test_thresholds_and_windows_change_at_run_time(tmp_path: Path) -> None:
    state = monitor_state(tmp_path)
    state.reconfigure(
        MonitorUpdate.model_validate(
            {"window": {"size": 10, "stride": 5}, "p_value_thresholds": [0.5, 0.01]}
        )
    )
    rows = np.random.default_rng(1).normal(size=(15, DIM)).astype(np.float32)
    b = EventBatch(embeddings=rows, events=batch(15).events, replica_id="r")
    jobs = state.accept(b)
    windows = [j for j in jobs if isinstance(j, Window)]
    assert [len(w.events) for w in windows] == [10, 10]
    results = state.test(windows[0])
    assert [r.p_value_threshold for r in results] == [0.5, 0.01]
    assert state.config.window.stride == 5 and state.health().window_size == 10


def test_switching_to_time_windows_at_run_time(tmp_path: Path) -> None:
    state = monitor_state(tmp_path)
    b = batch(5)
    state.accept(EventBatch(embeddings=b.embeddings, events=b.events, replica_id="r"))
    state.reconfigure(MonitorUpdate.model_validate({"window": {"duration_s": 30.0}}))
    later = batch(1, start=5, times=[time.time()])  # in an open window: not flushed yet
    jobs = state.accept(
        EventBatch(embeddings=later.embeddings, events=later.events, replica_id="r")
    )
    (untested,) = [j for j in jobs if isinstance(j, Untested)]
    assert len(untested.events) == 5  # the count window's rows, handed to the event log
    assert isinstance(state.windows, TimeWindows)


def test_an_invalid_update_changes_nothing(tmp_path: Path) -> None:
    monitor = DriftMonitor.__new__(DriftMonitor)  # the deployment body, without __init__'s nice()
    monitor._state = monitor_state(tmp_path)
    with pytest.raises(ValidationError):
        monitor.reconfigure({"window": {"size": 5}})
    with pytest.raises(ValueError, match="2 configured detectors"):
        monitor.reconfigure({"p_value_thresholds": [0.1]})
    with pytest.raises(ValidationError):
        monitor.reconfigure({"p_value_threshold": 0.01, "p_value_thresholds": [0.1, 0.1]})
    assert monitor._state.config.window.size == 20
    monitor.reconfigure({"window_size": 50, "p_value_threshold": 0.2})
    assert monitor._state.windows.size == 50
    assert monitor._state.runner is not None
    assert monitor._state.runner._thresholds() == [0.2, 0.2]
