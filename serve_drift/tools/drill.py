"""``serve-drift drill``: replay a scenario against a running endpoint and judge its monitoring.

Before an incident, a team wants to know that its monitoring catches the shifts its cameras
will produce. A drill sends a scenario's phases of clean and corrupted traffic
(:mod:`~serve_drift.tools.drill_scenario`) to ``POST /predict`` over HTTP, with a progress
bar, posts the true labels when the images have them, waits for the monitor to test every
window, and reports per phase: detection delay in windows and seconds, false alarms and
alerts in clean phases, alerts raised with their severity, requests rejected. It exits 1
when an expectation fails or cannot be checked, so it can gate a release::

    serve-drift drill digits-lighting --url http://127.0.0.1:8000 --report drill-report/
    serve-drift drill my-cameras.yaml --url https://staging.example.com --db events.sqlite
    serve-drift drill --list

Admin calls (drift results, health, labels, alerts, sentinel runs) carry
``Authorization: Bearer`` with the token from ``--token-file`` or ``$SERVE_DRIFT_ADMIN_TOKEN``.
Run drills against a staging endpoint: other traffic in the same windows makes them unjudged.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from serve_drift.alerts import AlertsConfig
from serve_drift.eventlog.store import BaseEventStore
from serve_drift.tools.drill_collect import (
    AlertSource,
    Collector,
    DrillError,
    EndpointInfo,
    backtest,
    endpoint_info,
    losses,
    pending_windows,
    stored_incidents,
)
from serve_drift.tools.drill_results import (
    DrillResult,
    PhaseOutcome,
    alert_views,
    judge,
    judged_detector,
    window_views,
)
from serve_drift.tools.drill_scenario import (
    Scenario,
    ScenarioError,
    builtin_scenarios,
    load_scenario,
)
from serve_drift.tools.drill_traffic import PhasePlan, PhaseTraffic, send_phase
from serve_drift.tools.events_cli import open_store
from serve_drift.tools.sentinel import post_labels, read_admin_token, run_sentinel_set
from serve_drift.tools.sentinel_sets import ImageSet, ImageSetError, image_set

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


@dataclass(frozen=True)
class DrillOptions:
    url: str
    admin_token: str
    # The endpoint's event store, where this machine can read it: a SQLite file, or the
    # PostgreSQL database (``dsn``) and the monitor's schema (the only one there by default).
    db: Path | None = None
    dsn: str | None = None
    pg_schema: str | None = None
    alerts: AlertSource = "auto"
    rules: AlertsConfig | None = None  # for a backtest; the default rules without it
    detector: str | None = None
    report_dir: Path | None = None
    poll_interval_s: float = 2.0
    settle_quiet_s: float = 3.0

    @property
    def has_store(self) -> bool:
        return self.db is not None or bool(self.dsn)

    def open_store(self) -> contextlib.AbstractContextManager[BaseEventStore | None]:
        """The event store, opened to read (``None`` without one); ``SystemExit`` with a
        message when it cannot be opened."""
        if not self.has_store:
            return contextlib.nullcontext()
        return open_store(db=self.db, dsn=self.dsn, pg_schema=self.pg_schema)


def run_drill(
    scenario: Scenario, options: DrillOptions, *, console: Console | None = None
) -> DrillResult:
    """Run ``scenario`` against ``options.url``; prints progress and the verdict."""
    console = console or Console()
    run_id = uuid.uuid4().hex[:8]
    headers = {"authorization": f"Bearer {options.admin_token}"}
    with httpx.Client(base_url=options.url.rstrip("/"), headers=headers, timeout=30) as client:
        run = _run(client, scenario, options, run_id=run_id, console=console)
    result = _verdict(scenario, options, run)
    if options.report_dir is not None:
        result = _write_report(result, options, console)
    print_verdict(result, console=console)
    return result


@dataclass(frozen=True)
class _Run:
    """What one drill sent and collected, before it is judged."""

    run_id: str
    endpoint: EndpointInfo
    started_at: float
    traffic: list[PhaseTraffic]
    sentinel: dict[int, tuple[float, float, int, str]]
    results: list[dict[str, Any]]
    incidents: list[dict[str, Any]]
    alert_source: str
    accounting: dict[str, int]


def _run(
    client: httpx.Client,
    scenario: Scenario,
    options: DrillOptions,
    *,
    run_id: str,
    console: Console,
) -> _Run:
    endpoint = endpoint_info(client)
    images = _images(scenario)
    console.print(
        f"Drill [bold]{scenario.name}[/] ({run_id}) against {options.url}: "
        f"{len(images.items)} images ({images.lineage.name} {images.lineage.version}), "
        f"window size {endpoint.window_size}"
    )
    started_at = time.time()
    with Collector(client, interval_s=options.poll_interval_s) as collector:
        traffic, sentinel = _replay(client, scenario, images, endpoint, run_id, console)
        if scenario.labels and images.labelled:
            with console.status("Sending the true labels, as a labelling team would..."):
                _send_labels(client, traffic)
        with console.status("Waiting for the monitor to test every window..."):
            _settle(client, collector, scenario, options)
        results, polled = collector.snapshot()
    incidents, source = _alerts(options, collector, results, polled, started_at, sentinel)
    return _Run(
        run_id, endpoint, started_at, traffic, sentinel, results, incidents, source, losses(client)
    )


def _verdict(scenario: Scenario, options: DrillOptions, run: _Run) -> DrillResult:
    detector = judged_detector(run.results, options.detector or scenario.detector)
    outcomes = judge(
        scenario.phases,
        run.traffic,
        window_views(run.results, run_id=run.run_id, detector=detector),
        alert_views(run.incidents, source=run.alert_source),
        sentinel={phase: acc for phase, (_, acc, _, _) in run.sentinel.items()},
    )
    return DrillResult(
        scenario=scenario,
        run_id=run.run_id,
        endpoint=run.endpoint,
        detector=detector,
        alert_source=run.alert_source,
        outcomes=tuple(outcomes),
        results=tuple(run.results),
        incidents=tuple(run.incidents),
        started_at=run.started_at,
        accounting=run.accounting,
    )


def _images(scenario: Scenario) -> ImageSet:
    source = scenario.images
    spec = "embedded" if source.source == "embedded" else str(source.path)
    return image_set(spec, count=source.limit, require_labels=False)


def _replay(
    client: httpx.Client,
    scenario: Scenario,
    images: ImageSet,
    endpoint: EndpointInfo,
    run_id: str,
    console: Console,
) -> tuple[list[PhaseTraffic], dict[int, tuple[float, float, int, str]]]:
    columns = (
        TextColumn("{task.description:<34}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    sentinel_set = _sentinel_set(scenario)
    traffic: list[PhaseTraffic] = []
    sentinel: dict[int, tuple[float, float, int, str]] = {}
    with Progress(*columns, console=console) as progress:
        for index, phase in enumerate(scenario.phases):
            count = phase.requests(window_size=endpoint.window_size)
            plan = PhasePlan(phase, index=index, images=images, count=count, seed=scenario.seed)
            what = phase.corruption.describe() if phase.corruption else "clean"
            task = progress.add_task(f"{phase.name} ({what})", total=count)
            traffic.append(
                send_phase(
                    client,
                    plan,
                    run_id=run_id,
                    concurrency=scenario.concurrency,
                    advance=functools.partial(progress.advance, task),
                )
            )
            if sentinel_set is not None:
                sentinel[index] = _sentinel_run(client, sentinel_set, endpoint)
    return traffic, sentinel


def _sentinel_set(scenario: Scenario) -> ImageSet | None:
    if scenario.sentinel is None:
        return None
    return image_set(scenario.sentinel.set, count=scenario.sentinel.count)


def _sentinel_run(
    client: httpx.Client, sentinel_set: ImageSet, endpoint: EndpointInfo
) -> tuple[float, float, int, str]:
    token = str(client.headers["authorization"]).removeprefix("Bearer ")
    run = run_sentinel_set(str(client.base_url), sentinel_set, admin_token=token)
    return time.time(), run.accuracy, run.sent - run.failed, endpoint.model_version or ""


def _send_labels(client: httpx.Client, traffic: Sequence[PhaseTraffic]) -> None:
    items = [(cid, label) for t in traffic for cid, label in t.labels.items()]
    post_labels(client, items, source="feedback", wait_s=20.0)


def _settle(
    client: httpx.Client, collector: Collector, scenario: Scenario, options: DrillOptions
) -> None:
    """Poll until the monitor has no window waiting for a test and no result is new for a
    while (the last, partly filled window stays open: it is never tested)."""
    deadline = time.monotonic() + scenario.settle_timeout_s
    quiet_since = time.monotonic()
    while time.monotonic() < deadline:
        if collector.poll():
            quiet_since = time.monotonic()
        quiet = time.monotonic() - quiet_since >= options.settle_quiet_s
        if quiet and pending_windows(client) == 0:
            return
        time.sleep(0.5)


def _alerts(
    options: DrillOptions,
    collector: Collector,
    results: list[dict[str, Any]],
    polled: list[dict[str, Any]],
    started_at: float,
    sentinel: dict[int, tuple[float, float, int, str]],
) -> tuple[list[dict[str, Any]], str]:
    """The incidents to judge, and where they came from (see the module docstring)."""
    mode = options.alerts
    served = bool(collector.alerts_served)  # the endpoint evaluates rules (and mounts alerts)
    if mode == "store" or (mode == "auto" and served and options.has_store):
        if not options.has_store:
            raise DrillError("--alerts store needs --db or --dsn (the endpoint's event store)")
        with options.open_store() as store:
            assert store is not None
            return stored_incidents(store, since=started_at - 1.0), "store"
    if mode == "endpoint" or (mode == "auto" and served):
        if not served:
            raise DrillError("the endpoint does not serve GET /admin/alerts")
        return [i for i in polled if float(i["opened_at"]) >= started_at - 1.0], "endpoint"
    model = str(results[0]["model_name"]) if results else "model"
    config = options.rules or AlertsConfig(sinks=())
    found = backtest(results, config=config, model_name=model, sentinel=list(sentinel.values()))
    return found, "backtest"


def _write_report(result: DrillResult, options: DrillOptions, console: Console) -> DrillResult:
    from serve_drift.tools.report import write_report
    from serve_drift.tools.report_data import data_for_drill

    assert options.report_dir is not None
    with options.open_store() as store:
        data = data_for_drill(result, store=store)
    path = write_report(data, out_dir=options.report_dir)
    console.print(f"Report: [bold]{path}[/] (figures beside it)")
    return DrillResult(**{**result.__dict__, "report": path})


# --- printing ---------------------------------------------------------------------------------


def print_verdict(result: DrillResult, *, console: Console) -> None:
    console.print(_phase_table(result))
    console.print(_checks_table(result))
    verdict = "[green]PASSED[/]" if result.ok else "[red]FAILED[/]"
    console.print(
        f"Drill {result.scenario.name} {verdict}: {sum(c.status == 'pass' for c in result.checks)}"
        f" of {len(result.checks)} checks passed (detector {result.detector or 'none'}, "
        f"alerts from {_source_text(result.alert_source)})"
    )


def _source_text(source: str) -> str:
    if source == "backtest":
        return "a backtest of the rules over the drill's drift results (the endpoint serves none)"
    return {"store": "the event store", "endpoint": "the endpoint's /admin/alerts"}[source]


def _phase_table(result: DrillResult) -> Table:
    table = Table(title=f"Drill {result.scenario.name} ({result.run_id}): per phase")
    for column in (
        "phase",
        "traffic",
        "sent",
        "rejected",
        "accuracy",
        "windows",
        "drifted",
        "detected",
        "false alarms",
        "alerts opened",
    ):
        table.add_column(
            column, justify="left" if column in ("phase", "traffic", "alerts opened") else "right"
        )
    for o in result.outcomes:
        t = o.traffic
        table.add_row(
            t.name,
            t.corruption or "clean",
            f"{t.sent} ({t.achieved_rate_per_s:.0f}/s)",
            str(t.rejected_total),
            "-" if t.accuracy is None else f"{t.accuracy:.0%}",
            str(len(o.windows)),
            str(len(o.drifted)),
            _detected(o),
            "-" if not t.clean else str(len(o.false_alarms)),
            ", ".join(f"{a.rule} ({a.severity})" for a in o.alerts) or "none",
        )
    return table


def _detected(o: PhaseOutcome) -> str:
    if o.traffic.clean:
        return "-"
    if o.detection_windows is None:
        return "[red]no[/]"
    seconds = "" if o.detection_delay_s is None else f", {o.detection_delay_s:.1f} s"
    return f"window {o.detection_windows}{seconds}"


def _checks_table(result: DrillResult) -> Table:
    table = Table(title="Expectations")
    for column in ("phase", "check", "expected", "observed", "result"):
        table.add_column(column)
    colour = {"pass": "green", "fail": "red", "unknown": "yellow"}
    for c in result.checks:
        table.add_row(c.phase, c.name, c.expected, c.observed, f"[{colour[c.status]}]{c.status}[/]")
    return table


def verdict_json(result: DrillResult) -> dict[str, Any]:
    """The verdict as JSON (``--json``), for CI logs and dashboards."""
    return {
        "scenario": result.scenario.name,
        "run_id": result.run_id,
        "ok": result.ok,
        "detector": result.detector,
        "alert_source": result.alert_source,
        "window_size": result.endpoint.window_size,
        "phases": [
            {
                "phase": o.traffic.name,
                "corruption": o.traffic.corruption,
                "sent": o.traffic.sent,
                "rejected": o.traffic.rejected,
                "accuracy": o.traffic.accuracy,
                "windows": list(o.windows),
                "drifted": list(o.drifted),
                "detection_windows": o.detection_windows,
                "detection_delay_s": o.detection_delay_s,
                "false_alarms": list(o.false_alarms),
                "alerts": [
                    {"rule": a.rule, "severity": a.severity, "window": a.opening_window}
                    for a in o.alerts
                ],
                "sentinel_accuracy": o.sentinel_accuracy,
            }
            for o in result.outcomes
        ],
        "checks": [c.__dict__ for c in result.checks],
        "report": None if result.report is None else str(result.report),
    }


# --- command line -----------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="serve-drift drill",
        description="Replay a drift scenario against a running endpoint; exit 1 when an "
        "expectation fails.",
    )
    parser.add_argument("scenario", nargs="?", help="a built-in scenario's name or a YAML file")
    parser.add_argument("--list", action="store_true", help="list the built-in scenarios")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the app's base URL")
    parser.add_argument("--token-file", help="file holding the admin bearer token")
    parser.add_argument("--token-env", default="SERVE_DRIFT_ADMIN_TOKEN")
    parser.add_argument(
        "--db", type=Path, help="the endpoint's SQLite event store, if readable here"
    )
    parser.add_argument(
        "--dsn", help="the endpoint's PostgreSQL event store (postgresql://user@host:5432/db)"
    )
    parser.add_argument("--pg-schema", help="the monitor's schema there (default: the only one)")
    parser.add_argument(
        "--alerts",
        choices=("auto", "endpoint", "store", "backtest"),
        default="auto",
        help="where alerts come from (auto: when the endpoint serves /admin/alerts, the store "
        "with --db/--dsn or else those open incidents; otherwise a backtest of the rules)",
    )
    parser.add_argument(
        "--rules", type=Path, help="rules for a backtest: a Serve config or an alerts file"
    )
    parser.add_argument("--detector", help="the detector the checks judge (kind or kind:backend)")
    parser.add_argument("--report", type=Path, help="write the HTML report and figures here")
    parser.add_argument("--json", type=Path, help="also write the verdict as JSON here")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list:
        for name, path in builtin_scenarios().items():
            print(f"{name:28s} {load_scenario(path).description[:90]}")
        return EXIT_OK
    if not args.scenario:
        print("serve-drift drill: name a scenario (serve-drift drill --list)")
        return EXIT_USAGE
    token = read_admin_token(token_file=args.token_file, token_env=args.token_env)
    if token is None:
        print(f"serve-drift drill: no admin token (use --token-file or ${args.token_env})")
        return EXIT_USAGE
    options = DrillOptions(
        url=args.url,
        admin_token=token,
        db=args.db,
        dsn=args.dsn,
        pg_schema=args.pg_schema,
        alerts=args.alerts,
        detector=args.detector,
        report_dir=args.report,
    )
    try:  # a store named but not readable is a usage error, found before any traffic is sent
        with options.open_store():
            pass
    except SystemExit as exc:
        print(f"serve-drift drill: {exc}")
        return EXIT_USAGE
    try:
        scenario = load_scenario(args.scenario)
        options = dataclasses.replace(options, rules=_rules(args.rules))
        result = run_drill(scenario, options)
    except (ScenarioError, ImageSetError, DrillError) as exc:
        print(f"serve-drift drill: {exc}")
        return EXIT_USAGE
    if args.json:
        args.json.write_text(json.dumps(verdict_json(result), indent=2) + "\n", encoding="utf-8")
    return EXIT_OK if result.ok else EXIT_FAILED


def _rules(path: Path | None) -> AlertsConfig | None:
    if path is None:
        return None
    from serve_drift.tools.alerts_cli import load_alerts_config

    config, _ = load_alerts_config(path, model_name="model")
    return config
