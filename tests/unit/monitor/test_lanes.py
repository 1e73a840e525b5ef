"""The monitor's three lanes without Ray: a slow or failing store never stops drift tests,
time windows close on the clock, a restart answers from the store, bad rows cost themselves."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.eventlog.store import EventStore
from serve_drift.messages import IngestReceipt
from serve_drift.monitor.deployment import DriftMonitor
from serve_drift.monitor.state import MonitorState
from tests.support.batches import event_batch
from tests.support.telemetry_memory import memory_telemetry, metric_points

DIM = 8
WINDOW = 20


def _reference(tmp_path: Path) -> str:
    rng = np.random.default_rng(0)
    data = rng.normal(size=(300, DIM)).astype(np.float32)
    path = tmp_path / "ref.npz"
    ReferenceSet.from_embeddings(
        data,
        probabilities=rng.dirichlet(np.ones(3), size=300),
        model_name="m",
        model_version="1",
        data_version="n",
    ).save(path)
    return str(path)


def _config(tmp_path: Path, **overrides: Any) -> DriftConfig:
    base: dict[str, Any] = {
        "model_name": "m",
        "reference_path": _reference(tmp_path),
        "window": {"size": WINDOW},
        "detectors": [{"backend": "native", "n_permutations": 20}],
        "monitor_niceness": 0,  # the test process itself must keep its priority
        "events": {"path": str(tmp_path / "events.sqlite"), "sample_rate": 1.0},
    }
    return DriftConfig.model_validate({**base, **overrides})


def _rows(n: int, *, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, DIM))


async def _until(check: Callable[[], Any], *, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := check():
            return value
        await asyncio.sleep(0.05)
    raise AssertionError("timed out")


def _hold_write_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holds the store's write lock: every write of ours waits, then fails."""
    script = (
        "import sqlite3, sys, time\n"
        "db = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "db.execute('BEGIN EXCLUSIVE')\n"
        "print('locked', flush=True)\n"
        "time.sleep(float(sys.argv[2]))\n"
        "db.execute('ROLLBACK')\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_locked_store_never_stops_drift_tests(tmp_path: Path) -> None:
    memory_telemetry()
    config = _config(
        tmp_path, events={**_config(tmp_path).events.model_dump(), "arrival_timeout_s": 0.2}
    )
    monitor = DriftMonitor(config)
    holder = _hold_write_lock(Path(config.events.path or ""), seconds=4.0)

    async def scenario() -> list[IngestReceipt]:
        started = time.monotonic()
        receipts = [
            await monitor.ingest(event_batch(_rows(WINDOW, seed=i), start=i * WINDOW))
            for i in range(5)
        ]
        assert time.monotonic() - started < 3.0  # each batch waited 0.2 s at most
        # Every window is tested while the store is still locked.
        await _until(lambda: len(monitor._state.results) == 5, timeout_s=3.5)
        assert holder.poll() is None, "the lock was released before the tests ran"
        return receipts

    receipts = asyncio.run(scenario())
    holder.wait(timeout=30)
    assert [r.recorded for r in receipts] == [False] * 5
    assert monitor._state.counts.unrecorded == 5 * WINDOW
    monitor._writer.close(timeout_s=30)  # the queued writes run once the lock is gone
    accounting = monitor._state.event_log.recorder.accounting()
    accounting.check(settled=True)  # stored + sampled out + dropped = accepted
    assert accounting.accepted == 5 * WINDOW


def test_a_full_writer_queue_refuses_and_counts(tmp_path: Path) -> None:
    memory_telemetry()
    events = {"path": str(tmp_path / "events.sqlite"), "writer_queue_size": 1}
    config = _config(tmp_path, events={**events, "arrival_timeout_s": 0.1, "sample_rate": 1.0})
    monitor = DriftMonitor(config)
    holder = _hold_write_lock(Path(events["path"]), seconds=3.0)

    async def scenario() -> None:
        for i in range(6):
            await monitor.ingest(event_batch(_rows(WINDOW, seed=i), start=i * WINDOW))
        await _until(lambda: len(monitor._state.results) == 6, timeout_s=10)
        await asyncio.sleep(0.5)  # the last windows' log jobs meet the full queue too

    asyncio.run(scenario())
    holder.wait(timeout=30)
    monitor._writer.close(timeout_s=30)
    accounting = monitor._state.event_log.recorder.accounting()
    accounting.check(settled=True)
    assert accounting.dropped.get("event_log_queue_full", 0) > 0


def test_time_windows_close_on_the_clock_without_more_traffic(tmp_path: Path) -> None:
    memory_telemetry()
    config = _config(tmp_path, window={"size": 1000, "duration_s": 0.5, "min_size": 10})
    monitor = DriftMonitor(config)

    async def scenario() -> None:
        now = time.time()
        rows = _rows(30, seed=1)
        await monitor.ingest(event_batch(rows, times=[now] * len(rows)))
        # No further batch arrives: only the timer can close this window.
        await _until(lambda: len(monitor._state.results) == 1, timeout_s=10)

    asyncio.run(scenario())
    assert monitor._state.results[0].window_size == 30


def test_a_restarted_monitor_answers_with_stored_results_and_continues(tmp_path: Path) -> None:
    memory_telemetry()
    config = _config(tmp_path)
    first = MonitorState(config)
    for job in first.accept(event_batch(_rows(2 * WINDOW + 7, seed=2))):
        first.process(job)
    for job in first.accept(event_batch(_rows(0, seed=3), start=2 * WINDOW + 7)):
        first.process(job)
    first.event_log.record_arrivals(event_batch(_rows(2 * WINDOW + 7, seed=2)).events)
    assert [r.window_index for r in first.results] == [0, 1]

    second = MonitorState(config)  # a new process: nothing in memory
    assert [r.test_id for r in second.results] == [r.test_id for r in first.results]
    assert second.rows_lost_at_restart == 7  # the open window's rows died with the process
    (job,) = second.accept(event_batch(_rows(WINDOW, seed=4), start=100))
    assert job.index == 2  # numbering continues: stored rows are never merged into a new one
    assert second.health().rows_lost_at_restart == 7


def test_one_nan_softmax_row_costs_itself_not_the_window(tmp_path: Path) -> None:
    _, reader = memory_telemetry()
    state = MonitorState(_config(tmp_path, detectors=[{"kind": "bbsd"}]))
    probabilities = np.full((WINDOW + 1, 3), 1 / 3)
    probabilities[4] = np.nan
    batch = event_batch(_rows(WINDOW + 1, seed=5), probabilities=probabilities)
    (window,) = [job for job in state.accept(batch) if hasattr(job, "embeddings")]
    assert len(window.embeddings) == WINDOW and state.counts.rejected == 1
    assert "c-4" not in {e.correlation_id for e in window.events}
    assert len(state.test(window)) == 1 and state.counts.test_errors == 0
    reasons = {
        p.attributes["reason"] for p in metric_points(reader, "serve_drift.embeddings.rejected")
    }
    assert "invalid_probabilities" in reasons


def test_compact_rows_make_labels_join_before_the_window_is_tested(tmp_path: Path) -> None:
    memory_telemetry()
    state = MonitorState(
        _config(tmp_path, events={"path": str(tmp_path / "e.sqlite"), "sample_rate": 0.0})
    )
    batch = event_batch(_rows(5, seed=6))
    state.accept(batch)  # 5 rows: no window is full yet
    assert state.event_log is not None
    state.event_log.record_arrivals(batch.events)
    from serve_drift.eventlog.labels import parse_labels

    answers = state.event_log.submit_labels(parse_labels({"correlation_id": "c-2", "label": 0}))
    assert [a.status for a in answers] == ["accepted"]
    with EventStore(tmp_path / "e.sqlite") as store:
        assert store.count_served() == 5 and store.count_events() == 0
