"""Shadow traffic's cost to the incumbent: throughput and latency with and without a mirror.

One Ray Serve instance, in one run, alternating rounds over real HTTP:

- ``direct``: the incumbent app itself, no router (what the router hop costs);
- ``router``: the shadow router, mirror fraction 0 (the baseline: the same router, mirroring
  nothing);
- ``mirror``: an identical router, mirror fraction 1.0 to a real candidate (the digits CNN,
  another seed: the same work as the incumbent, with its own drift monitor);
- ``nice``: the same, to a second copy of that candidate whose replicas run at nice 10
  (``niceness: 10``), so that under contention its copies wait or are dropped;
- ``null``: an identical router, mirror fraction 1.0 to a candidate that answers at once
  (the mirror's own cost: the router's buffer, batches to the comparator, the comparator's
  call per copy, pairing and comparison).

Every arm is the ready-made app with the default detector and the event log; the OTel SDK is
on in every process, exporting (to JSON-lines files unless OTEL_EXPORTER_OTLP_ENDPOINT is set).
The routers share their deployment options and differ only in ``mirror.fraction`` and the
candidate they name. Throughput is read at saturating load (every core busy), added latency
at one client. Targets (issue 12): ``mirror`` throughput >= 95 % of ``router``'s, p50 added
<= 1 ms. On a 2-core machine the candidate's compute shares the incumbent's cores: ``null``
separates the mirror's own cost from the candidate's.

    python benchmarks/shadow.py [--seconds 6] [--rounds 3] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from overhead import LoadResult, drive, merge, png_bodies  # the same load generator

VARIANTS = ("direct", "router", "mirror", "nice", "null")
PREFIXES = {name: f"/{name}" for name in VARIANTS}
ADMIN_TOKEN = "benchmark-admin-token-" + os.urandom(8).hex()


class NullCandidate:
    """Answers every request at once, with a valid answer: only the mirror's cost remains."""

    async def __call__(self, request: Any) -> dict[str, Any]:
        return {"class_index": 0, "confidence": 1.0, "model_version": "null"}


def _arm_args(name: str, store: Path) -> dict[str, Any]:
    return {
        "model": {"source": "digits"},
        "drift": {
            "model_name": name,
            "events": {"path": str(store / f"{name}.sqlite")},
            "telemetry": {"configure_sdk": True},
        },
    }


def _router_args(name: str, candidate: str, fraction: float, store: Path) -> dict[str, Any]:
    return {
        "router": {
            "name": name,
            "incumbent": {"app": "incumbent"},
            "candidate": {"app": candidate},
            "mirror": {"fraction": fraction},
            "comparison": {"path": str(store / f"{name}.sqlite")},
            "telemetry": {"configure_sdk": True},
        }
    }


def deploy(store: Path) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app
    from serve_drift.routing.app import build_app as build_router
    from serve_drift.tools.shadow_models import build_app as build_variant

    serve.run(build_app(_arm_args("incumbent", store)), name="incumbent", route_prefix="/direct")
    for name, niceness in (("candidate", 0), ("nice-candidate", 10)):
        args = {**_arm_args(name, store), "variant": {"seed": 1, "epochs": 30}}
        serve.run(build_variant({**args, "niceness": niceness}), name=name, route_prefix=None)
    null: Any = serve.deployment(NullCandidate)
    serve.run(
        null.options(max_ongoing_requests=64).bind(), name="null-candidate", route_prefix=None
    )
    for name, candidate_app, fraction in (
        ("router", "candidate", 0.0),
        ("mirror", "candidate", 1.0),
        ("nice", "nice-candidate", 1.0),
        ("null", "null-candidate", 1.0),
    ):
        args = _router_args(name, candidate_app, fraction, store)
        serve.run(build_router(args), name=name, route_prefix=PREFIXES[name])


def run_rounds(args: argparse.Namespace, base: str) -> dict[tuple[int, str], LoadResult]:
    bodies = png_bodies(200)
    for name in VARIANTS:  # warm-up: connections, first calls, handles, model caches
        asyncio.run(drive(f"{base}{PREFIXES[name]}/predict", bodies, seconds=3, concurrency=4))
    rounds: dict[tuple[int, str], list[LoadResult]] = {}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for concurrency in (args.concurrency, 1):
            for name in order:
                url = f"{base}{PREFIXES[name]}/predict"
                result = asyncio.run(
                    drive(url, bodies, seconds=args.seconds, concurrency=concurrency)
                )
                rounds.setdefault((concurrency, name), []).append(result)
    return {key: merge(results) for key, results in rounds.items()}


def mirror_outcomes(base: str, name: str) -> dict[str, int]:
    """Copies by outcome: dropped at the router's buffer, then as the comparator counted them."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    body = httpx.get(f"{base}{PREFIXES[name]}/shadow", headers=headers, timeout=30).json()
    router_dropped = body["routing"]["replica"]["copies_dropped"]
    return {**body["mirror"], **{f"router_{k}": v for k, v in router_dropped.items()}}


def print_results(args: argparse.Namespace, results: dict[tuple[int, str], LoadResult]) -> None:
    for concurrency in (args.concurrency, 1):
        print(
            f"\nHTTP, {concurrency} concurrent client(s), {args.rounds} x {args.seconds:.0f} s "
            "alternating rounds each:"
        )
        print(f"  {'variant':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
        for name in VARIANTS:
            r = results[(concurrency, name)]
            print(
                f"  {name:<8} {r.throughput:8.1f} {r.percentile_ms(50):8.2f} "
                f"{r.percentile_ms(99):8.2f} {r.errors:7d}"
            )


def print_verdicts(args: argparse.Namespace, results: dict[tuple[int, str], LoadResult]) -> None:
    busy = {name: results[(args.concurrency, name)] for name in VARIANTS}
    light = {name: results[(1, name)] for name in VARIANTS}
    ratio = busy["mirror"].throughput / busy["router"].throughput
    null_ratio = busy["null"].throughput / busy["router"].throughput
    loss = busy["router"].throughput - busy["mirror"].throughput
    mechanism = busy["router"].throughput - busy["null"].throughput
    added = light["mirror"].percentile_ms(50) - light["router"].percentile_ms(50)
    print("\nTargets (incumbent through the router, mirror 100 % vs mirror 0 %):")
    print(f"  throughput mirror/router = {ratio:.3f}  (target >= 0.95: {_met(ratio >= 0.95)})")
    print(f"  p50 added at 1 client = {added:+.2f} ms  (target <= 1 ms: {_met(added <= 1.0)})")
    p99 = light["mirror"].percentile_ms(99) - light["router"].percentile_ms(99)
    print(f"  p99 added at 1 client = {p99:+.2f} ms")
    print("Where the throughput went:")
    print(f"  null/router = {null_ratio:.3f}: the mirror's own cost, {mechanism:+.1f} req/s")
    if loss > 0 and 0 <= mechanism <= loss:
        share = (loss - mechanism) / loss
        own = loss - mechanism
        print(f"  the candidate's own compute: {own:+.1f} req/s ({share:.0%} of the loss)")
    else:  # the null candidate cost as much as the real one, or more
        print("  the candidate's own compute: not separable from the noise in this run")
    nice = busy["nice"].throughput / busy["router"].throughput
    nice_added = light["nice"].percentile_ms(50) - light["router"].percentile_ms(50)
    print(
        f"With the candidate at nice 10: throughput {nice:.3f} ({_met(nice >= 0.95)}), "
        f"p50 added {nice_added:+.2f} ms ({_met(nice_added <= 1.0)}); see its drops above"
    )
    hop = busy["direct"].throughput / busy["router"].throughput
    hop_ms = light["router"].percentile_ms(50) - light["direct"].percentile_ms(50)
    print(f"  the router hop itself: direct/router = {hop:.3f}, p50 {hop_ms:+.2f} ms at 1 client")


def _load() -> str:
    return ", ".join(f"{x:.1f}" for x in os.getloadavg())


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds per load round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per variant")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8124)
    args = parser.parse_args()
    os.environ["SERVE_DRIFT_CONFIGURE_OTEL"] = "1"
    os.environ["SERVE_DRIFT_ADMIN_TOKEN"] = ADMIN_TOKEN
    work = Path(tempfile.mkdtemp(prefix="serve-drift-shadow-bench-"))
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ["SERVE_DRIFT_TELEMETRY_DIR"] = str(work / "telemetry")

    import ray
    from ray import serve

    from serve_drift.tools.local_ray import start_local_ray

    start_local_ray(
        num_cpus=16, log_to_driver=False, logging_level=logging.ERROR, configure_logging=False
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        started = time.monotonic()
        deploy(work)
        print(f"Deployed 4 apps and 4 routers in {time.monotonic() - started:.0f} s; {work}")
        print(f"Load average before the rounds (1, 5, 15 min): {_load()}")
        base = f"http://127.0.0.1:{args.port}"
        results = run_rounds(args, base)
        print_results(args, results)
        copies_to = (
            ("mirror", "the real candidate"),
            ("nice", "the real candidate at nice 10"),
            ("null", "the null candidate"),
        )
        for name, what in copies_to:
            outcomes = mirror_outcomes(base, name)
            total = sum(v for k, v in outcomes.items() if k != "pending")
            dropped = sum(v for k, v in outcomes.items() if "dropped" in k)
            print(f"\nCopies to {what}, whole run: {outcomes}")
            print(f"  dropped: {dropped} of {total} ({dropped / max(total, 1):.1%})")
        print(f"Load average after the rounds: {_load()} (on {os.cpu_count()} cores)")
        print_verdicts(args, results)
    finally:
        serve.shutdown()
        ray.shutdown()


if __name__ == "__main__":
    main()
