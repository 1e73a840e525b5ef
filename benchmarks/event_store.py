"""Load test of the event-store path as the drift monitor uses it (issue 5).

Replicas deliver batches of 64-256 events; the monitor accepts them, fills windows (default
200), and after each window's drift test decides per event: every flagged (~5 %) and
low-confidence (~5 %) event is stored, every event of a drifting window (1 in 10 here) is
stored, and the rest is sampled at ``--rate`` (0.1) with weight 1/rate. Kept records go to
SQLite (WAL) in one transaction per window. Records are realistic ``InferenceRecord`` objects
(224x224 RGB input statistics, top-5, context, trace ids); building them is not timed, the
recorder's path (sampling, serialisation, commit, accounting) is.

Prints: events accepted and written per second; commit latency; bytes per stored event and the
store's size per million events, *extrapolated* from the measured bytes per event; the
re-estimated request count from sampling weights; and the accounting invariant
(stored + sampled out + dropped = accepted), checked against the rows actually in the file.
Run for both SQLite ``synchronous`` modes to see what FULL durability costs, and against
PostgreSQL (issue 15): a real server this script starts itself, as the tests do (Debian's
``postgresql`` binaries, ``initdb`` into a temporary folder, 127.0.0.1 and a free port, run as
an unprivileged user when root, stopped afterwards), with ``fsync`` and ``synchronous_commit``
on, the durability the store promises. Its bytes per event count every relation of the store's
schema (tables, indexes, TOAST) over the rows stored.

    python benchmarks/event_store.py [--events 200000] [--rate 0.1]
        [--backends sqlite postgres] [--synchronous FULL NORMAL]
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np

from serve_drift.eventlog.recorder import EventRecorder
from serve_drift.eventlog.sampling import AccountingSnapshot, Sampler
from serve_drift.eventlog.schema import InferenceRecord, InputStats, Outputs, clean_context
from serve_drift.eventlog.store import BaseEventStore, EventStore, PostgresEventStore, Synchronous
from serve_drift.ingress.stats import compute_input_stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the tests' PostgreSQL server
from tests.support.postgres import PostgresServer

PG_SCHEMA = "bench"


@dataclass(frozen=True)
class Options:
    events: int
    rate: float
    flagged: float
    low_confidence: float
    window: int
    drift_every: int
    seed: int


@dataclass(frozen=True)
class RunResult:
    backend: str
    seconds: float
    accounting: AccountingSnapshot
    rows_in_file: int
    file_bytes: int
    weight_sum: float
    commit_ms: list[float]


def input_stats_pool(n: int, rng: np.random.Generator) -> tuple[list[InputStats], float]:
    """Stats of n synthetic 224x224 RGB images, and the measured cost per image."""
    images = [_image(rng) for _ in range(n)]
    compute_input_stats(images[0])
    started = time.perf_counter()
    stats = [compute_input_stats(image) for image in images]
    return stats, (time.perf_counter() - started) / n


def _image(rng: np.random.Generator) -> np.ndarray:
    base = rng.integers(40, 200, size=(28, 28, 3)).astype(np.uint8)
    noisy = np.kron(base, np.ones((8, 8, 1), dtype=np.uint8))  # blocky, like a real photo's edges
    return np.clip(noisy + rng.integers(0, 20, size=noisy.shape), 0, 255).astype(np.uint8)


class RecordFactory:
    def __init__(self, options: Options, stats: list[InputStats], rng: np.random.Generator) -> None:
        self.options, self.stats, self.rng = options, stats, rng
        self.count = 0

    def batch(self, n: int) -> list[InferenceRecord]:
        kinds = self.rng.random(n)
        return [self._record(kind) for kind in kinds]

    def _record(self, kind: float) -> InferenceRecord:
        self.count += 1
        flagged = kind < self.options.flagged
        low = not flagged and kind < self.options.flagged + self.options.low_confidence
        confidence = float(self.rng.uniform(0.2, 0.49) if low else self.rng.uniform(0.6, 1.0))
        cls = int(self.rng.integers(0, 1000))
        runners_up = [((cls + k) % 1000, round((1 - confidence) / (k + 1), 6)) for k in range(1, 5)]
        top_k = ((cls, round(confidence, 6)), *runners_up)
        return InferenceRecord(
            timestamp=time.time(),
            correlation_id=str(uuid.uuid4()),
            internal_id=uuid.uuid4().hex,
            model_name="resnet50",
            model_version="2026-11-01",
            data_version="imagenet-val-2026",
            reference_version="ref-8c1f2e9a",
            deployment="Classifier",
            replica_id=f"replica-{self.count % 4}",
            context=clean_context(
                {"camera": f"cam-{self.count % 50}", "site": "berlin-3", "scene": "indoor"}
            ),
            input_stats=self.stats[self.count % len(self.stats)],
            outputs=Outputs(
                predicted_class=cls,
                confidence=confidence,
                top_k=top_k,
                predicted_label=f"n{cls:08d}",
            ),
            latency_s=float(self.rng.uniform(0.005, 0.05)),
            validation_flags=("too_dark",) if flagged else (),
            trace_id=uuid.uuid4().hex,
            span_id=uuid.uuid4().hex[:16],
        )


def run(
    options: Options,
    label: str,
    open_store: Callable[[], BaseEventStore],
    measure: Callable[[], tuple[int, int, float]],
    stats: list[InputStats],
) -> RunResult:
    rng = np.random.default_rng(options.seed)
    factory = RecordFactory(options, stats, rng)
    store = open_store()
    recorder = EventRecorder(store=store, sampler=Sampler(rate=options.rate, seed=options.seed))
    timed, commit_ms, pending, window_number, sent = 0.0, [], [], 0, 0
    while sent < options.events:
        batch = factory.batch(min(int(rng.integers(64, 257)), options.events - sent))
        sent += len(batch)
        started = time.perf_counter()
        recorder.accept(len(batch))  # a replica's batch arrives
        timed += time.perf_counter() - started
        pending.extend(batch)
        while len(pending) >= options.window or (sent >= options.events and pending):
            window, pending = pending[: options.window], pending[options.window :]
            drifting = window_number % options.drift_every == options.drift_every - 1
            started = time.perf_counter()
            recorder.record(window, in_drift_window=drifting)  # after the window's test
            elapsed = time.perf_counter() - started
            timed += elapsed
            commit_ms.append(elapsed * 1000)
            window_number += 1
    store.close()
    rows, size, weights = measure()
    return RunResult(label, timed, recorder.accounting(), rows, size, weights, commit_ms)


def sqlite_backend(path: Path, synchronous: str) -> tuple[Callable[[], BaseEventStore], Callable]:
    def open_store() -> BaseEventStore:
        mode = cast(Synchronous, synchronous)
        return EventStore(path, synchronous=mode, max_age_s=None, max_bytes=None)

    def measure() -> tuple[int, int, float]:
        db = sqlite3.connect(path)
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # count the data in the file, not the WAL
        rows, weights = db.execute(
            "SELECT COUNT(*), SUM(sampling_weight) FROM inference_events"
        ).fetchone()
        db.close()
        return rows, path.stat().st_size, float(weights or 0)

    return open_store, measure


def postgres_backend(dsn: str) -> tuple[Callable[[], BaseEventStore], Callable]:
    def open_store() -> BaseEventStore:
        return PostgresEventStore(dsn, schema=PG_SCHEMA, max_age_s=None, max_bytes=None)

    def measure() -> tuple[int, int, float]:
        import psycopg

        with psycopg.connect(dsn, autocommit=True) as db:
            db.execute(f"VACUUM ANALYZE {PG_SCHEMA}.inference_events")  # settle the free map
            rows, weights = db.execute(
                f"SELECT COUNT(*), SUM(sampling_weight) FROM {PG_SCHEMA}.inference_events"
            ).fetchone()
            (size,) = db.execute(
                "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n "
                "ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relkind = 'r'",
                (PG_SCHEMA,),
            ).fetchone()
        return int(rows), int(size), float(weights or 0)

    return open_store, measure


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    with PostgresServer.started(fsync=True) as server:
        with server.admin() as db:
            version = db.execute("SHOW server_version").fetchone()[0]
            commit = db.execute("SHOW synchronous_commit").fetchone()[0]
        where = f"127.0.0.1:{server.port}"
        print(f"PostgreSQL {version} on {where}: fsync=on, synchronous_commit={commit}")
        yield server.dsn()


def _line(label: str, value: str, note: str = "") -> None:
    print(f"{label:<24}{value:>14}  {note}".rstrip())


def report(result: RunResult, options: Options) -> None:
    acc = result.accounting
    per_stored = result.file_bytes / max(1, result.rows_in_file)
    share = acc.stored / max(1, acc.accepted)
    p50, p99 = np.percentile(result.commit_ms, [50, 99])
    print(f"\n== {result.backend} ==")
    _line("events accepted", f"{acc.accepted:,}", f"{acc.accepted / result.seconds:,.0f}/s")
    _line(
        "events written", f"{acc.stored:,}", f"{acc.stored / result.seconds:,.0f}/s ({share:.1%})"
    )
    _line("window commit ms", f"{p50:.2f}", f"p50; p99 {p99:.2f} (window of {options.window})")
    _line(
        "bytes per stored event", f"{per_stored:,.0f}", f"measured: {result.file_bytes:,} B on disk"
    )
    _line("GB per 1M stored", f"{per_stored * 1e6 / 1e9:.2f}", "extrapolated from bytes/event")
    _line(
        "GB per 1M accepted", f"{per_stored * share * 1e6 / 1e9:.2f}", "at this mix, extrapolated"
    )
    _line("re-estimated requests", f"{result.weight_sum:,.0f}", "sum of sampling weights")
    print(f"accounting: {acc.summary()}")
    acc.check(settled=True)
    if acc.stored != result.rows_in_file:
        raise SystemExit(
            f"accounting says {acc.stored} stored; the store holds {result.rows_in_file}"
        )
    print("invariant holds: stored + sampled out + dropped = accepted; stored = rows in the store")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rate", type=float, default=0.1)
    parser.add_argument("--flagged", type=float, default=0.05)
    parser.add_argument("--low-confidence", type=float, default=0.05)
    parser.add_argument("--window", type=int, default=200)
    parser.add_argument("--drift-every", type=int, default=10, help="every n-th window drifts")
    parser.add_argument(
        "--synchronous", nargs="+", default=["FULL", "NORMAL"], choices=["FULL", "NORMAL"]
    )
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgres"], choices=["sqlite", "postgres"]
    )
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to put the databases (default: a temp dir)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    options = Options(
        args.events,
        args.rate,
        args.flagged,
        args.low_confidence,
        args.window,
        args.drift_every,
        args.seed,
    )
    stats, cost_s = input_stats_pool(256, np.random.default_rng(args.seed))
    print(f"compute_input_stats: {cost_s * 1e3:.2f} ms per 224x224 RGB image (measured over 256)")
    results = []
    if "sqlite" in args.backends:
        with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
            for mode in args.synchronous:
                backend = sqlite_backend(Path(tmp) / f"events-{mode.lower()}.db", mode)
                results.append(run(options, f"sqlite synchronous={mode}", *backend, stats))
                report(results[-1], options)
    if "postgres" in args.backends:
        with postgres() as dsn:
            results.append(run(options, "postgres", *postgres_backend(dsn), stats))
            report(results[-1], options)
    summary(results)


def summary(results: list[RunResult]) -> None:
    print("\n== summary ==")
    for result in results:
        acc = result.accounting
        per_stored = result.file_bytes / max(1, result.rows_in_file)
        print(
            f"{result.backend:<26}{acc.accepted / result.seconds:>12,.0f} accepted/s"
            f"{acc.stored / result.seconds:>10,.0f} written/s{per_stored:>8,.0f} B/event"
        )


if __name__ == "__main__":
    main()
