"""SIGKILL the writer at random moments, repeatedly: the store must open cleanly afterwards
with every event that was reported written present exactly once."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from serve_drift.eventlog.store import EventStore
from tests.support.eventlog_helpers import make_records

ROOT = Path(__file__).resolve().parents[3]
KILLS = 6


def _run_and_kill(db: Path, run: int, rng: random.Random) -> tuple[set[str], int]:
    """Start a writer, let it commit for a random while, SIGKILL it; ids it reported, lines."""
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.support.eventlog_crash_writer", str(db), str(run)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    ready = process.stdout.readline()
    assert ready.strip() == "READY", process.stderr.read() if process.stderr else ready
    # A committed line first (so every run reports something), then a random extra delay: the
    # kill then lands anywhere in the loop, mostly inside a transaction or an fsync.
    first = process.stdout.readline()
    time.sleep(rng.uniform(0.0, 0.4))
    os.kill(process.pid, signal.SIGKILL)
    rest, _ = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGKILL
    committed: set[str] = set()
    lines = [first, *rest.splitlines(keepends=True)]
    complete = [line for line in lines if line.endswith(" END\n")]
    for line in complete:
        committed.update(line.removeprefix("COMMITTED ").removesuffix(" END\n").split(","))
    return committed, len(complete)


def test_repeated_sigkill_loses_nothing_that_was_reported_written(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    rng = random.Random(20260301)
    reported: set[str] = set()
    batches = 0
    for run in range(KILLS):
        committed, lines = _run_and_kill(db, run, rng)
        reported |= committed
        batches += lines
    assert batches >= KILLS  # the writer really committed before each kill

    check = sqlite3.connect(db)
    assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    stored = [row[0] for row in check.execute("SELECT internal_id FROM inference_events")]
    check.close()
    assert len(stored) == len(set(stored)), "an event was stored twice"
    missing = reported - set(stored)
    assert not missing, f"{len(missing)} events reported written are missing"

    with EventStore(db) as store:  # and the store is usable again
        store.write_batch(make_records(10, start=10**12))
        assert store.count_events() == len(stored) + 10
        assert not store.health().degraded
