"""Writes event batches forever; prints each committed batch's ids after the commit returns.

Run as ``python -m tests.support.eventlog_crash_writer DB RUN`` (SQLite) or
``python -m tests.support.eventlog_crash_writer DSN RUN SCHEMA`` (PostgreSQL);
``tests/unit/eventlog/test_crash.py`` kills it with SIGKILL at random moments. Every third
batch also re-sends the previous one, as a monitor retrying after a timeout would, to exercise
exactly-once storage under kills.
"""

from __future__ import annotations

import random
import sys
import types
from pathlib import Path


def _light_package() -> None:
    # serve_drift/__init__.py imports Ray Serve and torch (~2 s per start); the event log needs
    # neither. A bare package object lets the subpackages import without running it, so the
    # test can restart this writer many times quickly.
    package = types.ModuleType("serve_drift")
    package.__path__ = [str(Path(__file__).resolve().parents[2] / "serve_drift")]
    sys.modules.setdefault("serve_drift", package)


_light_package()

from serve_drift.eventlog.store import open_store  # noqa: E402
from tests.support.eventlog_helpers import make_record  # noqa: E402


def main() -> None:
    target, run = sys.argv[1], int(sys.argv[2])
    rng = random.Random(run)
    if target.startswith("postgresql://"):
        store = open_store(dsn=target, pg_schema=sys.argv[3], retention_interval_s=3600.0)
    else:
        store = open_store(path=target, retention_interval_s=3600.0)
    if store.health().degraded:
        raise SystemExit(f"cannot open the store: {store.health().last_error}")
    print("READY", flush=True)
    previous: list = []
    for batch_number in range(10**9):
        start = (run * 10_000_000) + batch_number * 1000
        batch = [make_record(start + i) for i in range(rng.randint(64, 256))]
        if batch_number % 3 == 2:
            batch = previous + batch  # a retry of the last batch, plus new records
        receipt = store.write_batch(batch)
        ids = receipt.written_ids + receipt.already_present_ids
        # One line per commit, terminated by END: a line cut by SIGKILL is recognisably partial.
        sys.stdout.write("COMMITTED " + ",".join(ids) + " END\n")
        sys.stdout.flush()
        previous = batch[-64:]


if __name__ == "__main__":
    main()
