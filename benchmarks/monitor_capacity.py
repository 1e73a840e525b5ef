"""How much one drift monitor takes, and where the replicas' sampler starts to matter.

Three figures, for the ready-made digits app's monitor as shipped (default detector, windows of
200, the event log on, the OpenTelemetry SDK on and exporting to a real receiver):

1. **Maximum ingest** (embeddings per second): the monitor deployed alone in Ray Serve, fed by
   ``--senders`` concurrent senders (standing in for replicas) with batches of fresh events of
   the replicas' default size (``ShippingConfig.batch_size``) through its handle, as fast as
   it answers; only rows whose receipt says the event store recorded them count. Its CPU is
   read from ``/proc``.
2. **Test throughput**: the default detector on windows of 200 rows against the digits
   reference, in process: windows per second and the rows per second that keeps up with.
3. **Where the sampler starts to matter**: replicas ship every row until their total passes
   ``ShippingConfig.monitor_max_rows_per_s`` (shared between the replicas the monitor hears
   from) or a replica passes its own ``max_rows_per_s``; above that they ship a weighted sample.
   The budget must sit below what the monitor sustains: the smaller of (1) and (2).

``--profile`` adds a profile of the monitor's ingest path in process (no Ray), the functions
that take its time.

    python benchmarks/monitor_capacity.py [--seconds 20] [--senders 4] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import pstats
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared benchmark harness

from _harness import (
    CpuMeter,
    OtlpSink,
    load_average,
    one_pid,
    serving,
    verdict,
)

from serve_drift.config import ShippingConfig

# Rows per batch: what a replica sends at the shipping defaults once its traffic fills one.
BATCH_ROWS = ShippingConfig().batch_size
MONITOR = "CapacityMonitor"


@dataclass(frozen=True)
class Reference:
    path: str
    version: str
    dim: int
    classes: int


def digits_reference() -> Reference:
    from serve_drift.models.default_reference import ensure_digits_reference
    from serve_drift.reference.reference_set import ReferenceSet

    path, version = ensure_digits_reference()
    reference = ReferenceSet.load(path)
    probabilities = reference.probabilities
    classes = 10 if probabilities is None else probabilities.shape[1]
    return Reference(str(path), version, reference.embeddings.shape[1], classes)


def monitor_config(reference: Reference, *, events_dir: str, name: str = MONITOR) -> Any:
    """The digits app's drift configuration, as ``build_app`` makes it (defaults otherwise)."""
    from serve_drift.config import DriftConfig

    return DriftConfig.model_validate(
        {
            "model_name": "digits",
            "model_version": reference.version,
            "reference_path": reference.path,
            "monitor_deployment": name,
            "events": {"path": str(Path(events_dir) / "capacity.sqlite")},
        }
    )


class BatchMaker:
    """64-row batches with fresh IDs (the store is idempotent by ID: reused IDs would be free)
    and rows drawn near the reference, so windows test like real traffic."""

    def __init__(self, reference: Reference, *, seed: int) -> None:
        from serve_drift.reference.reference_set import ReferenceSet

        rng = np.random.default_rng(seed)
        rows = ReferenceSet.load(reference.path).embeddings
        picks = rng.integers(0, len(rows), size=(64, BATCH_ROWS))
        self._embeddings = [rows[p] + rng.normal(0, 0.01, rows[p].shape) for p in picks]
        logits = rng.normal(0, 3, size=(64, BATCH_ROWS, reference.classes))
        exp = np.exp(logits - logits.max(-1, keepdims=True))
        self._probabilities = exp / exp.sum(-1, keepdims=True)
        self._reference = reference
        self._seed = seed
        self._count = 0

    def next(self, *, replica: str) -> Any:
        from serve_drift.messages import EventBatch, InferenceEvent

        k = self._count % len(self._embeddings)
        self._count += 1
        probabilities = self._probabilities[k]
        now = time.time()
        events = tuple(
            InferenceEvent(
                correlation_id=f"{self._seed}-{self._count}-{i}",
                internal_id=f"{self._seed}-{self._count}-{i}",
                timestamp=now,
                model_name="digits",
                model_version=self._reference.version,
                predicted_class=int(probabilities[i].argmax()),
                confidence=float(probabilities[i].max()),
                trace_id=f"{self._count + 1:032x}",
                span_id=f"{i + 1:016x}",
                replica_id=replica,
            )
            for i in range(BATCH_ROWS)
        )
        return EventBatch(
            embeddings=self._embeddings[k].astype(np.float32),
            events=events,
            replica_id=replica,
            probabilities=probabilities.astype(np.float32),
        )


# --- 1. ingest through Ray Serve ---------------------------------------------------------------


@dataclass(frozen=True)
class Ingest:
    seconds: float
    rows_recorded: int
    rows_unrecorded: int
    windows_tested: int
    windows_skipped: int
    monitor_cpu_s: float

    @property
    def rows_per_s(self) -> float:
        return self.rows_recorded / self.seconds


async def _feed(handle: Any, maker: BatchMaker, *, replica: str, deadline: float) -> list[int]:
    recorded, unrecorded = 0, 0
    while time.perf_counter() < deadline:
        receipt = await handle.ingest.remote(maker.next(replica=replica))
        if receipt.recorded:
            recorded += receipt.accepted
        else:
            unrecorded += receipt.accepted
    return [recorded, unrecorded]


async def _ingest_round(handle: Any, reference: Reference, *, senders: int, seconds: float) -> Any:
    makers = [BatchMaker(reference, seed=s) for s in range(senders)]
    deadline = time.perf_counter() + seconds
    started = time.perf_counter()
    counts = await asyncio.gather(
        *(_feed(handle, m, replica=f"r{i}", deadline=deadline) for i, m in enumerate(makers))
    )
    return time.perf_counter() - started, counts


def ingest_benchmark(
    reference: Reference, *, senders: int, seconds: float, sink: OtlpSink
) -> Ingest:
    from ray import serve

    from serve_drift.monitor.deployment import monitor_deployment

    config = monitor_config(reference, events_dir=tempfile.mkdtemp())
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    app = monitor_deployment(config, name=MONITOR).bind(config.model_dump(mode="json"))
    serve.run(app, name="capacity", route_prefix=None)
    handle = serve.get_deployment_handle(MONITOR, app_name="capacity")
    asyncio.run(_ingest_round(handle, reference, senders=senders, seconds=3))  # warm-up
    before = handle.health.remote().result()
    pid = one_pid(f"ServeReplica:capacity:{MONITOR}")
    meter = CpuMeter({"monitor": pid, "receiver": sink.pid})
    elapsed, counts = asyncio.run(
        _ingest_round(handle, reference, senders=senders, seconds=seconds)
    )
    cpu = meter.spent()
    after = handle.health.remote().result()
    return Ingest(
        seconds=elapsed,
        rows_recorded=sum(c[0] for c in counts),
        rows_unrecorded=sum(c[1] for c in counts),
        windows_tested=after.counts.windows_tested - before.counts.windows_tested,
        windows_skipped=after.counts.windows_skipped - before.counts.windows_skipped,
        monitor_cpu_s=cpu["monitor"],
    )


# --- 2. test throughput ------------------------------------------------------------------------


@dataclass(frozen=True)
class Tests:
    window: int
    median_s: float

    @property
    def windows_per_s(self) -> float:
        return 1.0 / self.median_s

    @property
    def rows_per_s(self) -> float:
        return self.window * self.windows_per_s


def test_benchmark(reference: Reference, *, window: int, repeats: int) -> Tests:
    import torch

    from serve_drift.config import default_detectors
    from serve_drift.detectors import build_detector
    from serve_drift.reference.reference_set import ReferenceSet

    torch.set_num_threads(1)  # the monitor's detection lane is one thread
    loaded = ReferenceSet.load(reference.path)
    (config,) = default_detectors()
    detector = build_detector(
        config, reference=loaded.embeddings, reference_probabilities=loaded.probabilities
    )
    batch = BatchMaker(reference, seed=99)
    rows = np.concatenate([batch.next(replica="t").embeddings for _ in range(-(-window // 64))])
    probs = np.concatenate([batch.next(replica="t").probabilities for _ in range(-(-window // 64))])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        detector.test(rows[:window], probabilities=probs[:window])
        times.append(time.perf_counter() - started)
    return Tests(window=window, median_s=float(np.median(times[1:])))


# --- 3. profile of the ingest path ---------------------------------------------------------------


def profile_ingest(reference: Reference, *, batches: int) -> str:
    """Everything the monitor's three lanes do for ``batches`` batches, run in one thread so
    one profile sees it all: taking the batch, the arrival commit, drift tests, the event log."""
    from serve_drift.monitor.state import MonitorState

    config = monitor_config(reference, events_dir=tempfile.mkdtemp())
    state = MonitorState(config)
    assert state.event_log is not None
    maker = BatchMaker(reference, seed=7)
    pending = [maker.next(replica="p") for _ in range(batches)]
    profiler = cProfile.Profile()
    started = time.perf_counter()
    profiler.enable()
    for batch in pending:
        jobs = state.accept(batch)
        state.event_log.record_arrivals(batch.events)
        for job in jobs:
            state.process(job)
    profiler.disable()
    rows_per_s = batches * BATCH_ROWS / (time.perf_counter() - started)
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("cumulative").print_stats(r"serve_drift|sqlite", 18)
    return f"Monitor work in one thread, profiled: {rows_per_s:,.0f} rows/s\n{out.getvalue()}"


# --- report --------------------------------------------------------------------------------------


def report(ingest: Ingest, tests: Tests, *, senders: int) -> None:
    from serve_drift.config import ShippingConfig

    shipping = ShippingConfig()
    sustained = min(ingest.rows_per_s, tests.rows_per_s)
    print(f"\nMonitor ingest through Ray Serve ({senders} senders, {BATCH_ROWS}-row batches):")
    print(
        f"  {ingest.rows_per_s:,.0f} embeddings/s recorded in the event store "
        f"({ingest.rows_recorded:,} in {ingest.seconds:.1f} s; {ingest.rows_unrecorded} "
        "answered not recorded)"
    )
    cores = ingest.monitor_cpu_s / ingest.seconds
    print(
        f"  windows of {tests.window} tested: {ingest.windows_tested}, skipped (tests could not "
        f"keep up): {ingest.windows_skipped}; monitor CPU {cores:.2f} cores"
    )
    print(f"\nDefault detector on windows of {tests.window} (in process, one thread):")
    print(
        f"  {tests.median_s * 1000:.1f} ms per window: {tests.windows_per_s:.1f} windows/s, "
        f"keeps up with {tests.rows_per_s:,.0f} rows/s"
    )
    budget = shipping.monitor_max_rows_per_s
    print("\nWhere the sampler starts to matter:")
    print(f"  the monitor sustains {sustained:,.0f} rows/s (the smaller of the two above)")
    if budget is None:
        print("  no ingest budget is set by default (ShippingConfig.monitor_max_rows_per_s)")
        return
    print(
        f"  replicas ship every row up to {budget:,.0f} rows/s in total (the default "
        f"monitor_max_rows_per_s), {budget / 2:,.0f}/s each for 2 replicas, {budget / 10:,.0f}/s "
        "each for 10; above that each ships a weighted uniform sample"
    )
    print(
        f"  budget <= sustained ingest: {budget:,.0f} <= {sustained:,.0f}: "
        f"{verdict(budget <= sustained)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="ingest measurement time")
    parser.add_argument("--senders", type=int, default=4, help="concurrent senders (replicas)")
    parser.add_argument("--repeats", type=int, default=21, help="drift tests timed")
    parser.add_argument("--profile", action="store_true", help="profile the ingest path")
    args = parser.parse_args()
    print(f"load average at the start: {load_average()}")
    reference = digits_reference()
    tests = test_benchmark(reference, window=200, repeats=args.repeats)
    if args.profile:
        print(profile_ingest(reference, batches=300))
    with serving() as sink:
        ingest = ingest_benchmark(reference, senders=args.senders, seconds=args.seconds, sink=sink)
    report(ingest, tests, senders=args.senders)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
