"""Serving overhead of serve-drift: the same model served bare and wrapped, side by side.

Two measurements in one run:

1. HTTP: the ready-made digits app deployed twice in one Ray Serve instance, bare and monitored,
   driven by the same concurrent load in alternating rounds (so drift in machine load hits both);
   prints throughput and p50/p99 latency for each and their ratios.
2. In-process: the monitored handler called directly in a loop versus the bare handler, which
   isolates the per-request cost serve-drift adds (span, capture, enqueue) from HTTP noise.

Targets (issue 2): wrapped throughput >= 97% of bare, p50 added <= 1 ms. Throughput is read at
saturating load (every core busy, so any CPU serve-drift spends shows up); added latency is read
at light load (one client), where queueing does not hide or inflate it.

    python benchmarks/overhead.py [--seconds 8] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import time
from dataclasses import dataclass

import httpx
import numpy as np

VARIANTS = ("bare", "wrapped")


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies_s: list[float]

    @property
    def throughput(self) -> float:
        return self.requests / self.seconds

    def percentile_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_s, q) * 1000)


def merge(results: list[LoadResult]) -> LoadResult:
    return LoadResult(
        requests=sum(r.requests for r in results),
        errors=sum(r.errors for r in results),
        seconds=sum(r.seconds for r in results),
        latencies_s=[x for r in results for x in r.latencies_s],
    )


async def drive(url: str, bodies: list[bytes], *, seconds: float, concurrency: int) -> LoadResult:
    """Closed-loop load: ``concurrency`` clients, each sending as soon as its answer arrives."""
    latencies: list[float] = []
    errors = 0
    deadline = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient, offset: int) -> None:
        nonlocal errors
        i = offset
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            response = await client.post(
                url, content=bodies[i % len(bodies)], headers={"content-type": "image/png"}
            )
            latencies.append(time.perf_counter() - started)
            errors += response.status_code != 200
            i += concurrency

    started = time.perf_counter()
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        await asyncio.gather(*(client_loop(client, k) for k in range(concurrency)))
    return LoadResult(len(latencies), errors, time.perf_counter() - started, latencies)


def deploy_both(port: int, drift_overrides: dict) -> None:
    from ray import serve

    from serve_drift.apps.classifier import ImageClassifier, build_app

    serve.start(http_options={"host": "127.0.0.1", "port": port})
    # The same deployment options build_app uses, so only monitoring differs.
    bare = serve.deployment(ImageClassifier).options(
        name="BareClassifier", max_ongoing_requests=32, max_queued_requests=256
    )
    serve.run(bare.bind({"source": "digits"}), name="bare", route_prefix="/bare")
    wrapped_args = {
        "model": {"source": "digits"},
        "drift": {"window": {"size": 200}, "detectors": [{"backend": "native"}], **drift_overrides},
    }
    serve.run(build_app(wrapped_args), name="wrapped", route_prefix="/wrapped")


def png_bodies(n: int) -> list[bytes]:
    from serve_drift.models.digits import split_digits
    from serve_drift.tools.imageio import encode_png

    images = split_digits(seed=0).test_images[:n]
    return [encode_png(image) for image in images]


def http_benchmark(args: argparse.Namespace) -> dict[tuple[int, str], LoadResult]:
    """Alternating rounds: saturating load (for throughput) and light load (for latency)."""
    import ray
    from ray import serve

    ray.init(
        num_cpus=8,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=False,
    )
    try:
        deploy_both(args.port, json.loads(args.drift_json))
        bodies = png_bodies(200)
        base = f"http://127.0.0.1:{args.port}"
        for name in VARIANTS:  # warm-up: connections, first-call paths
            asyncio.run(drive(f"{base}/{name}/predict", bodies, seconds=2, concurrency=4))
        rounds: dict[tuple[int, str], list[LoadResult]] = {}
        for r in range(args.rounds):
            for concurrency in (args.concurrency, 1):
                for name in VARIANTS if r % 2 == 0 else VARIANTS[::-1]:
                    result = asyncio.run(
                        drive(
                            f"{base}/{name}/predict",
                            bodies,
                            seconds=args.seconds,
                            concurrency=concurrency,
                        )
                    )
                    rounds.setdefault((concurrency, name), []).append(result)
        return {key: merge(results) for key, results in rounds.items()}
    finally:
        serve.shutdown()
        ray.shutdown()


def in_process_benchmark(iterations: int) -> tuple[float, float]:
    """Median microseconds per call: bare handler vs monitored handler (no HTTP, no Ray)."""
    import torch

    from serve_drift import monitored
    from serve_drift.models.digits import (
        load_or_train_digits_model,
        preprocess_digits,
        split_digits,
    )
    from serve_drift.replica.decorator import replica_monitor

    model, _ = load_or_train_digits_model()
    x = preprocess_digits(split_digits(seed=0).test_images[:1])

    class Bare:
        def __init__(self) -> None:
            self.model = model

        async def __call__(self, batch: torch.Tensor) -> int:
            with torch.no_grad():
                return int(self.model(batch).argmax())

    class NullMonitor:
        class ingest:
            @staticmethod
            async def remote(batch: object) -> None:
                return None

    Wrapped = monitored({"shipping": {"flush_interval_s": 0.05}})(Bare)

    async def time_calls(instance: object) -> list[float]:
        samples = []
        for _ in range(iterations):
            started = time.perf_counter()
            await instance(x)  # type: ignore[operator]
            samples.append(time.perf_counter() - started)
        return samples

    async def run() -> tuple[list[float], list[float]]:
        bare, wrapped = Bare(), Wrapped(drift_monitor=NullMonitor())
        await time_calls(bare), await time_calls(wrapped)  # warm-up
        b, w = await time_calls(bare), await time_calls(wrapped)
        await replica_monitor(wrapped).shipper.stop()
        return b, w

    torch.set_num_threads(1)
    b, w = asyncio.run(run())
    return statistics.median(b) * 1e6, statistics.median(w) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument(
        "--drift-json", default="{}", help="DriftConfig overrides for the wrapped app"
    )
    parser.add_argument("--iterations", type=int, default=3000, help="in-process calls per variant")
    args = parser.parse_args()
    os.environ.setdefault("SERVE_DRIFT_CONFIGURE_OTEL", "0")

    bare_us, wrapped_us = in_process_benchmark(args.iterations)
    print("In-process handler (digits CNN, batch 1, CPU, 1 thread), median per call:")
    print(f"  bare     {bare_us:8.1f} us")
    print(f"  wrapped  {wrapped_us:8.1f} us   added {wrapped_us - bare_us:+.1f} us per request")

    results = http_benchmark(args)
    for concurrency in (args.concurrency, 1):
        bare, wrapped = results[(concurrency, "bare")], results[(concurrency, "wrapped")]
        print(
            f"\nHTTP, {concurrency} concurrent client(s), {args.rounds} x {args.seconds:.0f} s "
            "alternating rounds each:"
        )
        print(f"  {'variant':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name, r in (("bare", bare), ("wrapped", wrapped)):
            print(
                f"  {name:<8} {r.throughput:8.1f} {r.percentile_ms(50):8.2f} "
                f"{r.percentile_ms(99):8.2f} {r.errors:7d}"
            )
        ratio = wrapped.throughput / bare.throughput
        print(f"  throughput wrapped/bare = {ratio:.3f}  (target >= 0.97)")
        print(
            f"  p50 added = {wrapped.percentile_ms(50) - bare.percentile_ms(50):+.2f} ms  "
            "(target <= 1 ms)"
        )
        print(f"  p99 wrapped/bare = {wrapped.percentile_ms(99) / bare.percentile_ms(99):.3f}")


if __name__ == "__main__":
    main()
