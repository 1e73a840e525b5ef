"""A soak of the drift monitor alone: its resident memory against the events it took.

The ready-made digits app's monitor as shipped (default detector, windows of 200, the event log
on, the OpenTelemetry SDK exporting to a real OTLP receiver), deployed alone in Ray Serve and
fed batches of fresh events (``ShippingConfig.batch_size`` rows) through its handle, as replicas
send them, at ``--rows-per-s``: faster than the load benchmark's hold (158 rows/s), so a few
minutes cover what an hour of it would. The monitor's RSS is read every ``--sample-events``
events; its slope is fitted after ``--warmup-events`` (default 100 000: the first 500 windows,
until the results it keeps, 500, are full; the traffic sample, 2 000 rows, is full after the
first 2 000).

Target (the load benchmark's): at the slope measured, an hour of the load benchmark's hold
(``--hour-rows-per-s``, 158 rows/s) grows the monitor by at most 2 % of its memory, or 10 MiB.

``--in-process`` runs the monitor in this process instead (no Ray, faster), each batch passed
through ``tests.support.batches.delivered_like_ray`` so that, as with Ray, its arrays are views
into the one message it came in; ``--tracemalloc`` then prints the Python allocations that grew
after the warm-up, by traceback (tracemalloc's own tables make the RSS figures larger then).

    python benchmarks/monitor_soak.py [--events 200000] [--rows-per-s 1000] [--in-process]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared benchmark harness

from _harness import load_average, one_pid, otlp_sink, rss_mib, serving, telemetry_env, verdict
from load import FLAT_FLOOR_MIB, FLAT_SHARE
from monitor_capacity import BATCH_ROWS, BatchMaker, digits_reference, monitor_config

APP, MONITOR = "soak", "SoakMonitor"
Ingest = Callable[[Any], Awaitable[Any]]
Probe = Callable[[int], float]  # the monitor's RSS in MiB, told the events sent so far


@dataclass
class Samples:
    """The monitor's RSS (MiB) after so many events."""

    events: list[int] = field(default_factory=list)
    mib: list[float] = field(default_factory=list)

    def add(self, *, events: int, mib: float) -> None:
        self.events.append(events)
        self.mib.append(mib)

    def slope_mib_per_event(self, *, after: int) -> float:
        x, y = np.array(self.events), np.array(self.mib)
        keep = x >= after
        if keep.sum() < 3:
            return float("nan")
        return float(np.polyfit(x[keep], y[keep], 1)[0])

    def at(self, events: int) -> float:
        return self.mib[int(np.searchsorted(self.events, events))]


@dataclass(frozen=True)
class Soak:
    samples: Samples
    seconds: float
    windows_tested: int
    windows_skipped: int
    where: str
    growth: list[str] = field(default_factory=list)  # tracemalloc's top growth, if traced


async def feed(
    ingest: Ingest, probe: Probe, *, events: int, rows_per_s: float, every: int
) -> Samples:
    """Batches at ``rows_per_s`` (paced, one in flight, as one replica sends), RSS sampled."""
    maker = BatchMaker(digits_reference(), seed=1)
    samples = Samples()
    started, sent = time.perf_counter(), 0
    samples.add(events=0, mib=probe(0))
    while sent < events:
        await ingest(maker.next(replica="soak"))
        sent += BATCH_ROWS
        if sent // every != (sent - BATCH_ROWS) // every:
            samples.add(events=sent, mib=probe(sent))
        await asyncio.sleep(max(0.0, started + sent / rows_per_s - time.perf_counter()))
    return samples


def soak_in_serve(*, events: int, rows_per_s: float, every: int) -> Soak:
    from ray import serve

    from serve_drift.monitor.deployment import monitor_deployment

    config = monitor_config(digits_reference(), events_dir=tempfile.mkdtemp(), name=MONITOR)
    serve.start(http_options={"host": "127.0.0.1", "port": 0})
    app = monitor_deployment(config, name=MONITOR).bind(config.model_dump(mode="json"))
    serve.run(app, name=APP, route_prefix=None)
    handle = serve.get_deployment_handle(MONITOR, app_name=APP)
    pid = one_pid(f"ServeReplica:{APP}:{MONITOR}")

    async def ingest(batch: Any) -> Any:
        return await handle.ingest.remote(batch)

    started = time.perf_counter()
    samples = asyncio.run(
        feed(ingest, lambda _: rss_mib(pid), events=events, rows_per_s=rows_per_s, every=every)
    )
    counts = handle.health.remote().result().counts
    return Soak(
        samples,
        time.perf_counter() - started,
        counts.windows_tested,
        counts.windows_skipped,
        "the monitor deployed alone in Ray Serve, fed through its handle",
    )


def soak_in_process(
    *, events: int, rows_per_s: float, every: int, warmup: int, trace: bool
) -> Soak:
    from serve_drift.monitor.deployment import DriftMonitor
    from tests.support.batches import delivered_like_ray

    monitor = DriftMonitor(
        monitor_config(digits_reference(), events_dir=tempfile.mkdtemp(), name=MONITOR)
    )
    snapshots: list[tracemalloc.Snapshot] = []

    def probe(sent: int) -> float:
        if trace and not snapshots and sent >= warmup:
            snapshots.append(tracemalloc.take_snapshot())
        return rss_mib(os.getpid())

    async def ingest(batch: Any) -> Any:
        return await monitor.ingest(delivered_like_ray(batch)[0])

    if trace:
        tracemalloc.start(12)
    started = time.perf_counter()
    samples = asyncio.run(feed(ingest, probe, events=events, rows_per_s=rows_per_s, every=every))
    growth = growth_lines(snapshots[0], tracemalloc.take_snapshot()) if snapshots else []
    counts = asyncio.run(monitor.health()).counts
    return Soak(
        samples,
        time.perf_counter() - started,
        counts.windows_tested,
        counts.windows_skipped,
        "the monitor in this process, batches delivered as Ray delivers them",
        growth,
    )


def growth_lines(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> list[str]:
    lines = ["Python allocations that grew after the warm-up (tracemalloc, by traceback):"]
    for stat in after.compare_to(before, "traceback")[:8]:
        lines.append(f"  {stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+7d} blocks")
        lines.extend(f"      {line}" for line in stat.traceback.format()[-6:])
    return lines


def report(soak: Soak, *, warmup: int, hour_rows_per_s: float) -> None:
    samples = soak.samples
    slope = samples.slope_mib_per_event(after=warmup)
    hour = slope * hour_rows_per_s * 3600
    last = samples.mib[-1]
    limit = max(FLAT_SHARE * last, FLAT_FLOOR_MIB)
    events = samples.events[-1]
    print(f"\nDrift monitor soak: {soak.where}")
    print(
        f"  {events:,} events in {soak.seconds:.0f} s ({events / soak.seconds:,.0f} rows/s); "
        f"windows tested {soak.windows_tested}, skipped {soak.windows_skipped}"
    )
    print(
        f"  RSS {samples.mib[0]:.1f} MiB at the start, {samples.at(warmup):.1f} after the "
        f"warm-up ({warmup:,} events), {last:.1f} at the end"
    )
    print(
        f"  slope after the warm-up: {slope * 1000:+.4f} MiB per 1k events, "
        f"{slope * 200_000:+.3f} MiB per 1k windows of 200"
    )
    for line in soak.growth:
        print(f"  {line}")
    print(
        f"  an hour at {hour_rows_per_s:.0f} rows/s (the load benchmark's hold): {hour:+.1f} MiB; "
        f"target <= {limit:.1f} MiB (2 % of its memory, or 10 MiB): {verdict(hour <= limit)}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rows-per-s", type=float, default=1000.0)
    parser.add_argument("--warmup-events", type=int, default=100_000)
    parser.add_argument("--sample-events", type=int, default=5_000)
    parser.add_argument("--hour-rows-per-s", type=float, default=158.0)
    parser.add_argument("--in-process", action="store_true", help="no Ray: this process")
    parser.add_argument("--tracemalloc", action="store_true", help="with --in-process")
    args = parser.parse_args()
    print(f"load average at the start: {load_average()}")
    common = {"events": args.events, "rows_per_s": args.rows_per_s, "every": args.sample_events}
    if args.in_process:
        # The alert rules' stdout sink would print here: its notifications go to /dev/null.
        with otlp_sink() as sink, open(os.devnull, "w") as quiet, redirect_stdout(quiet):
            os.environ.update(telemetry_env(sink.endpoint))
            soak = soak_in_process(**common, warmup=args.warmup_events, trace=args.tracemalloc)
    else:
        with serving():
            soak = soak_in_serve(**common)
    report(soak, warmup=args.warmup_events, hour_rows_per_s=args.hour_rows_per_s)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
