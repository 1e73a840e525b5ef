"""Reference-change records in the event store: who changed a monitor's reference, when, to what.

A table of its own beside the store's (created on first use), kept as JSON with a few indexed
columns; the records are what ``serve_drift.monitor.reference_swap.ReferenceChange.to_dict``
gives. Changes are kept forever (a handful per deployment), not subject to event retention.

A monitor restarted by Serve applies its last ``user_config`` again: a change identical to the
latest stored one (same path, hashes, outcome and author) is not stored twice.

>>> import tempfile, pathlib
>>> from serve_drift.eventlog.store import EventStore
>>> store = EventStore(pathlib.Path(tempfile.mkdtemp()) / "events.sqlite")
>>> change = {"change_id": "c1", "at": 1.0, "outcome": "applied", "path": "r.npz",
...           "from_hash": "sha256:a", "to_hash": "sha256:b", "changed_by": "alice"}
>>> again = {**change, "change_id": "c2", "at": 2.0}  # the same change, re-applied
>>> write_reference_change(store, change), write_reference_change(store, again)
(True, False)
>>> [c["changed_by"] for c in reference_changes(store)]
['alice']
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping
from typing import Any

from serve_drift.eventlog.store import EventStore

_TABLE = """
CREATE TABLE IF NOT EXISTS reference_changes (
    change_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    outcome TEXT NOT NULL,
    record TEXT NOT NULL
)
"""
# What makes two changes the same change, applied again.
_IDENTITY = ("path", "from_hash", "to_hash", "outcome", "changed_by")


def write_reference_change(store: EventStore, change: Mapping[str, Any]) -> bool:
    """Store one change; False when it repeats the latest stored one (not stored again).
    Raises ``StoreWriteError`` when the store fails."""
    record = json.dumps(dict(change), sort_keys=True)

    def work(db: sqlite3.Connection) -> bool:
        db.execute(_TABLE)
        latest = db.execute(
            "SELECT record FROM reference_changes ORDER BY at DESC, rowid DESC LIMIT 1"
        ).fetchone()
        if latest is not None and _same(json.loads(latest[0]), change):
            return False
        db.execute(
            "INSERT OR IGNORE INTO reference_changes (change_id, at, outcome, record) "
            "VALUES (?, ?, ?, ?)",
            (str(change["change_id"]), float(change["at"]), str(change["outcome"]), record),
        )
        return True

    return store._write("write reference change", work)


def reference_changes(store: EventStore, *, limit: int = 50) -> list[dict[str, Any]]:
    """Stored changes, oldest first (the latest ``limit``)."""

    def work(db: sqlite3.Connection) -> list[Any]:
        db.execute(_TABLE)
        sql = "SELECT record FROM reference_changes ORDER BY at DESC, rowid DESC LIMIT ?"
        return db.execute(sql, (max(0, limit),)).fetchall()

    rows = store._write("read reference changes", work)  # may create the table: a write
    return [json.loads(row[0]) for row in reversed(rows)]


def _same(stored: Mapping[str, Any], change: Mapping[str, Any]) -> bool:
    return all(stored.get(key) == change.get(key) for key in _IDENTITY)
