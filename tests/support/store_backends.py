"""The event-store backends as the contract suite drives them: open the test's store, make its
writes fail, hold its write lock from elsewhere, open one that cannot connect.

Both fail writes as a read-only store does (SQLite's ``query_only``, PostgreSQL's
``default_transaction_read_only``): what matters is that the write fails inside the store,
rolls back and is reported. (SQLite's full disk has a test of its own.)
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from serve_drift.eventlog.store import BaseEventStore, EventStore, PostgresEventStore
from tests.support.postgres import PostgresServer, new_schema
from tests.support.serve import free_port

BACKENDS = ("sqlite", "postgres")


class SqliteBackend:
    name = "sqlite"
    failing_reason = "read_only"
    io_reason = "error"  # io_error() is built by hand: it carries no SQLite error code

    def __init__(self, directory: Path) -> None:
        self.path = directory / "events.db"

    def open(self, **options: Any) -> EventStore:
        return EventStore(self.path, **options)

    def fail_writes(self, store: BaseEventStore) -> None:
        store._connection().execute("PRAGMA query_only = ON")

    def heal(self, store: BaseEventStore) -> None:
        store._connection().execute("PRAGMA query_only = OFF")

    @contextlib.contextmanager
    def write_lock_held(self) -> Iterator[None]:
        other = sqlite3.connect(self.path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another writer holds the lock
        try:
            yield
        finally:
            other.execute("ROLLBACK")
            other.close()

    def io_error(self) -> BaseException:
        return sqlite3.OperationalError("disk I/O error")

    def in_transaction(self, db: Any) -> bool:
        return bool(db.in_transaction)

    def unreachable(self) -> EventStore:
        (self.path.parent / "is-a-directory").mkdir()
        return EventStore(self.path.parent / "is-a-directory")


class PostgresBackend:
    name = "postgres"
    failing_reason = "read_only"
    io_reason = "io_error"

    def __init__(self, server: PostgresServer) -> None:
        self.server = server
        self.schema = new_schema()

    def open(self, **options: Any) -> PostgresEventStore:
        return PostgresEventStore(self.server.dsn(), schema=self.schema, **options)

    def fail_writes(self, store: BaseEventStore) -> None:
        store._connection().execute("SET default_transaction_read_only = on")

    def heal(self, store: BaseEventStore) -> None:
        store._connection().execute("SET default_transaction_read_only = off")

    @contextlib.contextmanager
    def write_lock_held(self) -> Iterator[None]:
        import psycopg

        with psycopg.connect(self.server.dsn()) as other:  # a transaction until rollback
            other.execute(f'LOCK TABLE "{self.schema}".served_requests IN EXCLUSIVE MODE')
            yield
            other.rollback()

    def io_error(self) -> BaseException:
        from psycopg.errors import IoError  # SQLSTATE 58030: the server's own I/O failure

        return IoError("could not write to file: I/O error")

    def in_transaction(self, db: Any) -> bool:
        from psycopg.pq import TransactionStatus

        return bool(db.conn.info.transaction_status != TransactionStatus.IDLE)

    def unreachable(self) -> PostgresEventStore:
        dsn = f"postgresql://nobody:hunter2-secret@127.0.0.1:{free_port()}/none"
        return PostgresEventStore(dsn, schema=self.schema, connect_timeout_s=2)
