"""``serve-drift events``: read the event store from a shell.

Subcommands (``list`` is the default)::

    serve-drift events [list] [--correlation-id ID] [--since 15m] [--until ISO]
                              [--model-version V] [--flagged] [--window N] [--limit 50]
    serve-drift events drift     [--window N] [--limit 50]      drift test results
    serve-drift events metrics   [--tag sentinel] [--limit 50]  accuracy/F1/ECE records
    serve-drift events health                                   store health and size

Every subcommand takes ``--db PATH`` (default ``$SERVE_DRIFT_EVENT_DB``, else the only store
under ``$SERVE_DRIFT_CACHE_DIR/events/``) or ``--dsn DSN`` (PostgreSQL; default
``$SERVE_DRIFT_EVENTS_DSN`` when no ``--db`` is given) with ``--pg-schema NAME`` (default: the
only schema there that holds a store), and ``--format table|jsonl``. Times: ISO 8601
(``2026-03-01``,
``2026-03-01T12:00:00+01:00``; no zone means UTC), Unix seconds, or relative to now
(``30s``, ``15m``, ``2h``, ``7d``, ``1w``).

>>> parse_time("15m", now=1000.0)
100.0
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from serve_drift import _env
from serve_drift.eventlog.schema import ConceptMetricsRecord, DriftTestRecord, InferenceRecord
from serve_drift.eventlog.store import (
    BaseEventStore,
    EventQuery,
    EventStore,
    PostgresEventStore,
    StoreError,
    redact_dsn,
    store_schemas,
)

__all__ = ["add_store_arguments", "default_db_path", "main", "open_cli_store", "parse_time"]

_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_SUBCOMMANDS = ("list", "drift", "metrics", "health")


def default_db_path() -> Path:
    """``$SERVE_DRIFT_EVENT_DB``; else the only store in the monitors' default folder
    (``$SERVE_DRIFT_CACHE_DIR/events/<app>/<monitor>.sqlite``); else ``model.sqlite`` there."""
    explicit = _env.event_db()
    if explicit is not None:
        return explicit
    stores = sorted(_env.event_db_dir().rglob("*.sqlite"))
    return stores[0] if len(stores) == 1 else _env.event_db_dir() / "model.sqlite"


def add_store_arguments(parser: argparse.ArgumentParser) -> None:
    """``--db``, ``--dsn`` and ``--pg-schema``: which store a command reads."""
    parser.add_argument(
        "--db",
        type=Path,
        default=None,
        help="SQLite event store file (default: $SERVE_DRIFT_EVENT_DB, else the only store under "
        "$SERVE_DRIFT_CACHE_DIR/events/)",
    )
    parser.add_argument(
        "--dsn",
        default=None,
        help="PostgreSQL event store, e.g. postgresql://user@host:5432/db (default: "
        "$SERVE_DRIFT_EVENTS_DSN unless --db is given; the password may come from PGPASSWORD)",
    )
    parser.add_argument(
        "--pg-schema", default=None, help="the monitor's schema (default: the only one there)"
    )


def open_cli_store(args: argparse.Namespace) -> BaseEventStore:
    """The store ``--db`` or ``--dsn`` (or the environment) names, opened without retention;
    ``SystemExit`` with a message (no password in it) when there is none."""
    dsn = None if args.db else (args.dsn or _env.events_dsn())
    if dsn:
        return open_store(dsn=dsn, pg_schema=args.pg_schema)
    return open_store(db=args.db or default_db_path())


def open_store(
    *, db: Path | None = None, dsn: str | None = None, pg_schema: str | None = None
) -> BaseEventStore:
    """The PostgreSQL store at ``dsn`` (in ``pg_schema``, or the only schema holding one), else
    the SQLite file ``db``, which must exist; opened without retention, to read. ``SystemExit``
    with a message (no password in it) when there is none."""
    if dsn:
        return PostgresEventStore(
            dsn, schema=_schema(dsn, pg_schema), max_age_s=None, max_bytes=None
        )
    if db is None or not db.exists():
        raise SystemExit(
            f"no event store at {db} (the monitor creates it; choose one with --db or --dsn)"
        )
    return EventStore(db, max_age_s=None, max_bytes=None)


def _schema(dsn: str, asked: str | None) -> str:
    try:
        found = store_schemas(dsn)
    except StoreError as exc:
        raise SystemExit(f"event store {redact_dsn(dsn)}: {exc}") from None
    if asked in found or (asked is None and len(found) == 1):
        return asked or found[0]
    where = f"in schema {asked}" if asked else "chosen (several schemas; give --pg-schema)"
    raise SystemExit(
        f"no event store {where} at {redact_dsn(dsn)}; schemas holding one: "
        f"{', '.join(found) or 'none'}"
    )


def parse_time(text: str, *, now: float | None = None) -> float:
    """Unix seconds from ISO 8601, Unix seconds, or a duration ago (``15m``)."""
    current = time.time() if now is None else now
    if match := _RELATIVE.match(text):
        return current - float(match.group(1)) * _UNITS_S[match.group(2)]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: use ISO 8601, Unix seconds, or e.g. 15m, 2h, 7d"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.timestamp()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve-drift events", description="Query the event store."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    add_store_arguments(common)
    common.add_argument("--format", choices=("table", "jsonl"), default="table")
    listing = commands.add_parser("list", parents=[common], help="inference events, newest first")
    listing.add_argument("--correlation-id")
    listing.add_argument("--since", type=parse_time, help="ISO time, Unix seconds, or e.g. 15m")
    listing.add_argument("--until", type=parse_time)
    listing.add_argument("--model-version")
    listing.add_argument("--flagged", action="store_true", help="only events with validation flags")
    listing.add_argument("--window", type=int, help="only events of this drift window")
    listing.add_argument("--limit", type=int, default=50)
    drift = commands.add_parser("drift", parents=[common], help="drift test results, newest first")
    drift.add_argument("--window", type=int)
    drift.add_argument("--limit", type=int, default=50)
    metrics = commands.add_parser("metrics", parents=[common], help="concept-drift metrics records")
    metrics.add_argument("--tag", help="feedback or sentinel (default: both)")
    metrics.add_argument("--limit", type=int, default=50)
    commands.add_parser("health", parents=[common], help="store health, size and row count")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; the main CLI mounts it as ``serve-drift events``. Returns the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    if not args_list or args_list[0] not in (*_SUBCOMMANDS, "-h", "--help"):
        args_list.insert(0, "list")  # `serve-drift events --flagged`: `events list --flagged`
    args = _parser().parse_args(args_list)
    try:
        store = open_cli_store(args)
    except SystemExit as exc:
        print(exc, file=sys.stderr)
        return 1
    try:
        with store:
            _COMMANDS[args.command](store, args)
    except StoreError as exc:
        print(f"event store {store.location}: {exc}", file=sys.stderr)
        return 1
    return 0


def _list(store: BaseEventStore, args: argparse.Namespace) -> None:
    query = EventQuery(
        limit=args.limit,
        correlation_id=args.correlation_id,
        since=args.since,
        until=args.until,
        model_version=args.model_version,
        flagged_only=args.flagged,
        drift_window=args.window,
    )
    _print(store.query(query), args.format, _EVENT_COLUMNS)


def _drift(store: BaseEventStore, args: argparse.Namespace) -> None:
    _print(
        store.drift_results(limit=args.limit, window_index=args.window), args.format, _DRIFT_COLUMNS
    )


def _metrics(store: BaseEventStore, args: argparse.Namespace) -> None:
    _print(store.concept_metrics(limit=args.limit, tag=args.tag), args.format, _METRICS_COLUMNS)


def _health(store: BaseEventStore, args: argparse.Namespace) -> None:
    health = {**store.health().to_dict(), "events": store.count_events()}
    if args.format == "jsonl":
        print(json.dumps(health))
    else:
        for key, value in health.items():
            print(f"{key:22} {value}")


_COMMANDS: dict[str, Callable[[BaseEventStore, argparse.Namespace], None]] = {
    "list": _list,
    "drift": _drift,
    "metrics": _metrics,
    "health": _health,
}


# --- output -----------------------------------------------------------------------------------

Column = tuple[str, Callable[[Any], object]]


def _when(unix_s: float | None) -> str:
    if unix_s is None:
        return "-"
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def _num(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _opt(value: object) -> str:
    return "-" if value is None else str(value)


_EVENT_COLUMNS: list[Column] = [
    ("time (UTC)", lambda r: _when(r.timestamp)),
    ("correlation_id", lambda r: r.correlation_id),
    ("model_version", lambda r: r.model_version),
    ("class", lambda r: _opt(r.outputs.predicted_class)),
    ("conf", lambda r: _num(r.outputs.confidence)),
    ("window", lambda r: _opt(r.drift_window)),
    ("flags", lambda r: ",".join(r.validation_flags) or "-"),
    ("kept", lambda r: _opt(r.keep_reason)),
    ("weight", lambda r: _num(r.sampling_weight, 1)),
    ("context", lambda r: " ".join(f"{k}={v}" for k, v in r.context.items()) or "-"),
]
_DRIFT_COLUMNS: list[Column] = [
    ("tested (UTC)", lambda r: _when(r.tested_at)),
    ("window", lambda r: r.window_index),
    ("model_version", lambda r: r.model_version),
    ("detector", lambda r: f"{r.detector}/{r.backend}"),
    ("p", lambda r: _num(r.p_value)),
    ("distance", lambda r: _num(r.distance, 4)),
    ("drift", lambda r: "DRIFT" if r.is_drift else "ok"),
]
_METRICS_COLUMNS: list[Column] = [
    ("computed (UTC)", lambda r: _when(r.computed_at)),
    ("tag", lambda r: r.tag),
    ("window", lambda r: _opt(r.window_index)),
    ("model_version", lambda r: r.model_version),
    ("n", lambda r: r.metrics.n_labelled),
    ("accuracy", lambda r: _num(r.metrics.accuracy)),
    ("f1_macro", lambda r: _num(r.metrics.f1_macro)),
    ("ece", lambda r: _num(r.metrics.ece)),
]


def _print(
    records: Sequence[InferenceRecord | DriftTestRecord | ConceptMetricsRecord],
    fmt: str,
    columns: list[Column],
) -> None:
    if fmt == "jsonl":
        for record in records:
            print(record.to_json())
        return
    print(
        _table(
            [name for name, _ in columns], [[str(get(r)) for _, get in columns] for r in records]
        )
    )
    if not records:
        print("(no records)")


def _table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in (headers, *rows)
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
