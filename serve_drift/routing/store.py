"""The comparator's record: comparison windows and every routing change, in one SQLite file.

It is the shadow app's own file (``comparison.path``, default
``$SERVE_DRIFT_CACHE_DIR/shadow/<name>.sqlite``), written only by the comparator, in WAL mode:

- ``shadow_windows``: one row per window (updated when late labels or drift results join it),
  the window as JSON (:class:`~serve_drift.routing.windows.WindowRecord`);
- ``routing_changes``: append-only, one row per promotion, rollback or resumption, with the
  evidence and both arms' model versions and artifact hashes
  (:class:`~serve_drift.routing.messages.RoutingChange`). The latest row is where traffic
  goes, so a restarted comparator (and every router replica) continues in that state.

``meta.schema_version`` versions both record layouts (1); a file written by a newer layout is
refused rather than misread.

>>> import tempfile, pathlib
>>> with ComparisonStore(pathlib.Path(tempfile.mkdtemp()) / "s.sqlite") as store:
...     store.routing_state("shadow").epoch
0
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from serve_drift.errors import ServeDriftError
from serve_drift.routing.messages import RoutingChange, RoutingState
from serve_drift.routing.windows import WindowRecord

SCHEMA_VERSION = 1
T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS shadow_windows (
    router TEXT NOT NULL,
    window_index INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    opened_at REAL NOT NULL,
    closed_at REAL,
    record TEXT NOT NULL,
    PRIMARY KEY (router, window_index)
);
CREATE TABLE IF NOT EXISTS routing_changes (
    change_id TEXT PRIMARY KEY,
    router TEXT NOT NULL,
    at REAL NOT NULL,
    action TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS routing_changes_at ON routing_changes (router, at)
"""


class ComparisonStoreError(ServeDriftError, OSError):
    """The comparison store could not be opened, read or written."""

    code = "comparison_store_failed"


class ComparisonStore:
    """Thread-safe: one connection behind a lock (the comparator writes from a worker thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = _open(self.path)
        except sqlite3.Error as exc:
            raise ComparisonStoreError(f"cannot open {self.path}: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ComparisonStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def save_window(self, router: str, record: WindowRecord) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT OR REPLACE INTO shadow_windows VALUES (?, ?, ?, ?, ?, ?)",
                (
                    router,
                    record.index,
                    record.epoch,
                    record.opened_at,
                    record.closed_at,
                    json.dumps(record.to_dict(), allow_nan=False),
                ),
            )
        )

    def windows(self, router: str, *, limit: int = 100) -> list[WindowRecord]:
        """The latest ``limit`` windows, oldest first."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT record FROM shadow_windows WHERE router = ? "
                "ORDER BY window_index DESC LIMIT ?",
                (router, limit),
            ).fetchall()
        )
        return [WindowRecord.from_dict(json.loads(row[0])) for row in reversed(rows)]

    def next_window_index(self, router: str) -> int:
        row = self._run(
            lambda db: db.execute(
                "SELECT MAX(window_index) FROM shadow_windows WHERE router = ?", (router,)
            ).fetchone()
        )
        return 0 if row[0] is None else int(row[0]) + 1

    def add_change(self, router: str, change: RoutingChange) -> None:
        self._run(
            lambda db: db.execute(
                "INSERT INTO routing_changes VALUES (?, ?, ?, ?, ?)",
                (
                    change.change_id,
                    router,
                    change.at,
                    change.action,
                    json.dumps(change.to_dict(), allow_nan=False),
                ),
            )
        )

    def changes(self, router: str, *, limit: int = 50) -> list[RoutingChange]:
        """The latest ``limit`` changes, oldest first."""
        rows = self._run(
            lambda db: db.execute(
                "SELECT record FROM routing_changes WHERE router = ? ORDER BY at DESC, rowid DESC "
                "LIMIT ?",
                (router, limit),
            ).fetchall()
        )
        return [RoutingChange.from_dict(json.loads(row[0])) for row in reversed(rows)]

    def routing_state(self, router: str) -> RoutingState:
        """Where the latest recorded change sent traffic (the configured routing if none)."""
        latest = self.changes(router, limit=1)
        return latest[0].after if latest else RoutingState()

    def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        with self._lock:
            try:
                with self._db:  # one transaction: committed, or rolled back on error
                    return work(self._db)
            except sqlite3.Error as exc:
                raise ComparisonStoreError(f"{self.path}: {exc}") from exc


def _open(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=5.0, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        with db:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            _check_version(db)
    except BaseException:
        db.close()
        raise
    return db


def _check_version(db: sqlite3.Connection) -> None:
    found: Any = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    if found is not None and int(found[0]) > SCHEMA_VERSION:
        raise ComparisonStoreError(
            f"comparison store has schema version {found[0]}; this code knows {SCHEMA_VERSION}"
        )
    db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
