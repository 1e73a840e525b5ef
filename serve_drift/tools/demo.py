"""``serve-drift demo``: the embedded model served, monitored and pushed through shifts."""

from __future__ import annotations

import logging
import os
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serve_drift import _env
from serve_drift.files import atomic_write
from serve_drift.tools.demo_alerts import DemoAlert, DemoReceiver, alerts_table, firing_alerts
from serve_drift.tools.local_ray import start_local_ray

APP_NAME = "serve-drift-demo"
# (phase, shift applied to every image, severity): clean traffic first, then three shifts.
PHASES = (
    ("clean", None, 0.0),
    ("brightness", "brightness", 0.5),
    ("noise", "gaussian_noise", 0.5),
    ("occlusion", "occlusion", 0.5),
)


@dataclass(frozen=True)
class DemoOptions:
    window_size: int = 100
    clean_windows: int = 3
    # The default drift rule wants 3 of the last 4 windows: a shift of 3 windows can alert.
    shift_windows: int = 3
    concurrency: int = 8
    port: int = 8000
    # "kind" or "kind:backend": the default detector beside alibi-detect's and our MMD.
    detectors: tuple[str, ...] = ("combined", "mmd:alibi", "mmd:native")
    seed: int = 0
    result_timeout_s: float = 90.0


@dataclass
class PhaseTraffic:
    name: str
    sent: int = 0
    failed: int = 0
    correct: int = 0
    labels: dict[str, int] = field(default_factory=dict)  # correlation ID -> true class


@dataclass
class DemoSummary:
    ok: bool
    results: list[dict[str, Any]]
    first_drift_window: dict[str, int | None]
    phases: list[PhaseTraffic]
    telemetry: list[str] = field(default_factory=list)
    alerts: list[DemoAlert] = field(default_factory=list)


def _telemetry_env() -> list[str]:
    """Make every Ray process export telemetry; say where it goes."""
    os.environ.setdefault("OTEL_METRIC_EXPORT_INTERVAL", "2000")
    os.environ.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if endpoint:
        return [f"OTLP ({os.environ.get('OTEL_EXPORTER_OTLP_PROTOCOL', 'grpc')}) to {endpoint}"]
    directory = _env.telemetry_dir().resolve()
    os.environ["SERVE_DRIFT_TELEMETRY_DIR"] = str(directory)
    return [
        f"JSON lines in {directory} (spans-<pid>.jsonl, metrics-<pid>.jsonl); "
        "set OTEL_EXPORTER_OTLP_ENDPOINT to send them to a collector instead"
    ]


def _start_serve(options: DemoOptions, console: Console) -> bool:
    started_ray = start_local_ray(
        num_cpus=max(4, os.cpu_count() or 1),
        log_to_driver=False,
        logging_level=logging.ERROR,
        configure_logging=False,
    )
    from ray import serve

    serve.start(http_options={"host": "127.0.0.1", "port": options.port})
    console.print(f"[bold]Ray Serve[/] listening on http://127.0.0.1:{options.port}")
    return started_ray


def _deploy(options: DemoOptions, *, events_path: Path, token_file: Path, hook_url: str) -> None:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": "digits",
            "window": {"size": options.window_size},
            "detectors": [_detector_config(d) for d in options.detectors],
            "telemetry": {"configure_sdk": True, "link_sample_size": 16},
            # Keep every event, so the labels sent afterwards all join (production samples).
            "events": {"path": str(events_path), "sample_rate": 1.0},
            "admin": {"token_file": str(token_file)},
            # The default rules; notified on the monitor's stdout and the demo's webhook.
            "alerts": {"sinks": [{"kind": "stdout"}, {"kind": "webhook", "url": hook_url}]},
        },
    }
    serve.run(build_app(args), name=APP_NAME, route_prefix="/", blocking=False)


def _detector_config(spec: str) -> dict[str, str]:
    kind, _, backend = spec.partition(":")
    return {"kind": kind, "backend": backend} if backend else {"kind": kind}


def _label(result: dict[str, Any]) -> str:
    """The column a result belongs to: ``kind:backend``, or just ``kind`` for the default."""
    return f"{result['detector']}:{result['backend']}"


def _column(spec: str, results: list[dict[str, Any]]) -> str:
    """Match a ``--detectors`` entry to its results' label (``combined`` -> ``combined:native``)."""
    return next((_label(r) for r in results if _label(r).startswith(spec)), spec)


def _phase_images(
    phase: tuple[str, str | None, float], pool: np.ndarray, *, count: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    from serve_drift.tools.shifts import apply_shift

    picks = rng.integers(0, len(pool), size=count)
    images = pool[picks]
    _, shift, severity = phase
    if shift is not None:
        images = apply_shift(shift, images, severity=severity, fraction=1.0, rng=rng)
    return images, picks


def _send_phase(
    client: httpx.Client,
    url: str,
    phase: str,
    images: np.ndarray,
    labels: np.ndarray,
    options: DemoOptions,
    progress: Progress,
    task: Any,
) -> PhaseTraffic:
    from serve_drift.tools.imageio import encode_png

    def send(i: int) -> tuple[bool, bool]:
        headers = {"content-type": "image/png", "x-request-id": _request_id(phase, i)}
        try:
            response = client.post(url, content=encode_png(images[i]), headers=headers)
        except httpx.HTTPError:
            return False, False
        finally:
            progress.advance(task)
        ok = response.status_code == 200
        return ok, ok and response.json()["class_index"] == int(labels[i])

    with ThreadPoolExecutor(max_workers=options.concurrency) as pool:
        outcomes = list(pool.map(send, range(len(images))))
    traffic = PhaseTraffic(phase, sent=len(outcomes))
    traffic.failed = sum(not ok for ok, _ in outcomes)
    traffic.correct = sum(correct for _, correct in outcomes)
    traffic.labels = {_request_id(phase, i): int(labels[i]) for i in range(len(images))}
    return traffic


def _request_id(phase: str, i: int) -> str:
    return f"demo-{phase}-{i:05d}"


def _label_feedback(
    options: DemoOptions, traffic: list[PhaseTraffic], events_path: Path, admin: dict[str, str]
) -> dict[int, float]:
    """Send every request's true label, as a labelling team would later; accuracy per window."""
    from serve_drift.eventlog.store import EventStore

    labels = [{"correlation_id": c, "label": y} for t in traffic for c, y in t.labels.items()]
    url = f"http://127.0.0.1:{options.port}/labels"
    httpx.post(url, json={"labels": labels}, headers=admin, timeout=60)
    accuracy: dict[int, float] = {}
    for record in EventStore(events_path).concept_metrics(tag="feedback", limit=1000):
        if record.window_index is not None:  # newest first: keep each window's latest
            accuracy.setdefault(record.window_index, record.metrics.accuracy)
    return accuracy


def _replay(options: DemoOptions, console: Console) -> list[PhaseTraffic]:
    from serve_drift.models.digits import split_digits

    split = split_digits(seed=0)
    rng = np.random.default_rng(options.seed)
    url = f"http://127.0.0.1:{options.port}/predict"
    plan = [
        (
            phase,
            options.window_size
            * (options.clean_windows if phase[1] is None else options.shift_windows),
        )
        for phase in PHASES
    ]
    traffic = []
    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress, httpx.Client(timeout=30) as client:
        for phase, count in plan:
            task = progress.add_task(f"{phase[0]} traffic", total=count)
            images, picks = _phase_images(phase, split.test_images, count=count, rng=rng)
            traffic.append(
                _send_phase(
                    client, url, phase[0], images, split.test_labels[picks], options, progress, task
                )
            )
    return traffic


def _wait_for_results(
    options: DemoOptions, expected: int, admin: dict[str, str]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + options.result_timeout_s
    results: list[dict[str, Any]] = []
    url = f"http://127.0.0.1:{options.port}/drift?limit=500"
    while time.monotonic() < deadline:
        body = httpx.get(url, headers=admin, timeout=10).json()
        results = body.get("results", [])
        if len(results) >= expected:
            break
        time.sleep(0.5)
    return results


def _window_phase(result: dict[str, Any]) -> str:
    phases = Counter(
        cid.split("-")[1] for cid in result["correlation_ids_sample"] if cid.count("-") >= 2
    )
    return phases.most_common(1)[0][0] if phases else "?"


def _results_table(
    results: list[dict[str, Any]], detectors: tuple[str, ...], accuracy: dict[int, float]
) -> Table:
    """One row per window: its traffic, accuracy from the labels, and each backend's p-value."""
    table = Table(title="Drift tests per window: p-values beside accuracy from labels")
    table.add_column("window", justify="right")
    table.add_column("traffic", no_wrap=True)
    table.add_column("accuracy", justify="right")
    columns = [_column(spec, results) for spec in detectors]
    for spec in detectors:
        table.add_column(f"p {spec}", justify="right", no_wrap=True)
    by_window: dict[int, dict[str, dict[str, Any]]] = {}
    for r in results:
        by_window.setdefault(r["window_index"], {})[_label(r)] = r
    for index in sorted(by_window):
        row = by_window[index]
        known = accuracy.get(index)
        cells = [str(index), _window_phase(next(iter(row.values())))]
        cells.append("-" if known is None else f"{known:.0%}")
        cells += [_p_cell(row.get(column)) for column in columns]
        table.add_row(*cells)
    return table


def _p_cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    return (
        f"{result['p_value']:.3f} [red]DRIFT[/]"
        if result["is_drift"]
        else f"{result['p_value']:.3f}   ok "
    )


def _first_drift(
    results: list[dict[str, Any]], detectors: tuple[str, ...]
) -> dict[str, int | None]:
    first: dict[str, int | None] = {}
    for spec in detectors:
        column = _column(spec, results)
        hits = [r["window_index"] for r in results if _label(r) == column and r["is_drift"]]
        first[spec] = min(hits) if hits else None
    return first


def _telemetry_files(lines: list[str]) -> list[str]:
    directory = Path(os.environ.get("SERVE_DRIFT_TELEMETRY_DIR", ""))
    if "OTEL_EXPORTER_OTLP_ENDPOINT" in os.environ or not directory.is_dir():
        return lines
    counts = {
        kind: sum(1 for f in directory.glob(f"{kind}-*.jsonl") for _ in f.open())
        for kind in ("spans", "metrics")
    }
    return [
        *lines,
        f"{counts['spans']} span records and {counts['metrics']} metric exports written so far",
    ]


def run_demo(options: DemoOptions, *, console: Console | None = None) -> DemoSummary:
    """Run the whole demo and return what it found (also printed)."""
    console = console or Console()
    started = time.monotonic()
    telemetry = _telemetry_env()
    from serve_drift.models.default_reference import ensure_digits_reference

    with console.status("Training or loading the digits CNN and its reference embeddings..."):
        reference_path, version = ensure_digits_reference()
    console.print(f"Model [bold]{version}[/], reference set {reference_path}")
    started_ray = _start_serve(options, console)
    events_path = _env.event_db_dir() / f"demo-{time.strftime('%Y%m%d-%H%M%S')}.sqlite"
    token_file, admin = _admin_token()
    receiver = DemoReceiver().__enter__()
    try:
        with console.status("Deploying the monitored app and its drift monitor..."):
            _deploy(options, events_path=events_path, token_file=token_file, hook_url=receiver.url)
        traffic = _replay(options, console)
        expected_windows = sum(t.sent for t in traffic) // options.window_size
        with console.status("Waiting for the drift monitor to test every window..."):
            results = _wait_for_results(options, expected_windows * len(options.detectors), admin)
        with console.status("Sending the true labels, as a labelling team would later..."):
            accuracy = _label_feedback(options, traffic, events_path, admin)
        time.sleep(1.5)  # one more export interval, so the files below are complete
        telemetry = [
            *_telemetry_files(telemetry),
            f"events and labels in {events_path} (serve-drift events list --db {events_path})",
        ]
        alerts = firing_alerts(receiver.received())
        summary = _summarise(options, results, traffic, accuracy, telemetry, console, started)
        summary.alerts = alerts
        _print_alerts(alerts, results, events_path, receiver.url, console)
    finally:
        receiver.__exit__(None, None, None)
        _stop_serve(started_ray)
    from serve_drift.tools.report import offer_report

    offer_report(events_path, console=console)
    return summary


def _admin_token() -> tuple[Path, dict[str, str]]:
    """A fresh admin token for this run, in a private file the replicas read (never in the
    Serve config), and the header the demo's admin calls (labels, drift results) carry."""
    token = secrets.token_urlsafe(32)
    path = _env.cache_dir() / "demo-admin-token"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, token.encode("utf-8"), mode=0o600)
    return path, {"authorization": f"Bearer {token}"}


def _summarise(
    options: DemoOptions,
    results: list[dict[str, Any]],
    traffic: list[PhaseTraffic],
    accuracy: dict[int, float],
    telemetry: list[str],
    console: Console,
    started: float,
) -> DemoSummary:
    console.print(_results_table(results, options.detectors, accuracy))
    for t in traffic:
        phase_accuracy = t.correct / max(t.sent - t.failed, 1)
        console.print(
            f"  {t.name:<11} {t.sent} requests, {t.failed} failed, accuracy {phase_accuracy:.1%}"
        )
    first = _first_drift(results, options.detectors)
    phases = {r["window_index"]: _window_phase(r) for r in results}
    for backend, index in first.items():
        verdict = "never" if index is None else f"at window {index} ({_window_kind(phases[index])})"
        console.print(f"Drift first detected by [bold]{backend}[/]: {verdict}")
    console.print(f"Windows tested: {len(phases)}")
    for line in telemetry:
        console.print(f"  {line}")
    console.print(f"Demo finished in {time.monotonic() - started:.1f} s")
    ok = bool(results) and all(t.failed == 0 for t in traffic)
    return DemoSummary(
        ok=ok, results=results, first_drift_window=first, phases=traffic, telemetry=telemetry
    )


DRIFT_RULES = ("input-drift", "drift-accuracy-drop")
EXPECTED = {"clean": None, "brightness": "warning", "occlusion": "critical"}


def drift_alert_severities(
    alerts: list[DemoAlert], results: list[dict[str, Any]]
) -> dict[str, list[str]]:
    """The severities of the drift alerts each phase raised (by the phase of the window that
    opened them), sorted: what the demo compares with ``EXPECTED``."""
    phases = {r["window_index"]: _window_phase(r) for r in results}
    found: dict[str, set[str]] = {}
    for alert in alerts:
        if alert.rule in DRIFT_RULES and alert.window in phases:
            found.setdefault(phases[alert.window], set()).add(alert.severity)
    return {phase: sorted(severities) for phase, severities in found.items()}


def _print_alerts(
    alerts: list[DemoAlert],
    results: list[dict[str, Any]],
    events_path: Path,
    hook_url: str,
    console: Console,
) -> None:
    """Where the alerts went, and whether each phase got the severity it deserves."""
    phases = {r["window_index"]: _window_phase(r) for r in results}
    console.print(alerts_table(alerts, lambda w: "-" if w is None else phases.get(w, "?")))
    severities = drift_alert_severities(alerts, results)
    for phase, expected in EXPECTED.items():
        found = severities.get(phase, [])
        wanted = [] if expected is None else [expected]
        verdict = "as expected" if found == wanted else "NOT as expected"
        console.print(f"  {phase:<11} drift alerts: {', '.join(found) or 'none'} ({verdict})")
    console.print(f"  webhook receiver {hook_url}: {len(alerts)} alerts notified")
    console.print("  stdout of the drift monitor's process: the same JSON (Ray's worker logs)")
    console.print(f"  event store: serve-drift alerts list --db {events_path}")


def _window_kind(phase: str) -> str:
    return "clean traffic: a false alarm" if phase == "clean" else f"{phase} traffic"


def _stop_serve(started_ray: bool) -> None:
    import ray
    from ray import serve

    if started_ray:
        serve.shutdown()
        ray.shutdown()
    else:
        serve.delete(APP_NAME)
