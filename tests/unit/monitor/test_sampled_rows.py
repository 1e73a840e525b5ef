"""Rows a replica sampled: the monitor's accounting, window labels, weights and shares."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import pytest

from serve_drift import DriftConfig
from serve_drift.messages import EventBatch
from serve_drift.monitor.state import MonitorState
from serve_drift.monitor.windows import Window
from tests.support.batches import event_batch
from tests.support.references import normal_reference
from tests.support.telemetry_memory import memory_telemetry

DIM = 8


def _state(tmp_path: Path, **config: object) -> MonitorState:
    base = {
        "model_name": "m",
        "reference_path": normal_reference(tmp_path / "ref.npz", dim=DIM),
        "window": {"size": 20},
        "detectors": [{"kind": "combined", "n_permutations": 50}],
        "events": {"path": str(tmp_path / "e.sqlite"), "sample_rate": 0.5},
    }
    return MonitorState(DriftConfig.model_validate({**base, **config}))


def _sampled_batch(rows: int, *, weight: float, unsampled: int, start: int = 0) -> EventBatch:
    """``rows`` shipped rows standing for ``weight`` each; ``unsampled`` served and left out."""
    batch = event_batch(np.random.default_rng(start).normal(size=(rows, DIM)), start=start)
    events = tuple(dataclasses.replace(e, sampling_weight=weight) for e in batch.events)
    return dataclasses.replace(batch, events=events, unsampled=unsampled)


def test_rows_sampled_out_at_the_replica_are_accepted_and_resolved_at_once(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    jobs = state.accept(_sampled_batch(20, weight=5.0, unsampled=80))
    for job in jobs:
        state.process(job)
    assert state.event_log is not None
    accounting = state.event_log.recorder.accounting()
    accounting.check(settled=True)  # stored + sampled out + dropped == accepted, nothing pending
    assert accounting.accepted == 100 and accounting.sampled_out >= 80
    assert state.counts.received == 20 and state.counts.unsampled == 80
    stored = state.event_log.store.recent(limit=1000)
    # Both stages' weights multiply: the stored records stand for every served request.
    assert {r.sampling_weight for r in stored} <= {5.0, 10.0}
    assert sum(r.sampling_weight for r in stored) == pytest.approx(100, rel=0.6)


def test_windows_and_their_results_say_what_share_of_the_traffic_they_hold(
    tmp_path: Path,
) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    jobs = state.accept(_sampled_batch(10, weight=4.0, unsampled=30))
    jobs += state.accept(_sampled_batch(10, weight=1.0, unsampled=0, start=10))
    (window,) = [job for job in jobs if isinstance(job, Window)]
    assert window.sampling_rate == pytest.approx(20 / 50)
    (result,) = state.test(window)
    assert result.sampling_rate == pytest.approx(0.4)
    assert result.to_dict()["sampling_rate"] == pytest.approx(0.4)


def test_unsampled_traffic_has_sampling_rate_one(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    (window,) = state.accept(_sampled_batch(20, weight=1.0, unsampled=0))
    assert isinstance(window, Window) and window.sampling_rate == 1.0


def test_the_budget_is_shared_between_the_replicas_that_ship(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path, shipping={"monitor_max_rows_per_s": 900.0, "share_window_s": 60})
    for replica in ("a", "b", "c"):
        batch = _sampled_batch(1, weight=1.0, unsampled=0)
        state.accept(dataclasses.replace(batch, replica_id=replica))
    now = time.monotonic()
    assert state.replicas.share(now=now) == pytest.approx(300.0)
    assert state.replicas.share(now=now + 61) == pytest.approx(900.0)  # the others went quiet


def test_without_a_budget_the_monitor_advises_nothing(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path, shipping={"monitor_max_rows_per_s": None})
    state.accept(_sampled_batch(1, weight=1.0, unsampled=0))
    assert state.replicas.share(now=time.monotonic()) is None


def test_a_batch_of_no_rows_reports_the_rows_left_out(tmp_path: Path) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    empty = EventBatch(
        embeddings=np.zeros((0, DIM), dtype=np.float32), events=(), replica_id="r", unsampled=7
    )
    assert state.accept(empty) == []
    assert state.event_log is not None
    state.event_log.record_arrivals(empty.events)
    accounting = state.event_log.recorder.accounting()
    accounting.check(settled=True)
    assert accounting.accepted == accounting.sampled_out == 7 and state.counts.unsampled == 7
