"""``serve-drift shadow demo``: the digits CNN shadowed by a weaker candidate, then an equal one.

1. The incumbent (the default digits CNN) and a deliberately weaker candidate (2 training
   epochs) are deployed as two ordinary monitored apps, each with its own drift monitor,
   behind a shadow router (``deployments/shadow.yaml`` is the same setup in YAML).
2. Digits traffic goes to the router over HTTP: the incumbent answers every request, a copy
   of each goes to the candidate; the labels follow, as a labelling team would send them.
3. The comparison per window and the decision are printed: roll back, with the evidence;
   the rollback is applied through the router and recorded.
4. The candidate app is redeployed with an equally good model (another seed), shadowing
   resumes in a new epoch, and the decision is promote; the promotion is applied and the
   next requests are answered by the candidate.
"""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console

from serve_drift import _env
from serve_drift.tools.demo import DemoOptions, _admin_token, _start_serve, _telemetry_env

INCUMBENT_APP = "shadow-demo-incumbent"
CANDIDATE_APP = "shadow-demo-candidate"
ROUTER_APP = "shadow-demo"
WEAK = {"seed": 0, "epochs": 2}
EQUAL = {"seed": 1, "epochs": 30}


@dataclass(frozen=True)
class ShadowDemoOptions:
    requests: int = 400
    concurrency: int = 8
    window_size: int = 100
    port: int = 8000
    seed: int = 0
    wait_s: float = 90.0


@dataclass
class PhaseOutcome:
    name: str
    sent: int = 0
    failed: int = 0
    answered_by: dict[str, int] = field(default_factory=dict)  # model_version -> responses
    verdict: str | None = None
    applied: bool = False


@dataclass
class ShadowDemoSummary:
    ok: bool
    phases: list[PhaseOutcome]


def _router_args(options: ShadowDemoOptions, *, store: Path, token_file: Path) -> dict[str, Any]:
    return {
        "router": {
            "name": ROUTER_APP,
            "mode": "shadow",
            "incumbent": {"app": INCUMBENT_APP},
            "candidate": {"app": CANDIDATE_APP},
            "mirror": {"fraction": 1.0},
            "comparison": {"window_size": options.window_size, "path": str(store)},
            "decision": {
                "min_pairs": 2 * options.window_size,
                "min_labels": 2 * options.window_size,
                "min_agreement": 0.9,
                "max_accuracy_drop": 0.02,
            },
            "telemetry": {"configure_sdk": True},
            "admin": {"token_file": str(token_file)},
        }
    }


def _arm_args(
    options: ShadowDemoOptions, name: str, *, events: Path, token_file: Path
) -> dict[str, Any]:
    return {
        "model": {"source": "digits"},
        "drift": {
            "model_name": name,
            "window": {"size": options.window_size},
            "telemetry": {"configure_sdk": True},
            "events": {"path": str(events / f"{name}.sqlite")},
            "admin": {"token_file": str(token_file)},
        },
    }


def _deploy_candidate(
    options: ShadowDemoOptions, variant: dict[str, int], *, events: Path, token_file: Path
) -> None:
    from ray import serve

    from serve_drift.tools.shadow_models import build_app as build_variant

    name = f"digits-s{variant['seed']}-e{variant['epochs']}"
    args = {**_arm_args(options, name, events=events, token_file=token_file), "variant": variant}
    serve.run(build_variant(args), name=CANDIDATE_APP, route_prefix=None)


def _deploy(options: ShadowDemoOptions, run_dir: Path, token_file: Path) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app as build_classifier
    from serve_drift.routing.app import build_app as build_router

    incumbent = _arm_args(options, "digits", events=run_dir, token_file=token_file)
    serve.run(build_classifier(incumbent), name=INCUMBENT_APP, route_prefix=None)
    _deploy_candidate(options, WEAK, events=run_dir, token_file=token_file)
    router = _router_args(options, store=run_dir / "shadow.sqlite", token_file=token_file)
    serve.run(build_router(router), name=ROUTER_APP, route_prefix="/")


def _send(
    client: httpx.Client, images: np.ndarray, ids: list[str], options: ShadowDemoOptions
) -> list[str | None]:
    from serve_drift.tools.imageio import encode_png

    def one(i: int) -> str | None:
        headers = {"content-type": "image/png", "x-request-id": ids[i]}
        try:
            response = client.post("/predict", content=encode_png(images[i]), headers=headers)
        except httpx.HTTPError:
            return None
        return response.json().get("model_version") if response.status_code == 200 else None

    with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        return list(pool.map(one, range(len(ids))))


def send_labels(client: httpx.Client, labels: dict[str, int], *, wait_s: float) -> dict[str, str]:
    """Post labels through the router until each is judged (rows are recorded a moment after
    the answer, so an early label can meet ``unknown_correlation_id``)."""
    status: dict[str, str] = {}
    pending = dict(labels)
    deadline = time.monotonic() + wait_s
    while pending and time.monotonic() < deadline:
        body = {"labels": [{"correlation_id": c, "label": y} for c, y in pending.items()]}
        response = client.post("/labels", json=body)
        for result in response.json().get("results", []) if response.status_code == 200 else []:
            status[result["correlation_id"]] = result["status"]
            if result["status"] != "unknown_correlation_id":
                pending.pop(result["correlation_id"], None)
        if pending:
            time.sleep(0.5)
    return status


def wait_for_report(
    client: httpx.Client, *, observations: int, labelled: int, wait_s: float
) -> dict[str, Any]:
    """The shadow report once the comparator holds ``observations`` requests with
    ``labelled`` labels and the candidate's monitor has tested a window."""
    deadline = time.monotonic() + wait_s
    report: dict[str, Any] = {}
    while time.monotonic() < deadline:
        report = client.get("/shadow").json()
        summary = report["decision"]["evidence"]["summary"]
        drift = report["decision"]["evidence"]["drift"].get("candidate", {})
        if (
            summary["observations"] >= observations
            and summary["paired_labels"] >= labelled
            and drift.get("windows", 0) > 0
        ):
            break
        time.sleep(0.5)
    return report


def _phase(
    client: httpx.Client,
    name: str,
    options: ShadowDemoOptions,
    console: Console,
) -> tuple[PhaseOutcome, dict[str, Any]]:
    from serve_drift.models.digits import split_digits

    split = split_digits(seed=0)
    rng = np.random.default_rng(options.seed + len(name))
    picks = rng.integers(0, len(split.test_images), size=options.requests)
    ids = [f"shadow-demo-{name}-{uuid.uuid4().hex[:8]}-{i:05d}" for i in range(len(picks))]
    with console.status(f"{name}: {len(ids)} requests through the shadow router..."):
        versions = _send(client, split.test_images[picks], ids, options)
    outcome = PhaseOutcome(name, sent=len(ids), failed=sum(v is None for v in versions))
    for version in versions:
        if version is not None:
            outcome.answered_by[version] = outcome.answered_by.get(version, 0) + 1
    labels = {cid: int(split.test_labels[p]) for cid, p in zip(ids, picks, strict=True)}
    with console.status(f"{name}: sending the true labels, then waiting for the comparison..."):
        send_labels(client, labels, wait_s=options.wait_s)
        report = wait_for_report(
            client, observations=len(ids), labelled=len(ids), wait_s=options.wait_s
        )
    return outcome, report


def _print_report(report: dict[str, Any], console: Console) -> None:
    from serve_drift.tools.shadow_tables import format_report

    console.print(format_report(report), markup=False, highlight=False, soft_wrap=True)


def _apply(client: httpx.Client, action: str, reason: str, console: Console) -> bool:
    from serve_drift.tools.shadow_tables import format_change

    response = client.post(f"/shadow/{action}", json={"reason": reason})
    body = response.json()
    console.print(f"[bold]{action}[/]: {format_change(body)}", highlight=False, soft_wrap=True)
    return bool(body.get("applied"))


def run_shadow_demo(
    options: ShadowDemoOptions, *, console: Console | None = None
) -> ShadowDemoSummary:
    """Run the whole shadow demo; returns what happened (also printed)."""
    console = console or Console()
    started = time.monotonic()
    for line in _telemetry_env():
        console.print(f"Telemetry: {line}")
    run_dir = _env.cache_dir() / "shadow-demo" / time.strftime("%Y%m%d-%H%M%S")
    token_file, admin = _admin_token()
    started_ray = _start(options, console)
    try:
        with console.status("Training or loading three digits CNNs, deploying two arms..."):
            _deploy(options, run_dir, token_file)
        phases = _run_phases(options, run_dir, token_file, admin, console)
    finally:
        _stop(started_ray)
    console.print(f"Comparison store: {run_dir / 'shadow.sqlite'}")
    console.print(f"Shadow demo finished in {time.monotonic() - started:.1f} s")
    ok = [p.verdict for p in phases[:2]] == ["rollback", "promote"] and not any(
        p.failed for p in phases
    )
    return ShadowDemoSummary(ok=ok, phases=phases)


def _run_phases(
    options: ShadowDemoOptions,
    run_dir: Path,
    token_file: Path,
    admin: dict[str, str],
    console: Console,
) -> list[PhaseOutcome]:
    base = f"http://127.0.0.1:{options.port}"
    with httpx.Client(base_url=base, headers=admin, timeout=60) as client:
        weak, report = _phase(client, "weak", options, console)
        _summarise_phase(weak, report, console)
        weak.applied = _apply(client, "rollback", "demo: the weaker candidate", console)
        with console.status("Redeploying the candidate app with an equally good model..."):
            _deploy_candidate(options, EQUAL, events=run_dir, token_file=token_file)
        _apply(client, "resume", "demo: a new candidate to shadow", console)
        equal, report = _phase(client, "equal", options, console)
        _summarise_phase(equal, report, console)
        equal.applied = _apply(client, "promote", "demo: the equal candidate", console)
        after = _after_promotion(client, options, console)
    return [weak, equal, after]


def _summarise_phase(outcome: PhaseOutcome, report: dict[str, Any], console: Console) -> None:
    outcome.verdict = report["decision"]["verdict"]
    answered = ", ".join(f"{n} by {v}" for v, n in outcome.answered_by.items())
    console.rule(f"{outcome.name} candidate")
    console.print(f"{outcome.sent} requests, {outcome.failed} failed; answered {answered}")
    _print_report(report, console)


def _after_promotion(
    client: httpx.Client, options: ShadowDemoOptions, console: Console
) -> PhaseOutcome:
    from serve_drift.models.digits import split_digits

    images = split_digits(seed=0).test_images[:50]
    ids = [f"shadow-demo-after-{uuid.uuid4().hex[:8]}-{i}" for i in range(len(images))]
    versions = _send(client, images, ids, options)
    outcome = PhaseOutcome(
        "after promotion", sent=len(ids), failed=sum(v is None for v in versions)
    )
    for version in versions:
        if version is not None:
            outcome.answered_by[version] = outcome.answered_by.get(version, 0) + 1
    answered = ", ".join(f"{v} ({n})" for v, n in outcome.answered_by.items())
    console.print(f"after promotion: {len(ids)} requests answered by {answered}")
    return outcome


def _start(options: ShadowDemoOptions, console: Console) -> bool:
    return _start_serve(DemoOptions(port=options.port), console)


def _stop(started_ray: bool) -> None:
    import ray
    from ray import serve

    if started_ray:
        serve.shutdown()
        ray.shutdown()
        return
    for app in (ROUTER_APP, CANDIDATE_APP, INCUMBENT_APP):
        serve.delete(app)
