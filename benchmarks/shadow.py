"""Shadow traffic's cost to the incumbent: throughput and latency with and without a mirror.

One Ray Serve instance, in one run, alternating rounds over real HTTP:

- ``direct``: the incumbent app itself, no router (what the router hop costs);
- ``router``: the shadow router, mirror fraction 0 (the baseline: the same router, mirroring
  nothing);
- ``mirror``: an identical router, mirror fraction 1.0 to a real candidate (the digits CNN,
  another seed: the same work as the incumbent, with its own drift monitor), copies sent in
  batches (``candidate_batch_size`` 32, the default);
- ``percopy``: the same, one handle call per copy (``candidate_batch_size: 1``: what a
  candidate without a batch method gets);
- ``nice``: the same, to a second copy of that candidate whose replicas run at nice 10
  (``niceness: 10``), so that under contention its copies wait or are dropped;
- ``null``: an identical router, mirror fraction 1.0 to a candidate that answers at once
  (the mirror's own cost: the router's buffer, batches to the comparator, the comparator's
  calls to the candidate, the candidate's Serve overhead, pairing and comparison).

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
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    CpuMeter,
    Endpoint,
    LoadResult,
    closed_loop,
    digits_pngs,
    find_pids,
    free_port,
)

VARIANTS = ("direct", "router", "mirror", "percopy", "nice", "null")
PREFIXES = {name: f"/{name}" for name in VARIANTS}
ADMIN_TOKEN = "benchmark-admin-token-" + os.urandom(8).hex()


class NullCandidate:
    """Answers every request at once, with a valid answer: only the mirror's cost remains.

    Not ``@monitored``, so it takes batches of copies the way any deployment can: a
    ``serve_drift_batch`` method that hands them to :func:`serve_drift.answer_batch`.
    """

    async def __call__(self, request: Any) -> dict[str, Any]:
        return {"class_index": 0, "confidence": 1.0, "model_version": "null"}

    async def serve_drift_batch(self, items: list[Any], timeout_s: float) -> list[Any]:
        from serve_drift import answer_batch

        return await answer_batch(self.__call__, items, timeout_s=timeout_s)


def _arm_args(name: str, store: Path) -> dict[str, Any]:
    return {
        "model": {"source": "digits"},
        "drift": {
            "model_name": name,
            "events": {"path": str(store / f"{name}.sqlite")},
            "telemetry": {"configure_sdk": True},
        },
    }


def _router_args(
    name: str, candidate: str, fraction: float, store: Path, *, batch: int = 32
) -> dict[str, Any]:
    return {
        "router": {
            "name": name,
            "incumbent": {"app": "incumbent"},
            "candidate": {"app": candidate},
            "mirror": {"fraction": fraction, "candidate_batch_size": batch},
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
    for name, candidate_app, fraction, batch in (
        ("router", "candidate", 0.0, 32),
        ("mirror", "candidate", 1.0, 32),
        ("percopy", "candidate", 1.0, 1),
        ("nice", "nice-candidate", 1.0, 32),
        ("null", "null-candidate", 1.0, 32),
    ):
        args = _router_args(name, candidate_app, fraction, store, batch=batch)
        serve.run(build_router(args), name=name, route_prefix=PREFIXES[name])


def serve_processes() -> dict[str, int]:
    """Every Serve process of ours by title (``ProxyActor``, ``ServeReplica:<app>:<name>``)."""
    titles = {_title(int(e.name)) for e in Path("/proc").iterdir() if e.name.isdigit()}
    serve_titles = (t for t in titles if t.startswith(("ServeReplica:", "ProxyActor")))
    return {t: pids[0] for t in serve_titles if (pids := find_pids(t))}


def _title(pid: int) -> str:
    try:
        words = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().split()
    except (OSError, UnicodeDecodeError):
        return ""
    return words[0].removeprefix("ray::") if words and words[0].startswith("ray::") else ""


Rounds = dict[tuple[int, str], LoadResult]
CpuByRound = dict[tuple[int, str], dict[str, float]]


def run_rounds(args: argparse.Namespace, port: int) -> tuple[Rounds, CpuByRound]:
    bodies = digits_pngs(200)
    endpoints = {
        name: Endpoint(
            port=port, path=f"{PREFIXES[name]}/predict", bodies=bodies, content_type="image/png"
        )
        for name in VARIANTS
    }
    for endpoint in endpoints.values():  # warm-up: connections, first calls, handles, caches
        asyncio.run(closed_loop(endpoint, seconds=3, concurrency=4))
    pids = serve_processes()
    rounds: dict[tuple[int, str], list[LoadResult]] = {}
    cpu: CpuByRound = {}
    for r in range(args.rounds):
        order = VARIANTS if r % 2 == 0 else VARIANTS[::-1]
        for concurrency in (args.concurrency, 1):
            for name in order:
                meter = CpuMeter(pids)
                result = asyncio.run(
                    closed_loop(endpoints[name], seconds=args.seconds, concurrency=concurrency)
                )
                spent = cpu.setdefault((concurrency, name), {})
                for title, seconds in meter.spent().items():
                    spent[title] = spent.get(title, 0.0) + seconds
                rounds.setdefault((concurrency, name), []).append(result)
    return {
        key: functools.reduce(LoadResult.merged, results) for key, results in rounds.items()
    }, cpu


def mirror_outcomes(base: str, name: str) -> dict[str, int]:
    """Copies by outcome: dropped at the router's buffer, then as the comparator counted them."""
    headers = {"authorization": f"Bearer {ADMIN_TOKEN}"}
    body = httpx.get(f"{base}{PREFIXES[name]}/shadow", headers=headers, timeout=30).json()
    router_dropped = body["routing"]["replica"]["copies_dropped"]
    return {**body["mirror"], **{f"router_{k}": v for k, v in router_dropped.items()}}


def print_results(args: argparse.Namespace, results: Rounds) -> None:
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
                f"{r.percentile_ms(99):8.2f} {r.not_ok:7d}"
            )


def print_cpu(args: argparse.Namespace, results: Rounds, cpu: CpuByRound) -> None:
    """Where the CPU of an answered request went, per process, at saturating load."""
    key = args.concurrency
    titles = sorted({t for (c, _), spent in cpu.items() if c == key for t in spent})
    print(f"\nCPU ms per answered request, {key} clients (processes above 0.05 ms somewhere):")
    print(f"  {'process':<44}" + "".join(f"{name:>9}" for name in VARIANTS))
    for title in titles:
        row = [cpu[(key, n)].get(title, 0.0) / max(results[(key, n)].ok, 1) * 1e3 for n in VARIANTS]
        if max(row) >= 0.05:
            print(f"  {title[:44]:<44}" + "".join(f"{v:9.2f}" for v in row))


def print_verdicts(args: argparse.Namespace, results: Rounds) -> None:
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
    parser.add_argument("--port", type=int, default=0, help="HTTP port (0: a free one)")
    args = parser.parse_args()
    args.port = args.port or free_port()
    os.environ["SERVE_DRIFT_CONFIGURE_OTEL"] = "1"
    os.environ["SERVE_DRIFT_ADMIN_TOKEN"] = ADMIN_TOKEN
    work = Path(tempfile.mkdtemp(prefix="serve-drift-shadow-bench-"))
    if not os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ["SERVE_DRIFT_TELEMETRY_DIR"] = str(work / "telemetry")

    import ray
    from ray import serve

    from serve_drift.tools.local_ray import start_local_ray

    start_local_ray(
        num_cpus=16,
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=False,
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        started = time.monotonic()
        deploy(work)
        print(f"Deployed 4 apps and 5 routers in {time.monotonic() - started:.0f} s; {work}")
        print(f"Load average before the rounds (1, 5, 15 min): {_load()}")
        base = f"http://127.0.0.1:{args.port}"
        results, cpu = run_rounds(args, args.port)
        print_results(args, results)
        print_cpu(args, results, cpu)
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
