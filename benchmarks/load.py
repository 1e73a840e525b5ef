"""A load test of the ready-made app as shipped: saturation, a long hold, overload, accounting.

The digits app from ``build_app`` (default detector, event log on, its backpressure options),
with the OpenTelemetry SDK on in every worker and exporting to a real OTLP receiver in its own
process, in one local Ray Serve instance on 127.0.0.1. Phases:

1. **Saturation**: closed-loop clients at 1, 2, 4, ... 32; saturation is the highest
   throughput of 200 answers.
2. **Hold**: an open-loop arrival rate of 0.8 x saturation for ``--hold-s`` (10 minutes), with
   the replica's, the drift monitor's and the HTTP proxy's resident memory sampled every
   ``--sample-s``; the slope after the first minute (``--warmup-s``) and over the hold's second
   half are printed. No 5xx is expected.
3. **Overload**: 3 x saturation for ``--overload-s``: the excess must be refused fast by Serve's
   backpressure (503 or 429 with Retry-After); the p99 latency of a refusal is printed.
4. **Accounting**: once the monitor has settled, every row it accepted is stored, sampled out,
   dropped, or still in an open window (``pending`` equals the rows in open windows), and every
   200 answer the client got is a row the monitor accepted or the replica counted.

The open-loop phases send over a fixed number of keep-alive connections, as a client fleet or
a load balancer would: 32 in the hold (the app's ``max_ongoing_requests``; with more in flight,
Serve's proxy queue retries requests with a backoff and goodput collapses, which the 64-client
saturation step and the overload phase show), 384 in overload (more than the app's 32 + 64);
a request due while all are busy waits on the client side, and that wait is printed apart.

Targets: memory flat (growth over an hour at the measured slope within 2 % of the process's
memory, or 10 MiB); zero unexpected 5xx; p99 of a refusal <= 100 ms; the invariants hold.

    python benchmarks/load.py [--hold-s 600] [--overload-s 30] [--step-s 8] [--warmup-s 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the shared benchmark harness

from _harness import (
    Endpoint,
    LoadResult,
    OtlpSink,
    closed_loop,
    digits_pngs,
    free_port,
    load_average,
    one_pid,
    open_loop,
    rss_mib,
    serving,
    verdict,
)

ADMIN_TOKEN = "load-benchmark-admin-token-0123456"
CONCURRENCY_STEPS = (1, 2, 4, 8, 16, 32, 64)
REFUSAL_P99_TARGET_MS = 100.0
# Clients' connections. The hold's fleet keeps at most the app's max_ongoing_requests (32) in
# flight: beyond that, Ray Serve's proxy queues requests and its router retries them with a
# backoff of up to 0.5 s, and goodput falls several-fold (bare Serve too: see the 64-client
# saturation step), so any hiccup would tip a hold near capacity into that state for good.
# Overload needs more requests in flight than the app takes (32 + max_queued_requests 64).
HOLD_CONNECTIONS, OVERLOAD_CONNECTIONS = 32, 384
FLAT_SHARE, FLAT_FLOOR_MIB = 0.02, 10.0
PROCESSES = {
    "replica": "ServeReplica:digits:ImageClassifier",
    "monitor": "ServeReplica:digits:ImageClassifierDriftMonitor",
    "proxy": "ProxyActor",
}


@dataclass
class MemoryTrace:
    """Resident memory of each process over time (seconds since the hold started)."""

    times_s: list[float] = field(default_factory=list)
    mib: dict[str, list[float]] = field(default_factory=dict)

    def sample(self, pids: dict[str, int], *, at_s: float) -> None:
        self.times_s.append(at_s)
        for name, pid in pids.items():
            self.mib.setdefault(name, []).append(rss_mib(pid))

    def slope_mib_per_h(self, name: str, *, after_s: float) -> float:
        t = np.array(self.times_s)
        y = np.array(self.mib[name])
        keep = t >= after_s
        if keep.sum() < 3:
            return float("nan")
        return float(np.polyfit(t[keep], y[keep], 1)[0] * 3600)


def deploy(port: int) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": {"source": "digits"}}), name="digits", route_prefix="/")


def find_saturation(endpoint: Endpoint, *, step_s: float) -> tuple[float, int, list[LoadResult]]:
    steps = [
        asyncio.run(closed_loop(endpoint, seconds=step_s, concurrency=c)) for c in CONCURRENCY_STEPS
    ]
    best = max(range(len(steps)), key=lambda i: steps[i].throughput)
    return steps[best].throughput, CONCURRENCY_STEPS[best], steps


async def _hold(
    endpoint: Endpoint, pids: dict[str, int], *, rate: float, seconds: float, sample_s: float
) -> tuple[LoadResult, MemoryTrace]:
    trace = MemoryTrace()
    started = time.perf_counter()

    async def sampler() -> None:
        while (elapsed := time.perf_counter() - started) < seconds:
            trace.sample(pids, at_s=elapsed)
            await asyncio.sleep(sample_s)
        trace.sample(pids, at_s=time.perf_counter() - started)

    load, _ = await asyncio.gather(
        open_loop(endpoint, rate=rate, seconds=seconds, connections=HOLD_CONNECTIONS), sampler()
    )
    return load, trace


def _health(port: int) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/health",
        headers={"authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def settled_health(port: int, *, timeout_s: float = 90.0) -> dict[str, Any]:
    """The app's health once the replica has shipped everything and the monitor has tested
    and logged every closed window."""
    deadline = time.monotonic() + timeout_s
    while True:
        health = _health(port)
        monitor = health["monitor"]
        idle = monitor.get("pending_windows") == 0 and monitor.get("event_log_queue") == 0
        if (idle and health["replica"]["pending"] == 0) or time.monotonic() > deadline:
            return health
        time.sleep(1.0)


@dataclass(frozen=True)
class Accounting:
    events: dict[str, Any]
    open_window_rows: int
    replica: dict[str, Any]
    served_ok: int

    @property
    def log_holds(self) -> bool:
        resolved = self.events["stored"] + self.events["sampled_out"] + self.events["dropped_total"]
        return (
            self.events["pending"] == self.open_window_rows
            and resolved + self.events["pending"] == self.events["accepted"]
        )

    @property
    def replica_side(self) -> int:
        """Rows the replica never delivered to the monitor's accounting, by its own count."""
        dropped = self.replica["dropped"]
        lost = sum(n for reason, n in dropped.items() if reason != "sampled_out")
        return lost + self.replica["pending"]

    @property
    def end_to_end_holds(self) -> bool:
        return self.events["accepted"] + self.replica_side == self.served_ok


def accounting(port: int, served_ok: int) -> Accounting:
    health = settled_health(port)
    monitor = health["monitor"]
    return Accounting(
        events=monitor["event_log"]["events"],
        open_window_rows=monitor["rows_in_open_windows"],
        replica=health["replica"],
        served_ok=served_ok,
    )


@dataclass(frozen=True)
class Run:
    saturation: float
    saturation_clients: int
    steps: list[LoadResult]
    hold: LoadResult
    hold_rate: float
    memory: MemoryTrace
    overload: LoadResult
    overload_rate: float
    accounting: Accounting
    spans_received: int


def _unexpected_5xx(result: LoadResult) -> int:
    server_errors = sum(n for status, n in result.statuses.items() if status >= 500)
    return server_errors - result.retry_after  # Serve's refusals carry Retry-After


def run(args: argparse.Namespace, sink: OtlpSink) -> Run:
    deploy(args.port)
    pids = {name: one_pid(title) for name, title in PROCESSES.items()}
    endpoint = Endpoint(
        port=args.port, path="/predict", bodies=digits_pngs(200), content_type="image/png"
    )
    warm = asyncio.run(closed_loop(endpoint, seconds=5, concurrency=4))
    saturation, clients, steps = find_saturation(endpoint, step_s=args.step_s)
    hold_rate = 0.8 * saturation
    hold, memory = asyncio.run(
        _hold(endpoint, pids, rate=hold_rate, seconds=args.hold_s, sample_s=args.sample_s)
    )
    overload_rate = 3 * saturation
    overload = asyncio.run(
        open_loop(
            endpoint, rate=overload_rate, seconds=args.overload_s, connections=OVERLOAD_CONNECTIONS
        )
    )
    served = warm.ok + sum(s.ok for s in steps) + hold.ok + overload.ok
    return Run(
        saturation=saturation,
        saturation_clients=clients,
        steps=steps,
        hold=hold,
        hold_rate=hold_rate,
        memory=memory,
        overload=overload,
        overload_rate=overload_rate,
        accounting=accounting(args.port, served),
        spans_received=sink.counts().get("span:serve_drift.request", 0),
    )


# --- the table ------------------------------------------------------------------------------


def report(result: Run, args: argparse.Namespace) -> None:
    rows: list[tuple[str, str, str, str]] = []
    rows += _saturation_rows(result)
    rows += _hold_rows(result, args)
    rows += _memory_rows(result, args)
    rows += _overload_rows(result)
    rows += _accounting_rows(result.accounting)
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    header = ("measure", "value", "target", "result")
    print()
    for row in (header, *rows):
        print("  ".join(c.ljust(widths[i]) if i < 3 else c for i, c in enumerate(row)))


def _saturation_rows(result: Run) -> list[tuple[str, str, str, str]]:
    steps = ", ".join(
        f"{c}: {s.throughput:.0f}" for c, s in zip(CONCURRENCY_STEPS, result.steps, strict=True)
    )
    return [
        ("saturation (req/s by clients)", steps, "-", "-"),
        (
            "saturation",
            f"{result.saturation:.1f} req/s at {result.saturation_clients} clients",
            "-",
            "-",
        ),
    ]


def _hold_rows(result: Run, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    hold = result.hold
    unexpected = hold.not_ok  # below saturation even a refusal is unexpected
    return [
        (
            f"hold: 0.8 x saturation for {args.hold_s:.0f} s",
            f"{result.hold_rate:.1f} req/s offered over {HOLD_CONNECTIONS} connections, "
            f"{hold.throughput:.1f} answered 200; p50 {hold.percentile_ms(50):.1f} ms, "
            f"p99 {hold.percentile_ms(99):.1f} ms; p99 wait for a connection "
            f"{np.percentile(hold.queued_s, 99) * 1000 if hold.queued_s else 0:.1f} ms",
            "-",
            "-",
        ),
        (
            "hold: answers other than 200",
            f"{unexpected} (by status: {hold.statuses}; client errors {hold.client_errors})",
            "0",
            verdict(unexpected == 0),
        ),
        (
            "request spans received (whole run)",
            f"{result.spans_received}",
            "-",
            "-",
        ),
    ]


def _memory_rows(result: Run, args: argparse.Namespace) -> list[tuple[str, str, str, str]]:
    rows = []
    warmup = min(args.warmup_s, args.hold_s / 4)
    for name, values in result.memory.mib.items():
        slope = result.memory.slope_mib_per_h(name, after_s=warmup)
        # Bounded structures (caches, the traffic sample, result histories) fill up early in a
        # run and then stop: the second half's slope shows whether the growth flattens.
        late = result.memory.slope_mib_per_h(name, after_s=args.hold_s / 2)
        limit = max(FLAT_SHARE * values[0], FLAT_FLOOR_MIB)
        rows.append(
            (
                f"memory: {name}",
                f"{values[0]:.0f} -> {values[-1]:.0f} MiB, slope {slope:+.1f} MiB/h "
                f"({len(values)} samples, after {warmup:.0f} s; second half {late:+.1f} MiB/h)",
                f"|slope| x 1 h <= {limit:.0f} MiB",
                verdict(abs(slope) <= limit),
            )
        )
    return rows


def _overload_rows(result: Run) -> list[tuple[str, str, str, str]]:
    over = result.overload
    refusals = {s: n for s, n in over.statuses.items() if s in (503, 429)}
    refused = [x for s in (503, 429) for x in over.latencies_s.get(s, [])]
    p50, p99 = (
        float(np.percentile(refused, q) * 1000) if refused else float("nan") for q in (50, 99)
    )
    unexpected = _unexpected_5xx(over)
    return [
        (
            "overload: 3 x saturation",
            f"{result.overload_rate:.0f} req/s offered over {OVERLOAD_CONNECTIONS} connections: "
            f"{over.ok} answered 200 ({over.throughput:.0f}/s, "
            f"{over.throughput / result.saturation:.2f} x saturation), refused "
            f"{refusals or 'none'} ({over.retry_after} with Retry-After), "
            f"client errors {over.client_errors}",
            "-",
            "-",
        ),
        (
            "overload: p99 of a refusal",
            f"{p99:.1f} ms (p50 {p50:.1f} ms, {len(refused)} refusals)",
            f"<= {REFUSAL_P99_TARGET_MS:.0f} ms",
            verdict(bool(refused) and p99 <= REFUSAL_P99_TARGET_MS),
        ),
        ("overload: unexpected 5xx", f"{unexpected}", "0", verdict(unexpected == 0)),
    ]


def _accounting_rows(acc: Accounting) -> list[tuple[str, str, str, str]]:
    e = acc.events
    return [
        (
            "event log accounting",
            f"accepted {e['accepted']} = stored {e['stored']} + sampled out {e['sampled_out']} "
            f"+ dropped {e['dropped_total']} {e['dropped'] or ''} + pending {e['pending']} "
            f"(rows in open windows: {acc.open_window_rows})",
            "pending = open-window rows",
            verdict(acc.log_holds),
        ),
        (
            "every 200 answer accounted",
            f"{acc.served_ok} answered 200 = {e['accepted']} accepted by the monitor + "
            f"{acc.replica_side} the replica counted as not delivered (replica: shipped "
            f"{acc.replica['shipped']}, dropped {acc.replica['dropped']}, pending "
            f"{acc.replica['pending']})",
            "equal",
            verdict(acc.end_to_end_holds),
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hold-s", type=float, default=600.0, help="seconds at 0.8 x saturation")
    parser.add_argument("--overload-s", type=float, default=30.0, help="seconds at 3 x")
    parser.add_argument("--step-s", type=float, default=8.0, help="seconds per saturation step")
    parser.add_argument("--sample-s", type=float, default=10.0, help="memory sampling interval")
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=60.0,
        help="seconds of the hold left out of the memory slope (at most a quarter of it)",
    )
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    args.port = args.port or free_port()
    print(f"load average at the start: {load_average()}")
    with serving({"SERVE_DRIFT_ADMIN_TOKEN": ADMIN_TOKEN}) as sink:
        result = run(args, sink)
    report(result, args)
    print(f"\nload average at the end: {load_average()}")


if __name__ == "__main__":
    main()
