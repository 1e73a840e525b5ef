"""What one replica-to-monitor send costs, by batch size: the reason for the shipping defaults.

A replica ships its rows to the drift monitor through a Ray Serve handle, in batches of
``shipping.batch_size`` rows or whatever is queued every ``shipping.flush_interval_s``. Each
handle call has a fixed CPU cost in the sending process (the router, Ray's core worker and
its I/O threads, the reply) besides the rows' serialisation, so the cost per request falls
with the rows per call. This benchmark deploys the monitor alone in Ray Serve (the SDK on and
exporting, the digits reference, the default detector and event log), sends batches of real
event records through its handle from this process at a paced rate (one call in flight, as a
replica sends), and prints for each batch size:

- the sender's CPU per call and per row (this process, all threads, less its idle CPU);
- the monitor's CPU per row (ingest, windows, tests, event log);
- what the sends cost a replica per request at a few traffic levels with the defaults.

No assertions: this prints figures.

    python benchmarks/shipping_cost.py [--seconds 12] [--sizes 16 64 256 1024]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared benchmark harness

from _harness import cpu_seconds, load_average, one_pid, serving
from monitor_capacity import BATCH_ROWS, BatchMaker, digits_reference, monitor_config

APP, MONITOR = "shipcost", "ShipCostMonitor"
ROWS_PER_S = 1000.0  # well under the monitor's ingest budget: every row is processed


@dataclasses.dataclass(frozen=True)
class Cost:
    rows: int
    calls: int
    sender_ms_per_call: float
    monitor_us_per_row: float

    @property
    def sender_us_per_row(self) -> float:
        return self.sender_ms_per_call * 1000 / self.rows


def batch_of(maker: BatchMaker, rows: int) -> Any:
    parts = [maker.next(replica="sender") for _ in range(-(-rows // BATCH_ROWS))]
    return dataclasses.replace(
        parts[0],
        embeddings=np.concatenate([p.embeddings for p in parts])[:rows],
        events=sum((p.events for p in parts), ())[:rows],
        probabilities=np.concatenate([p.probabilities for p in parts])[:rows],
    )


async def send_paced(handle: Any, batches: list[Any], *, calls_per_s: float) -> None:
    started = time.perf_counter()
    for i, batch in enumerate(batches):
        await handle.ingest.remote(batch)
        await asyncio.sleep(max(0.0, started + (i + 1) / calls_per_s - time.perf_counter()))


def measure(
    handle: Any,
    maker: BatchMaker,
    monitor_pid: int,
    *,
    rows: int,
    seconds: float,
    idle_cpu_per_s: float,
) -> Cost:
    calls_per_s = min(ROWS_PER_S / rows, 20.0)
    batches = [batch_of(maker, rows) for _ in range(max(3, int(calls_per_s * seconds)))]
    me, monitor = cpu_seconds(os.getpid()), cpu_seconds(monitor_pid)
    started = time.perf_counter()
    asyncio.run(send_paced(handle, batches, calls_per_s=calls_per_s))
    elapsed = time.perf_counter() - started
    sender = cpu_seconds(os.getpid()) - me - idle_cpu_per_s * elapsed
    monitor = cpu_seconds(monitor_pid) - monitor
    n = len(batches)
    return Cost(rows, n, sender / n * 1000, monitor / (n * rows) * 1e6)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=12.0, help="seconds per batch size")
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024])
    args = parser.parse_args()
    print(f"load average at the start: {load_average()}")
    with serving():
        from ray import serve

        from serve_drift.config import ShippingConfig
        from serve_drift.monitor.deployment import monitor_deployment

        reference = digits_reference()
        config = monitor_config(reference, events_dir=tempfile.mkdtemp(), name=MONITOR)
        serve.start(http_options={"host": "127.0.0.1", "port": 0})
        app = monitor_deployment(config, name=MONITOR).bind(config.model_dump(mode="json"))
        serve.run(app, name=APP, route_prefix=None)
        handle = serve.get_deployment_handle(MONITOR, app_name=APP)
        monitor_pid = one_pid(f"ServeReplica:{APP}:{MONITOR}")
        maker = BatchMaker(reference, seed=1)
        asyncio.run(send_paced(handle, [batch_of(maker, 64)] * 20, calls_per_s=10))  # warm-up
        before = cpu_seconds(os.getpid())
        time.sleep(5.0)
        idle = (cpu_seconds(os.getpid()) - before) / 5.0
        costs = [
            measure(
                handle, maker, monitor_pid, rows=rows, seconds=args.seconds, idle_cpu_per_s=idle
            )
            for rows in args.sizes
        ]
    report(costs, ShippingConfig(), idle_cpu_per_s=idle)


def report(costs: list[Cost], shipping: Any, *, idle_cpu_per_s: float) -> None:
    print(
        f"\nOne send through the monitor's Serve handle, by rows per call (the sender's idle "
        f"CPU, {idle_cpu_per_s * 1000:.0f} ms/s, taken out):"
    )
    print(
        f"  {'rows':>6} {'calls':>6} {'sender ms/call':>15} {'sender us/row':>14} "
        f"{'monitor us/row':>15}"
    )
    for c in costs:
        print(
            f"  {c.rows:>6} {c.calls:>6} {c.sender_ms_per_call:>15.2f} "
            f"{c.sender_us_per_row:>14.1f} {c.monitor_us_per_row:>15.1f}"
        )
    # Per call = fixed + per row x rows, fitted to the measurements.
    per_row_ms, fixed_ms = np.polyfit(
        [c.rows for c in costs], [c.sender_ms_per_call for c in costs], 1
    )
    print(
        f"\nFitted: {fixed_ms:.2f} ms per call + {per_row_ms * 1000:.1f} us per row. With the "
        f"defaults (batch_size {shipping.batch_size}, flush_interval_s "
        f"{shipping.flush_interval_s}), a replica's sends cost it per request:"
    )
    for rate in (50, 100, 250, 1000, 5000):
        rows = max(1.0, min(shipping.batch_size, rate * shipping.flush_interval_s))
        per_request_us = (fixed_ms / rows + per_row_ms) * 1000
        print(f"  {rate:>5} req/s: {rows:>5.0f} rows per call, ~{per_request_us:.0f} us")


if __name__ == "__main__":
    main()
