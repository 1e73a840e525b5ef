"""The SQLite event store: batches, queries, exactly-once, retention, failures, the recorder."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from serve_drift.eventlog.recorder import EventRecorder
from serve_drift.eventlog.sampling import Sampler
from serve_drift.eventlog.schema import DriftTestRecord, _example_drift_dict
from serve_drift.eventlog.store import EventQuery, EventStore, StoreWriteError
from tests.support.eventlog_helpers import make_record, make_records, with_window


@pytest.fixture
def store(tmp_path: Path):
    with EventStore(tmp_path / "events.db") as s:
        yield s


def _ids(records) -> set[str]:
    return {r.internal_id for r in records}


def test_opens_in_wal_mode_with_full_sync(store: EventStore) -> None:
    db = sqlite3.connect(store.path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert not store.health().degraded


def test_batch_write_then_read_back(store: EventStore) -> None:
    records = make_records(200)
    receipt = store.write_batch(records)
    assert set(receipt.written_ids) == _ids(records) and receipt.already_present_ids == ()
    assert store.count_events() == 200
    newest = store.recent(limit=5)
    assert [r.internal_id for r in newest] == [r.internal_id for r in records[::-1][:5]]
    assert newest[0] == records[-1]  # the full record survives the round trip


def test_queries_filter_and_combine(store: EventStore) -> None:
    records = [
        *make_records(50, model_version="v1"),
        *with_window(make_records(50, start=50, model_version="v2"), 7),
        *make_records(10, start=100, model_version="v2", validation_flags=("too_dark",)),
        make_record(200, correlation_id="req-7"),  # a client reusing an id
    ]
    store.write_batch(records)
    assert {r.internal_id for r in store.by_correlation_id("req-7")} == {f"{7:032x}", f"{200:032x}"}
    assert len(store.by_model_version("v2", limit=1000)) == 60
    assert len(store.flagged(limit=1000)) == 10
    in_range = store.in_time_range(since=1010.0, until=1020.0, limit=1000)
    assert sorted(r.timestamp for r in in_range) == [1010.0 + k for k in range(10)]
    combined = store.query(
        EventQuery(model_version="v2", flagged_only=True, since=1105.0, limit=1000)
    )
    assert len(combined) == 5
    assert len(store.query(EventQuery(drift_window=7, limit=1000))) == 50
    assert len(store.recent(limit=3)) == 3


def test_retried_batches_are_stored_exactly_once(store: EventStore) -> None:
    first = make_records(100)
    store.write_batch(first)
    retry = [*first[50:], *make_records(20, start=100)]  # half old, some new
    receipt = store.write_batch(retry)
    assert len(receipt.written_ids) == 20 and len(receipt.already_present_ids) == 50
    receipt = store.write_batch([make_record(500), make_record(500)])  # a repeat inside a batch
    assert receipt.written_ids == (f"{500:032x}",)
    assert store.count_events() == 121
    counts = store._connection().execute(
        "SELECT COUNT(*) FROM (SELECT internal_id FROM inference_events "
        "GROUP BY internal_id HAVING COUNT(*) > 1)"
    )
    assert counts.fetchone()[0] == 0


def test_drift_results_and_window_numbering(store: EventStore) -> None:
    assert store.next_window_index() == 0
    record = DriftTestRecord.from_result(_example_drift_dict())
    store.write_drift_results([record, record])
    assert store.drift_results() == [record]
    assert store.drift_results(window_index=5) == []
    store.write_batch(with_window(make_records(3), 9))
    assert store.next_window_index() == 10


def test_retention_by_age(store: EventStore) -> None:
    store.write_batch(make_records(100))  # timestamps 1000..1099
    store.write_drift_results([DriftTestRecord.from_result(_example_drift_dict())])  # tested_at 21
    store.max_age_s = 100.0
    report = store.enforce_retention(now=1150.0)
    assert report.deleted_by_age == 50 and report.deleted_by_size == 0
    assert min(r.timestamp for r in store.recent(limit=1000)) == 1050.0
    assert store.drift_results() == []


def test_retention_by_size_keeps_the_newest_and_shrinks_the_file(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", max_age_s=None, max_bytes=None) as store:
        for start in range(0, 3000, 250):
            store.write_batch(make_records(250, start=start))
        before = store.size_bytes()
        store.max_bytes = 400_000
        report = store.enforce_retention()
        remaining = store.recent(limit=10_000)
        assert report.deleted_by_size > 0 and len(remaining) == 3000 - report.deleted_by_size
        assert min(r.timestamp for r in remaining) == 1000.0 + report.deleted_by_size  # oldest went
        store._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert os.path.getsize(store.path) <= 400_000 < before
        assert store.count_events() > 0


def test_retention_runs_after_writes_when_due(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", max_age_s=10.0, retention_interval_s=0.0) as store:
        store.write_batch(make_records(5))  # timestamps ~1000: far older than 10 s
        assert store.count_events() == 0


# --- failures ---------------------------------------------------------------------------------


def test_disk_full_fails_the_write_and_reports_nothing_written(store: EventStore) -> None:
    store.write_batch(make_records(10))
    db = store._connection()
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: "disk full"
    batch = make_records(300, start=10)
    with pytest.raises(StoreWriteError) as failure:
        store.write_batch(batch)
    assert failure.value.reason == "disk_full"
    health = store.health()
    assert (
        health.degraded and health.last_error_reason == "disk_full" and "full" in health.last_error
    )
    assert store.count_events() == 10  # the failed batch left nothing behind
    db.execute("PRAGMA max_page_count = 1073741823")
    store.write_batch(batch)
    assert store.count_events() == 310 and not store.health().degraded
    assert store.health().write_failures == 1


def test_a_locked_database_fails_after_the_busy_timeout(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", busy_timeout_s=0.05) as store:
        other = sqlite3.connect(store.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        with pytest.raises(StoreWriteError) as failure:
            store.write_batch(make_records(5))
        assert failure.value.reason == "locked" and store.health().degraded
        other.execute("ROLLBACK")
        other.close()
        store.write_batch(make_records(5))
        assert store.count_events() == 5 and not store.health().degraded


class _FailingConnection:
    """A connection whose bulk insert fails mid-transaction, like an I/O error would."""

    def __init__(self, real: sqlite3.Connection) -> None:
        self._real = real

    def executemany(self, *args: Any) -> Any:
        raise sqlite3.OperationalError("disk I/O error")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failing_execute_rolls_back(store: EventStore, monkeypatch: pytest.MonkeyPatch) -> None:
    real = store._connection()
    monkeypatch.setattr(store, "_db", _FailingConnection(real))
    with pytest.raises(StoreWriteError):
        store.write_batch(make_records(20))
    assert not real.in_transaction
    monkeypatch.setattr(store, "_db", real)
    assert store.count_events() == 0


def test_a_store_that_cannot_open_is_degraded_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "is-a-directory").mkdir()
    store = EventStore(tmp_path / "is-a-directory")
    assert store.health().degraded and store.health().last_error_reason == "cannot_open"
    with pytest.raises(StoreWriteError) as failure:
        store.write_batch(make_records(1))
    assert failure.value.reason == "cannot_open"
    store.close()


# --- the recorder: sampling + store + accounting ----------------------------------------------


def test_recorder_accounts_for_every_event_even_when_the_store_fails(store: EventStore) -> None:
    recorder = EventRecorder(store=store, sampler=Sampler(rate=0.2, seed=1), max_batch=64)
    window = make_records(400)
    recorder.accept(len(window))
    outcome = recorder.record(window, in_drift_window=False)
    assert outcome.stored + outcome.sampled_out == 400 and outcome.dropped == 0
    drifting = with_window(make_records(100, start=400), 3)
    recorder.accept(100)
    assert recorder.record(drifting, in_drift_window=True).stored == 100
    db = store._connection()
    db.execute(f"PRAGMA max_page_count = {db.execute('PRAGMA page_count').fetchone()[0]}")
    failing = make_records(300, start=500, validation_flags=("too_dark",))  # all kept, none fit
    recorder.accept(300)
    outcome = recorder.record(failing, in_drift_window=False)
    assert outcome.dropped > 0 and outcome.drop_reason == "store_disk_full"
    recorder.accept(7)
    recorder.drop(7, reason="monitor_queue_full")
    snapshot = recorder.accounting()
    snapshot.check(settled=True)
    assert snapshot.stored == store.count_events()  # "stored" means committed, nothing else
    assert snapshot.dropped == {"store_disk_full": outcome.dropped, "monitor_queue_full": 7}
    assert recorder.health().degraded is True


def test_recorder_stores_drift_results(store: EventStore) -> None:
    from serve_drift.messages import DriftResult

    data = {k: v for k, v in _example_drift_dict().items() if k != "correlation_ids_sample"}
    recorder = EventRecorder(store=store, sampler=Sampler(rate=1.0))
    assert recorder.record_drift_results([DriftResult(**data)])
    assert store.drift_results()[0].test_id == "t-1"


def test_concurrent_writers_and_a_separate_reader(store: EventStore) -> None:
    """The monitor's threads share one store; the CLI reads through its own connection."""
    errors: list[BaseException] = []

    def write(offset: int) -> None:
        try:
            for k in range(10):
                store.write_batch(make_records(50, start=offset + 50 * k))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(10_000 * t,)) for t in range(3)]
    for thread in threads:
        thread.start()
    with EventStore(store.path) as reader:
        while any(t.is_alive() for t in threads):
            reader.recent(limit=10)
    for thread in threads:
        thread.join()
    assert not errors and store.count_events() == 1500


def test_records_keep_their_weight_and_reason_in_the_store(store: EventStore) -> None:
    kept = dataclasses.replace(make_record(1), sampling_weight=10.0, keep_reason="sampled")
    store.write_batch([kept])
    assert store.recent()[0].sampling_weight == 10.0 and store.recent()[0].keep_reason == "sampled"
