"""The event store on a PostgreSQL server, for clusters: a monitor rescheduled to another node
finds its record where it left it.

Chosen by a DSN (``events.dsn`` in the drift config, or ``SERVE_DRIFT_EVENTS_DSN``). Each monitor
keeps its tables in a schema of its own (``events.pg_schema``, by default derived from the app
and the monitor's name, like the SQLite file's path), created and migrated on open under an
advisory lock, so monitors starting together do not race. Needs the ``postgres`` extra
(``pip install 'serve-drift[postgres]'``: psycopg 3).

**Durability.** A write returns after the server's COMMIT, which with the server's default
``synchronous_commit=on`` has flushed the WAL: the same promise as SQLite's ``FULL``.

**Connection loss.** The store marks itself degraded and raises
:class:`~serve_drift.eventlog.store.contract.StoreWriteError` (``connection_lost``, or
``cannot_open`` while the server refuses connections); the next operation connects again
(:attr:`StoreHealth.reconnects` counts it). An idempotent write that finds its connection lost is
retried once on a fresh one. If the connection drops during COMMIT the server may have committed
anyway: the write is still reported failed (its events counted dropped, never claimed written),
and any retry finds the ids already present.

**Size.** ``size_bytes`` is what the schema's tables take on the server (indexes and TOAST
included). Retention by size bounds the rows' data (``pg_column_size``; measured only when the
tables take more than ``max_bytes``), then ``VACUUM`` makes the freed space reusable.

**Secrets.** The DSN's password never appears in health, errors or logs (see :attr:`location`).

>>> redact_dsn("postgresql://monitor:s3cret@db.internal:5432/events")
'postgresql://monitor@db.internal:5432/events'
>>> scrub("connect to postgresql://monitor:s3cret@db/events failed")
'connect to postgresql://monitor:***@db/events failed'
>>> schema_for(app="digits", monitor="ClassifierDriftMonitor")
'sd_digits__classifierdriftmonitor'
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable
from typing import Any, TypeVar

from serve_drift.eventlog.store import sql
from serve_drift.eventlog.store.base import BaseEventStore
from serve_drift.eventlog.store.contract import (
    DEFAULT_MAX_AGE_S,
    DEFAULT_MAX_BYTES,
    StoreConfigError,
    StoreError,
)
from serve_drift.eventlog.store.migrations import LAYOUT_VERSION, create_schema, layout_version
from serve_drift.eventlog.store.sql import POSTGRES

T = TypeVar("T")

DEFAULT_SCHEMA = "serve_drift"
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
# SQLSTATE classes and codes, as reasons (https://www.postgresql.org/docs/current/errcodes-appendix.html)
_REASONS = {
    "53100": "disk_full",
    "55P03": "locked",
    "40P01": "locked",
    "25006": "read_only",
    "57014": "timeout",
    "58030": "io_error",
    "XX001": "corrupt",
    "XX002": "corrupt",
}
_LOST_CLASSES = ("08", "57P")  # connection exception; operator intervention (shutdown, kill)


def redact_dsn(dsn: str) -> str:
    """The DSN as a URL without its password (safe to log)."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        parts = conninfo_to_dict(dsn)
    except Exception:  # never echo a DSN that does not parse: it may hold the password
        return "postgresql://(unparsable DSN)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = str(parts.get("host") or "localhost")
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname') or ''}"


def scrub(text: str) -> str:
    """``text`` with anything shaped like a password in a DSN replaced by ``***``."""
    text = re.sub(r"(password\s*=\s*)('[^']*'|\S+)", r"\1***", text, flags=re.IGNORECASE)
    return re.sub(r"(postgres(?:ql)?://[^:/@\s]*):[^@\s]*@", r"\1:***@", text)


def schema_for(*, app: str, monitor: str) -> str:
    """A schema name of one monitor's store: lower case, ``[a-z0-9_]``, at most 63 characters."""
    name = re.sub(r"[^a-z0-9_]", "_", f"sd_{app}__{monitor}".lower())
    if len(name) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:54]}_{digest}"


@functools.lru_cache(maxsize=512)
def _placeholders(statement: str) -> str:
    return statement.replace("?", "%s")  # the SQL in sql.py has no other "?" and no "%"


class _Connection:
    """A psycopg connection (autocommit; writes open explicit transactions) that takes the
    ``?`` placeholders of :mod:`~serve_drift.eventlog.store.sql`."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    def execute(self, statement: str, params: Any = (), /) -> Any:
        return self.conn.execute(_placeholders(statement), tuple(params) or None)

    def executemany(self, statement: str, rows: Any, /) -> Any:
        cursor = self.conn.cursor()
        cursor.executemany(_placeholders(statement), rows)
        return cursor

    def close(self) -> None:
        self.conn.close()


class PostgresEventStore(BaseEventStore):
    """The event store in one schema of a PostgreSQL database.

    ``busy_timeout_s`` becomes the server's ``lock_timeout``; a statement running longer than
    ``statement_timeout_s`` is cancelled (``timeout``), so a stuck server cannot hold the
    monitor's writer forever.
    """

    dialect = POSTGRES
    backend = "postgres"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = DEFAULT_SCHEMA,
        max_age_s: float | None = DEFAULT_MAX_AGE_S,
        max_bytes: int | None = DEFAULT_MAX_BYTES,
        busy_timeout_s: float = 5.0,
        retention_interval_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        statement_timeout_s: float = 30.0,
    ) -> None:
        if not _SCHEMA_NAME.match(schema):
            raise StoreConfigError(f"schema must match {_SCHEMA_NAME.pattern}, got {schema!r}")
        try:
            import psycopg
        except ImportError:
            raise StoreConfigError(
                "the PostgreSQL event store needs psycopg 3: pip install 'serve-drift[postgres]'"
            ) from None
        super().__init__(
            max_age_s=max_age_s,
            max_bytes=max_bytes,
            busy_timeout_s=busy_timeout_s,
            retention_interval_s=retention_interval_s,
        )
        self._errors = (psycopg.Error, OSError, StoreError)
        self._dsn = dsn
        self._secret = _password(dsn)
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.statement_timeout_s = statement_timeout_s
        self._size = 0
        self._open_now()

    def __enter__(self) -> PostgresEventStore:
        return self

    def __repr__(self) -> str:
        return f"PostgresEventStore({self.location!r})"

    @property
    def location(self) -> str:
        return f"{redact_dsn(self._dsn)}#{self.schema}"

    # --- connecting ---------------------------------------------------------------------------

    def _open(self) -> _Connection:
        import psycopg

        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                connect_timeout=max(1, round(self.connect_timeout_s)),
                application_name="serve-drift",
            )
        except psycopg.Error as exc:
            raise StoreError("cannot_open", self._describe(exc)) from None
        db = _Connection(conn)
        try:
            self._prepare(db)
        except BaseException:
            db.close()
            raise
        return db

    def _prepare(self, db: _Connection) -> None:
        for name, value_s in (
            ("lock_timeout", self.busy_timeout_s),
            ("statement_timeout", self.statement_timeout_s),
        ):
            db.execute("SELECT set_config(?, ?, false)", (name, f"{round(value_s * 1000)}ms"))
        db.execute("SELECT set_config('search_path', ?, false)", (f'"{self.schema}"',))
        if not self._needs_migration(db):
            # No DDL at all: CREATE INDEX IF NOT EXISTS takes table locks even when the index
            # exists, and would deadlock with a monitor writing to the same schema.
            self._size = _table_bytes(db, self.schema)
            return
        with db.conn.transaction():
            # One opener at a time per schema: CREATE ... IF NOT EXISTS races otherwise.
            db.execute("SELECT pg_advisory_xact_lock(hashtext(?))", (f"serve-drift:{self.schema}",))
            exists = db.execute("SELECT 1 FROM pg_namespace WHERE nspname = ?", (self.schema,))
            if exists.fetchone() is None:
                db.execute(f'CREATE SCHEMA "{self.schema}"')
            create_schema(db, POSTGRES)
        self._size = _table_bytes(db, self.schema)

    def _needs_migration(self, db: _Connection) -> bool:
        found = db.execute("SELECT tablename FROM pg_tables WHERE schemaname = ?", (self.schema,))
        if not set(sql.TABLES) <= {row[0] for row in found.fetchall()}:
            return True
        return layout_version(db) != LAYOUT_VERSION  # newer: create_schema refuses it

    def _transaction(self, db: _Connection, work: Callable[[_Connection], T]) -> T:
        with db.conn.transaction():
            return work(db)

    # --- failures -----------------------------------------------------------------------------

    def _lost(self, exc: BaseException) -> bool:
        import psycopg

        db = self._db
        if db is not None and (db.conn.broken or db.conn.closed):
            return True
        state = str(getattr(exc, "sqlstate", "") or "")
        # The server names every error it answers with; one without a SQLSTATE is the client
        # library's own: the connection failed ("server closed the connection unexpectedly").
        return state.startswith(_LOST_CLASSES) or (
            isinstance(exc, psycopg.OperationalError) and not state
        )

    def _reason(self, exc: BaseException) -> str:
        if isinstance(exc, StoreError):
            return exc.reason
        state = str(getattr(exc, "sqlstate", "") or "")
        if state in _REASONS:
            return _REASONS[state]
        return "connection_lost" if self._lost(exc) else "error"

    def _describe(self, exc: BaseException) -> str:
        text = scrub(super()._describe(exc).strip())
        return text.replace(self._secret, "***") if self._secret else text

    # --- size ---------------------------------------------------------------------------------

    def _used_bytes(self, db: _Connection) -> int:
        on_disk = _table_bytes(db, self.schema)
        if self.max_bytes is None or on_disk <= self.max_bytes:
            return on_disk  # the rows' data cannot be more than what the tables take
        return sum(
            int(
                db.execute(
                    f"SELECT coalesce(sum(pg_column_size(t.*)), 0) FROM {table} t"
                ).fetchone()[0]
            )
            for table in sql.TABLES
        )

    def _vacuum(self, db: _Connection) -> None:
        # Plain VACUUM (no exclusive lock): freed space is reused by the next writes at once
        # rather than when autovacuum comes by; it is not given back to the file system.
        db.execute("VACUUM inference_events, served_requests")

    def _measure_size(self) -> int:
        try:
            self._size = _table_bytes(self._connection(), self.schema)
        except self._errors as exc:
            raise self._as_store_error("size", exc, StoreError) from exc
        return self._size

    def size_bytes(self) -> int:
        """Bytes the schema's tables take on the server, as last measured (on open and at each
        retention check): health must not wait for the server."""
        return self._size

    def _synchronous(self) -> str:
        return "server (synchronous_commit)"


def store_schemas(dsn: str, *, connect_timeout_s: float = 5.0) -> list[str]:
    """The schemas of this database that hold an event store (for ``serve-drift events``).

    Raises :class:`StoreError` (``cannot_open``, password removed) when it cannot connect.
    """
    import psycopg

    secret = _password(dsn)
    try:
        with psycopg.connect(dsn, connect_timeout=max(1, round(connect_timeout_s))) as db:
            rows = db.execute(
                "SELECT schemaname FROM pg_tables WHERE tablename = 'inference_events' "
                "ORDER BY schemaname"
            ).fetchall()
    except psycopg.Error as exc:
        message = scrub(f"{type(exc).__name__}: {exc}")
        text = message.replace(secret, "***") if secret else message
        raise StoreError("cannot_open", text) from None
    return [str(row[0]) for row in rows]


def _table_bytes(db: _Connection, schema: str) -> int:
    found = db.execute(
        "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = ? AND c.relkind = 'r'",
        (schema,),
    ).fetchone()
    return int(found[0])


def _password(dsn: str) -> str:
    try:
        from psycopg.conninfo import conninfo_to_dict

        return str(conninfo_to_dict(dsn).get("password") or "")
    except Exception:
        return ""
