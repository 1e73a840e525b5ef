"""The event store's contract, over both backends (SQLite and a real PostgreSQL): batches,
queries, exactly-once, retention, migrations, failures, the recorder. What only one backend has
(SQLite's WAL and file size, PostgreSQL's connections) is tested at the end."""

from __future__ import annotations

import dataclasses
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serve_drift.eventlog.recorder import EventRecorder
from serve_drift.eventlog.sampling import Sampler
from serve_drift.eventlog.schema import DriftTestRecord, _example_drift_dict
from serve_drift.eventlog.store import (
    LAYOUT_VERSION,
    BaseEventStore,
    EventQuery,
    EventStore,
    PostgresEventStore,
    StoreError,
    StoreWriteError,
    open_store,
)
from tests.support.eventlog_helpers import make_record, make_records, with_window
from tests.support.postgres import PostgresServer, new_schema
from tests.support.store_backends import PostgresBackend, SqliteBackend

Backend = SqliteBackend | PostgresBackend


@pytest.fixture
def store(store_backend: Backend):
    with store_backend.open() as s:
        yield s


def _ids(records) -> set[str]:
    return {r.internal_id for r in records}


def _scalar(store: BaseEventStore, statement: str) -> Any:
    return store._connection().execute(statement).fetchone()[0]


def test_opens_at_the_current_layout_and_healthy(store: BaseEventStore) -> None:
    assert _scalar(store, "SELECT value FROM meta WHERE key = 'layout_version'") == str(
        LAYOUT_VERSION
    )
    health = store.health()
    assert not health.degraded and health.backend == store.backend and health.size_bytes > 0


def test_batch_write_then_read_back(store: BaseEventStore) -> None:
    records = make_records(200)
    receipt = store.write_batch(records)
    assert set(receipt.written_ids) == _ids(records) and receipt.already_present_ids == ()
    assert store.count_events() == 200
    newest = store.recent(limit=5)
    assert [r.internal_id for r in newest] == [r.internal_id for r in records[::-1][:5]]
    assert newest[0] == records[-1]  # the full record survives the round trip


def test_queries_filter_and_combine(store: BaseEventStore) -> None:
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


def test_events_of_the_same_time_come_newest_written_first(store: BaseEventStore) -> None:
    same_time = make_records(5, timestamp=5000.0)
    store.write_batch(same_time)
    assert [r.internal_id for r in store.recent(limit=5)] == [
        r.internal_id for r in reversed(same_time)
    ]


def test_retried_batches_are_stored_exactly_once(store: BaseEventStore) -> None:
    first = make_records(100)
    store.write_batch(first)
    retry = [*first[50:], *make_records(20, start=100)]  # half old, some new
    receipt = store.write_batch(retry)
    assert len(receipt.written_ids) == 20 and len(receipt.already_present_ids) == 50
    receipt = store.write_batch([make_record(500), make_record(500)])  # a repeat inside a batch
    assert receipt.written_ids == (f"{500:032x}",)
    assert store.count_events() == 121
    repeated = _scalar(
        store,
        "SELECT COUNT(*) FROM (SELECT internal_id FROM inference_events "
        "GROUP BY internal_id HAVING COUNT(*) > 1) AS repeated",
    )
    assert repeated == 0


def test_drift_results_and_window_numbering(store: BaseEventStore) -> None:
    assert store.next_window_index() == 0
    record = DriftTestRecord.from_result(_example_drift_dict())
    store.write_drift_results([record, record])
    assert store.drift_results() == [record]
    assert store.drift_results(window_index=5) == []
    store.write_batch(with_window(make_records(3), 9))
    assert store.next_window_index() == 10


def test_retention_by_age(store: BaseEventStore) -> None:
    store.write_batch(make_records(100))  # timestamps 1000..1099
    store.write_drift_results([DriftTestRecord.from_result(_example_drift_dict())])  # tested_at 21
    store.max_age_s = 100.0
    report = store.enforce_retention(now=1150.0)
    assert report.deleted_by_age == 50 and report.deleted_by_size == 0
    assert min(r.timestamp for r in store.recent(limit=1000)) == 1050.0
    assert store.drift_results() == []


def test_retention_by_size_keeps_the_newest(store_backend: Backend) -> None:
    with store_backend.open(max_age_s=None, max_bytes=None) as store:
        for start in range(0, 3000, 250):
            store.write_batch(make_records(250, start=start))
        store.max_bytes = 400_000
        report = store.enforce_retention()
        remaining = store.recent(limit=10_000)
        assert report.deleted_by_size > 0 and len(remaining) == 3000 - report.deleted_by_size
        assert min(r.timestamp for r in remaining) == 1000.0 + report.deleted_by_size  # oldest went
        used = store._transaction(store._connection(), store._used_bytes)
        assert 0 < used <= 400_000 and store.count_served() == len(remaining)


def test_retention_runs_after_writes_when_due(store_backend: Backend) -> None:
    with store_backend.open(max_age_s=10.0, retention_interval_s=0.0) as store:
        store.write_batch(make_records(5))  # timestamps ~1000: far older than 10 s
        assert store.count_events() == 0


def test_an_older_layout_is_migrated_on_open_and_a_newer_one_refused(
    store_backend: Backend,
) -> None:
    with store_backend.open() as store:
        store.write_batch(make_records(20))
        db = store._connection()  # as layout 1 left it: no served rows, no layout version
        db.execute("DELETE FROM served_requests")
        db.execute("DELETE FROM meta WHERE key = 'layout_version'")
    for _ in range(2):  # the migration is idempotent: opening twice changes nothing more
        with store_backend.open() as store:
            assert store.count_served() == 20 and not store.health().degraded
    with store_backend.open() as store:
        store._connection().execute("UPDATE meta SET value = '99' WHERE key = 'layout_version'")
    with store_backend.open() as newer:
        assert newer.health().last_error_reason == "incompatible"
        with pytest.raises(StoreError, match="layout version 99"):
            newer.count_events()


# --- failures ---------------------------------------------------------------------------------


def test_a_failing_store_reports_nothing_written_then_recovers(
    store: BaseEventStore, store_backend: Backend
) -> None:
    store.write_batch(make_records(10))
    store_backend.fail_writes(store)
    batch = make_records(300, start=10)
    with pytest.raises(StoreWriteError) as failure:
        store.write_batch(batch)
    assert failure.value.reason == store_backend.failing_reason
    assert failure.value.code == f"store_{store_backend.failing_reason}"
    health = store.health()
    assert health.degraded and health.last_error_reason == store_backend.failing_reason
    assert store.count_events() == 10  # the failed batch left nothing behind
    store_backend.heal(store)
    store.write_batch(batch)
    assert store.count_events() == 310 and not store.health().degraded
    assert store.health().write_failures == 1


def test_a_locked_store_fails_after_the_busy_timeout(store_backend: Backend) -> None:
    with store_backend.open(busy_timeout_s=0.05) as store:
        with store_backend.write_lock_held():
            with pytest.raises(StoreWriteError) as failure:
                store.write_batch(make_records(5))
            assert failure.value.reason == "locked" and store.health().degraded
        store.write_batch(make_records(5))
        assert store.count_events() == 5 and not store.health().degraded


class _FailingConnection:
    """A connection whose bulk insert fails mid-transaction, like an I/O error would."""

    def __init__(self, real: Any, error: BaseException) -> None:
        self._real, self._error = real, error

    def executemany(self, *args: Any) -> Any:
        raise self._error

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failing_execute_rolls_back(
    store: BaseEventStore, store_backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = store._connection()
    monkeypatch.setattr(store, "_db", _FailingConnection(real, store_backend.io_error()))
    with pytest.raises(StoreWriteError) as failure:
        store.write_batch(make_records(20))
    assert failure.value.reason == store_backend.io_reason
    assert not store_backend.in_transaction(real)
    monkeypatch.setattr(store, "_db", real)
    assert store.count_events() == 0 and store.count_served() == 0


def test_a_store_that_cannot_open_is_degraded_not_fatal(store_backend: Backend) -> None:
    store = store_backend.unreachable()
    health = store.health()
    assert health.degraded and health.last_error_reason == "cannot_open"
    assert "hunter2" not in str(health.to_dict())  # a DSN's password never shows
    with pytest.raises(StoreWriteError) as failure:
        store.write_batch(make_records(1))
    assert failure.value.reason == "cannot_open" and "hunter2" not in str(failure.value)
    store.close()


# --- the recorder: sampling + store + accounting ----------------------------------------------


def test_recorder_accounts_for_every_event_even_when_the_store_fails(
    store: BaseEventStore, store_backend: Backend
) -> None:
    recorder = EventRecorder(store=store, sampler=Sampler(rate=0.2, seed=1), max_batch=64)
    window = make_records(400)
    recorder.accept(len(window))
    outcome = recorder.record(window, in_drift_window=False)
    assert outcome.stored + outcome.sampled_out == 400 and outcome.dropped == 0
    drifting = with_window(make_records(100, start=400), 3)
    recorder.accept(100)
    assert recorder.record(drifting, in_drift_window=True).stored == 100
    store_backend.fail_writes(store)
    failing = make_records(300, start=500, validation_flags=("too_dark",))  # all kept, none fit
    recorder.accept(300)
    outcome = recorder.record(failing, in_drift_window=False)
    reason = f"store_{store_backend.failing_reason}"
    assert outcome.dropped > 0 and outcome.drop_reason == reason
    recorder.accept(7)
    recorder.drop(7, reason="monitor_queue_full")
    snapshot = recorder.accounting()
    snapshot.check(settled=True)
    assert snapshot.stored == store.count_events()  # "stored" means committed, nothing else
    assert snapshot.dropped == {reason: outcome.dropped, "monitor_queue_full": 7}
    assert recorder.health().degraded is True


def test_recorder_stores_drift_results(store: BaseEventStore) -> None:
    from serve_drift.messages import DriftResult

    data = {k: v for k, v in _example_drift_dict().items() if k != "correlation_ids_sample"}
    recorder = EventRecorder(store=store, sampler=Sampler(rate=1.0))
    assert recorder.record_drift_results([DriftResult(**data)])
    assert store.drift_results()[0].test_id == "t-1"


def test_concurrent_writers_and_a_separate_reader(
    store: BaseEventStore, store_backend: Backend
) -> None:
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
    with store_backend.open() as reader:
        while any(t.is_alive() for t in threads):
            reader.recent(limit=10)
        for thread in threads:
            thread.join()
        assert not errors and store.count_events() == 1500 == reader.count_events()


def test_records_keep_their_weight_and_reason_in_the_store(store: BaseEventStore) -> None:
    kept = dataclasses.replace(make_record(1), sampling_weight=10.0, keep_reason="sampled")
    store.write_batch([kept])
    assert store.recent()[0].sampling_weight == 10.0 and store.recent()[0].keep_reason == "sampled"


# --- SQLite only: the file ---------------------------------------------------------------------


def test_sqlite_opens_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    with EventStore(tmp_path / "events.db") as store:
        db = sqlite3.connect(store.path)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.close()
        assert store._connection().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_sqlite_disk_full_fails_the_write_and_names_it(tmp_path: Path) -> None:
    with EventStore(tmp_path / "events.db") as store:
        store.write_batch(make_records(10))
        db = store._connection()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: "disk full"
        with pytest.raises(StoreWriteError) as failure:
            store.write_batch(make_records(300, start=10))
        health = store.health()
        assert failure.value.reason == "disk_full" == health.last_error_reason
        assert "full" in str(health.last_error) and store.count_events() == 10


def test_sqlite_retention_by_size_shrinks_the_file(tmp_path: Path) -> None:
    with EventStore(tmp_path / "e.db", max_age_s=None, max_bytes=None) as store:
        for start in range(0, 3000, 250):
            store.write_batch(make_records(250, start=start))
        before = store.size_bytes()
        store.max_bytes = 400_000
        assert store.enforce_retention().deleted_by_size > 0
        store._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)")
        assert os.path.getsize(store.path) <= 400_000 < before
        assert store.count_events() > 0


# --- PostgreSQL only: the server and its connections ------------------------------------------


def _terminate(server: PostgresServer, role: str) -> int:
    with server.admin() as db:
        found = db.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE usename = %s",
            (role,),
        ).fetchone()
    return int(found[0])


@pytest.fixture
def own_role(postgres_server: PostgresServer) -> Iterator[tuple[str, str, PostgresEventStore]]:
    """A store connecting as a role of its own (so a test can cut just its connections),
    holding 10 events: (role, DSN, store)."""
    role, dsn = postgres_server.new_role()
    with PostgresEventStore(dsn, schema=new_schema(), connect_timeout_s=2) as store:
        store.write_batch(make_records(10))
        yield role, dsn, store


def test_postgres_reconnects_after_its_connection_is_killed(
    postgres_server: PostgresServer, own_role: tuple[str, str, PostgresEventStore]
) -> None:
    role, _, store = own_role
    assert _terminate(postgres_server, role) == 1  # e.g. a server restart or failover
    # The write finds the connection gone, connects again and is retried once: committed.
    assert len(store.write_batch(make_records(10, start=10)).written_ids) == 10
    health = store.health()
    assert store.count_events() == 20 and health.reconnects == 1 and not health.degraded


def test_postgres_labels_on_a_lost_connection_fail_as_connection_lost(
    postgres_server: PostgresServer, own_role: tuple[str, str, PostgresEventStore]
) -> None:
    from serve_drift.eventlog.schema import LabelRecord

    role, _, store = own_role
    _terminate(postgres_server, role)
    label = LabelRecord(correlation_id="req-0", label=0, received_at=5000.0)
    # Not retried (a label committed before the loss would come back "duplicate"): it fails,
    # named for what happened, and the next call connects again.
    with pytest.raises(StoreWriteError) as failure:
        store.attach_labels([label])
    assert failure.value.reason == "connection_lost"
    assert [a.status for a in store.attach_labels([label])] == ["accepted"]
    assert store.health().reconnects == 1 and not store.health().degraded


def test_postgres_outage_degrades_counts_and_recovers(
    postgres_server: PostgresServer, own_role: tuple[str, str, PostgresEventStore]
) -> None:
    role, dsn, store = own_role
    password = dsn.split(":")[2].split("@")[0]
    with postgres_server.admin() as db:
        db.execute(f"ALTER ROLE {role} NOLOGIN")  # the server refuses this store from now
    _terminate(postgres_server, role)
    batch = make_records(50, start=10)
    for _ in range(2):
        with pytest.raises(StoreWriteError) as failure:
            store.write_batch(batch)
        assert failure.value.reason in ("connection_lost", "cannot_open")
        assert password not in str(failure.value)
    health = store.health()
    assert health.degraded and health.write_failures == 2 and password not in str(health)
    with pytest.raises(StoreError):
        store.count_events()
    with postgres_server.admin() as db:
        db.execute(f"ALTER ROLE {role} LOGIN")
    store.write_batch(batch)  # the retry of the lost batch: committed once
    assert store.count_events() == 60 and not store.health().degraded


def test_postgres_monitors_starting_together_create_one_schema(
    postgres_server: PostgresServer,
) -> None:
    schema, errors = new_schema(), []

    def start() -> None:
        with PostgresEventStore(postgres_server.dsn(), schema=schema) as opened:
            if opened.health().degraded:
                errors.append(opened.health().last_error)

    threads = [threading.Thread(target=start) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []


def test_open_store_chooses_the_backend(tmp_path: Path, postgres_server: PostgresServer) -> None:
    with open_store(path=tmp_path / "e.sqlite") as lite:
        assert isinstance(lite, EventStore)
    with open_store(dsn=postgres_server.dsn(), pg_schema=new_schema(), path="ignored") as pg:
        assert isinstance(pg, PostgresEventStore) and not pg.health().degraded
        assert postgres_server.password not in pg.location + repr(pg)


def test_reference_changes_are_kept_once_each_oldest_first(store: BaseEventStore) -> None:
    change = {
        "change_id": "c1",
        "at": 1.0,
        "outcome": "applied",
        "path": "r.npz",
        "from_hash": "sha256:a",
        "to_hash": "sha256:b",
        "changed_by": "alice",
    }
    again = {**change, "change_id": "c2", "at": 2.0}  # Serve re-applying the same user_config
    refused = {**change, "change_id": "c3", "at": 3.0, "outcome": "refused", "to_hash": "x"}
    assert store.write_reference_change(change) is True
    assert store.write_reference_change(again) is False
    assert store.write_reference_change(refused) is True
    assert [c["change_id"] for c in store.reference_changes()] == ["c1", "c3"]
    assert [c["change_id"] for c in store.reference_changes(limit=1)] == ["c3"]
