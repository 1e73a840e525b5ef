"""SIGKILL the writer at random moments, repeatedly, on both backends: the store must open
cleanly afterwards with every event that was reported written present exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from serve_drift.eventlog.store import BaseEventStore
from tests.support.eventlog_helpers import make_records
from tests.support.store_backends import PostgresBackend, SqliteBackend

ROOT = Path(__file__).resolve().parents[3]
KILLS = 6


def _writer_args(backend: SqliteBackend | PostgresBackend) -> list[str]:
    if isinstance(backend, SqliteBackend):
        return [str(backend.path)]
    return [backend.server.dsn(), "RUN", backend.schema]


def _run_and_kill(
    backend: SqliteBackend | PostgresBackend, run: int, rng: random.Random
) -> tuple[set[str], int]:
    """Start a writer, let it commit for a random while, SIGKILL it; ids it reported, lines."""
    target, *rest_args = _writer_args(backend)
    args = [target, str(run), *rest_args[1:]]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.eventlog_crash_writer", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready.strip() == "READY", process.stderr.read() if process.stderr else ready
    # A committed line first (so every run reports something), then a random extra delay: the
    # kill then lands anywhere in the loop, mostly inside a transaction or a commit.
    first = process.stdout.readline()
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(process.pid, signal.SIGKILL)
    # Through the same text stream as `first`: communicate() would read the pipe beneath it and
    # skip what the stream had already buffered, starting the rest mid-line.
    rest = process.stdout.read()
    process.wait(timeout=30)
    process.stdout.close()
    if process.stderr is not None:
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    committed: set[str] = set()
    lines = [first, *rest.splitlines(keepends=True)]
    complete = [line for line in lines if line.startswith("COMMITTED ") and line.endswith(" END\n")]
    for line in complete:
        committed.update(line.removeprefix("COMMITTED ").removesuffix(" END\n").split(","))
    return committed, len(complete)


def _stored_ids(store: BaseEventStore) -> list[str]:
    rows = store._connection().execute("SELECT internal_id FROM inference_events").fetchall()
    return [row[0] for row in rows]


def test_repeated_sigkill_loses_nothing_that_was_reported_written(
    store_backend: SqliteBackend | PostgresBackend,
) -> None:
    rng = random.Random(20260301)
    reported: set[str] = set()
    batches = 0
    for run in range(KILLS):
        committed, lines = _run_and_kill(store_backend, run, rng)
        reported |= committed
        batches += lines
    assert batches >= KILLS  # the writer really committed before each kill

    if isinstance(store_backend, SqliteBackend):
        check = sqlite3.connect(store_backend.path)
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        check.close()
    with store_backend.open() as store:  # and the store is usable again
        stored = _stored_ids(store)
        assert len(stored) == len(set(stored)), "an event was stored twice"
        missing = reported - set(stored)
        assert not missing, f"{len(missing)} events reported written are missing"
        store.write_batch(make_records(10, start=10**12))
        assert store.count_events() == len(stored) + 10
        assert not store.health().degraded
