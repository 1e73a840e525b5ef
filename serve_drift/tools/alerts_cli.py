"""``serve-drift alerts``: alert history, rule checks, compiled configs, maintenance.

Subcommands::

    serve-drift alerts list      [--state open|resolved] [--rule R] [--since 7d] [--limit 50]
    serve-drift alerts show      INCIDENT_ID               an incident, its evidence, its history
    serve-drift alerts check     [--config FILE]           the rules and their false-alert rates
    serve-drift alerts compile   [--config FILE] --out-dir DIR
                                 Prometheus rules, Alertmanager config, Grafana dashboard
    serve-drift alerts backtest  [--config FILE]           replay the store's drift results
    serve-drift alerts maintenance start --who W --why Y --for 2h [--url APP | --alertmanager AM]
    serve-drift alerts maintenance stop  --who W [--url APP | --alertmanager AM --silence-id S]
    serve-drift alerts maintenance status [--url APP | --alertmanager AM]

``--config`` is a Serve config (its app's ``args.alerts``, and ``args.drift.model_name``) or a
file holding an ``alerts`` section; without it the default rules apply. ``list``, ``show`` and
``backtest`` read the event store (``--db`` or ``--dsn``, as ``serve-drift events``).
``maintenance --url`` goes through the app's admin endpoint with
``Authorization: Bearer $SERVE_DRIFT_ADMIN_TOKEN``
(or ``--token-env NAME``); ``--alertmanager`` sets an Alertmanager silence directly, for
deployments that alert from Prometheus only.

>>> parse_duration("2h"), parse_duration("90")
(7200.0, 90.0)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

from serve_drift.alerts.alertmanager import (
    AlertmanagerError,
    AlertmanagerSilences,
    compile_alertmanager,
    maintenance_matchers,
)
from serve_drift.alerts.config import AlertsConfig, config_from_mapping
from serve_drift.alerts.dashboard import grafana_dashboard
from serve_drift.alerts.endpoints import MAINTENANCE_PATH
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Incident, Transition
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.prometheus import compile_rules, render_yaml
from serve_drift.alerts.signals import Signal, Tick, WindowTested
from serve_drift.eventlog.schema import DriftTestRecord
from serve_drift.eventlog.store import BaseEventStore, StoredIncident, StoreError
from serve_drift.messages import DriftResult
from serve_drift.monitor.alerting import metrics_signal
from serve_drift.tools.events_cli import (
    _table,
    _when,
    add_store_arguments,
    open_cli_store,
    parse_time,
)

__all__ = ["load_alerts_config", "main", "parse_duration", "signals_from_store"]

_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
TOKEN_ENV = "SERVE_DRIFT_ADMIN_TOKEN"
SCRAPE_SD_FILE = "/tmp/ray/prom_metrics_service_discovery.json"


def parse_duration(text: str) -> float:
    """Seconds from ``90``, ``30s``, ``15m``, ``2h``, ``7d``, ``1w``."""
    value = text.strip()
    try:
        if value and value[-1] in _UNITS_S:
            return float(value[:-1]) * _UNITS_S[value[-1]]
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration (e.g. 90, 15m, 2h)") from None


# --- configuration ----------------------------------------------------------------------------


def load_alerts_config(
    path: Path | None, *, app: str | None = None, model_name: str | None = None
) -> tuple[AlertsConfig, str]:
    """The ``alerts`` section and the model name from a Serve config or an alerts file."""
    data: Any = yaml.safe_load(path.read_text(encoding="utf-8")) if path else {}
    data = data or {}
    section, found_name = data.get("alerts"), None
    if "applications" in data:
        args = _app_args(data["applications"], app)
        section = args.get("alerts")
        drift = args.get("drift") or {}
        found_name = drift.get("model_name") or (args.get("model") or {}).get("source")
    elif section is None and "rules" in data:
        section = data  # a file that is the alerts section itself
    name = model_name or found_name
    if not name:
        raise SystemExit("the model name is not in the config: give --model-name")
    return config_from_mapping(section), str(name)


def _app_args(applications: list[dict[str, Any]], app: str | None) -> dict[str, Any]:
    if app is None:
        if len(applications) != 1:
            names = [a.get("name") for a in applications]
            raise SystemExit(f"the config has several apps {names}: choose one with --app")
        return dict(applications[0].get("args") or {})
    for candidate in applications:
        if candidate.get("name") == app:
            return dict(candidate.get("args") or {})
    raise SystemExit(f"no app named {app!r} in the config")


# --- store commands ---------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> BaseEventStore:
    return open_cli_store(args)


def _list(args: argparse.Namespace) -> None:
    with _store(args) as store:
        incidents = store.alert_incidents(
            state=args.state, rule=args.rule, since=args.since, limit=args.limit
        )
    if args.format == "jsonl":
        for stored in incidents:
            print(json.dumps(stored.document, sort_keys=True))
        return
    print(_table(list(_INCIDENT_COLUMNS), [_incident_row(s) for s in incidents]))
    if not incidents:
        print("(no alerts)")


_INCIDENT_COLUMNS = ("opened (UTC)", "id", "state", "severity", "rule", "scope", "summary")


def _incident_row(stored: StoredIncident) -> list[str]:
    incident = Incident.from_dict(stored.document)
    return [
        _when(incident.opened_at),
        incident.incident_id,
        incident.state,
        incident.severity,
        incident.rule,
        incident.scope_text,
        incident.summary[:80],
    ]


def _show(args: argparse.Namespace) -> None:
    with _store(args) as store:
        stored = store.alert_incident(args.incident_id)
        if stored is None:
            raise SystemExit(f"no single incident with id {args.incident_id!r}")
        history = store.alert_transitions(stored.incident_id)
    if args.format == "json":
        body = {"incident": stored.document, "transitions": [t.document for t in history]}
        print(json.dumps(body, indent=2, sort_keys=True))
        return
    print(
        _describe(
            Incident.from_dict(stored.document), [Transition.from_dict(t.document) for t in history]
        )
    )


def _describe(incident: Incident, history: list[Transition]) -> str:
    return "\n".join(
        [*_summary_lines(incident), *_evidence_lines(incident), *_history_lines(history)]
    )


def _summary_lines(incident: Incident) -> list[str]:
    resolution = f" ({incident.resolution})" if incident.resolution else ""
    return [
        f"{incident.incident_id}  {incident.rule}  {incident.severity}  {incident.state}",
        f"  summary:   {incident.summary}",
        f"  scope:     {incident.scope_text}",
        f"  owner:     {incident.owner}",
        f"  opened:    {_when(incident.opened_at)}   resolved: {_when(incident.resolved_at)}"
        + resolution,
        f"  runbook:   {incident.runbook_url or '-'}",
        *(f"  dashboard: {d}" for d in incident.dashboards),
        "  suggested checks:",
        *(f"    - {c}" for c in incident.suggested_checks),
    ]


def _evidence_lines(incident: Incident) -> list[str]:
    evidence = incident.evidence
    return [
        "  conditions (latest evaluation):",
        *(f"    [{_state(c.active)}] {c.description}: {c.detail}" for c in evidence.conditions),
        "  signals:",
        *(f"    {s.name} = {s.value} (baseline {s.baseline})" for s in evidence.signals),
        "  windows (p-value, test, trace, sample requests):",
        *(
            f"    #{w.window_index} {w.detector}/{w.backend} p={w.p_value:.4g}"
            f"{' *' if w.significant else '  '} test {w.test_id} trace {w.trace_id or '-'} "
            f"requests {','.join(w.correlation_ids_sample[:3]) or '-'}"
            for w in evidence.windows
        ),
    ]


def _history_lines(history: list[Transition]) -> list[str]:
    return [
        "  history:",
        *(
            f"    {_when(t.at)} {t.kind:10} "
            + ("notified" if t.notify else f"held back: {t.suppressed_by or 'not notifiable'}")
            for t in history
        ),
    ]


def _state(active: bool | None) -> str:
    return {True: "yes", False: "no ", None: " ? "}[active]


# --- rule commands ----------------------------------------------------------------------------


def _check(args: argparse.Namespace) -> None:
    config, model_name = load_alerts_config(args.config, app=args.app, model_name=args.model_name)
    rows = []
    for rule in config.rules:
        rate = rule.false_alert_rate_per_1000
        rows.append(
            [
                rule.name,
                rule.severity,
                rule.owner,
                "-" if rate is None else f"{rate:.3f}",
                rule.describe(),
            ]
        )
    print(f"{len(config.rules)} rules for {model_name}; false alerts per 1000 clean windows,")
    print("per detector, when per-window p-values hold their level:\n")
    print(_table(["rule", "severity", "owner", "false/1000", "fires when"], rows))


def _compile(args: argparse.Namespace) -> None:
    config, model_name = load_alerts_config(args.config, app=args.app, model_name=args.model_name)
    if args.metric_prefix is not None:
        options = config.prometheus.model_copy(update={"metric_prefix": args.metric_prefix})
        config = config.model_copy(update={"prometheus": options})
    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    source = str(args.config) if args.config else "the default rules"
    for path, text in compiled_files(config, model_name=model_name, source=source).items():
        (out / path).write_text(text, encoding="utf-8")
        print(f"wrote {out / path}")


def compiled_files(config: AlertsConfig, *, model_name: str, source: str) -> dict[str, str]:
    """File name -> content of everything ``compile`` writes."""
    rules_file = f"{model_name}-alert-rules.yml"
    dashboard = grafana_dashboard(config, model_name=model_name)
    return {
        rules_file: render_yaml(compile_rules(config, model_name=model_name), source=source),
        f"{model_name}-alertmanager.yml": render_yaml(
            compile_alertmanager(config, model_name=model_name), source=source
        ),
        f"{model_name}-dashboard.json": json.dumps(dashboard, indent=2) + "\n",
        f"{model_name}-prometheus.yml": render_yaml(_scrape_config(rules_file), source=source),
    }


def _scrape_config(rules_file: str) -> dict[str, Any]:
    """How Prometheus finds the metrics: Ray's own service discovery file, one job."""
    return {
        "global": {"scrape_interval": "15s", "evaluation_interval": "30s"},
        "rule_files": [rules_file],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": ["127.0.0.1:9093"]}]}]},
        "scrape_configs": [
            {"job_name": "ray", "file_sd_configs": [{"files": [SCRAPE_SD_FILE]}]},
        ],
    }


def signals_from_store(store: BaseEventStore, *, limit: int = 100_000) -> list[Signal]:
    """The stored drift results and label metrics as signals, oldest first (for backtests)."""
    windows: dict[tuple[str, str, int], list[DriftResult]] = {}
    for record in store.drift_results(limit=limit):
        result = _result(record)
        if result is not None:
            key = (result.model_name, result.model_version, result.window_index)
            windows.setdefault(key, []).append(result)
    signals: list[Signal] = [
        WindowTested(
            at=max(r.tested_at for r in results),
            model_name=name,
            model_version=version,
            window_index=index,
            results=tuple(sorted(results, key=lambda r: r.detector)),
        )
        for (name, version, index), results in windows.items()
    ]
    signals += [metrics_signal(m) for m in store.concept_metrics(limit=limit)]
    return sorted(signals, key=lambda s: s.at)


def _result(record: DriftTestRecord) -> DriftResult | None:
    if record.p_value is None:
        return None
    return DriftResult(
        test_id=record.test_id,
        detector=record.detector,
        backend=record.backend,
        is_drift=record.is_drift,
        p_value=record.p_value,
        p_value_threshold=record.p_value_threshold,
        distance=record.distance if record.distance is not None else float("nan"),
        distance_threshold=record.distance_threshold,
        window_index=record.window_index,
        window_size=record.window_size,
        reference_size=record.reference_size,
        model_name=record.model_name,
        model_version=record.model_version,
        reference_version=record.reference_version,
        first_event_at=record.first_event_at,
        last_event_at=record.last_event_at,
        tested_at=record.tested_at,
        duration_s=record.duration_s,
        trace_id=record.trace_id or "",
        span_id=record.span_id or "",
        correlation_ids_sample=record.correlation_ids_sample,
    )


def _backtest(args: argparse.Namespace) -> None:
    config, model_name = load_alerts_config(args.config, app=args.app, model_name=args.model_name)
    with _store(args) as store:
        signals = signals_from_store(store)
    if not signals:
        print("(no drift results stored)")
        return
    engine = AlertEngine(config, started_at=signals[0].at, model_names=(model_name,))
    transitions = [t for s in signals for t in engine.observe(s)]
    # Silence is judged up to the last stored result, not up to now.
    transitions += engine.observe(Tick(at=signals[-1].at))
    rows = [
        [_when(t.at), t.kind, t.incident.rule, t.incident.scope_text, t.incident.incident_id]
        for t in transitions
    ]
    print(f"{len(signals)} signals replayed through {len(config.rules)} rules:")
    print(_table(["at (UTC)", "transition", "rule", "scope", "incident"], rows))


# --- maintenance ------------------------------------------------------------------------------


def _maintenance(args: argparse.Namespace) -> None:
    if not args.url and not args.alertmanager:
        raise SystemExit("give --url (the app) and/or --alertmanager")
    if args.url:
        _print_json(_app_maintenance(args))
    if args.alertmanager:
        _print_json(_alertmanager_maintenance(args))


def _app_maintenance(args: argparse.Namespace) -> dict[str, Any]:
    token = os.environ.get(args.token_env, "")
    headers = {"authorization": f"Bearer {token}"} if token else {}
    url = args.url.rstrip("/") + MAINTENANCE_PATH
    with httpx.Client(timeout=10.0, headers=headers) as client:
        if args.action == "start":
            body = {"who": _required(args.who, "--who"), "why": _required(args.why, "--why")}
            response = client.post(url, json={**body, "duration_s": args.duration})
        elif args.action == "stop":
            response = client.delete(url, params={"who": _required(args.who, "--who")})
        else:
            response = client.get(url)
    answer: dict[str, Any] = response.json()
    if response.status_code != 200:
        raise SystemExit(f"{url} answered {response.status_code}: {json.dumps(answer)}")
    return answer


def _alertmanager_maintenance(args: argparse.Namespace) -> dict[str, Any]:
    config, model_name = load_alerts_config(args.config, app=args.app, model_name=args.model_name)
    matchers = maintenance_matchers(config, model_name=model_name)
    silences = AlertmanagerSilences(args.alertmanager, matchers=matchers)
    try:
        if args.action == "start":
            who, why = _required(args.who, "--who"), _required(args.why, "--why")
            window = MaintenanceWindow.starting(
                at=time.time(), duration_s=args.duration, who=who, why=why
            )
            return {"silence_id": silences.create(window), "until": window.until}
        if args.action == "stop":
            silences.expire(_required(args.silence_id, "--silence-id"))
            return {"expired": args.silence_id}
        return {"silence": silences.get(args.silence_id)} if args.silence_id else {}
    except AlertmanagerError as exc:
        raise SystemExit(str(exc)) from None
    finally:
        silences.close()


def _required(value: str | None, flag: str) -> str:
    if not value:
        raise SystemExit(f"{flag} is required")
    return value


def _print_json(data: dict[str, Any]) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


# --- parser -----------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="serve-drift alerts", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    store = argparse.ArgumentParser(add_help=False)
    add_store_arguments(store)
    rules = argparse.ArgumentParser(add_help=False)
    rules.add_argument("--config", type=Path, help="Serve config or alerts file (default rules)")
    rules.add_argument("--app", help="the app, when the Serve config has several")
    rules.add_argument("--model-name", help="overrides the config's drift.model_name")
    listing = commands.add_parser("list", parents=[store], help="incidents, newest first")
    listing.add_argument("--state", choices=("open", "resolved"))
    listing.add_argument("--rule")
    listing.add_argument("--since", type=parse_time, help="ISO time, Unix seconds, or e.g. 7d")
    listing.add_argument("--limit", type=int, default=50)
    listing.add_argument("--format", choices=("table", "jsonl"), default="table")
    show = commands.add_parser("show", parents=[store], help="one incident with its evidence")
    show.add_argument("incident_id", help="the incident's id (or a unique prefix)")
    show.add_argument("--format", choices=("text", "json"), default="text")
    commands.add_parser("check", parents=[rules], help="the rules and their false-alert rates")
    compiled = commands.add_parser(
        "compile", parents=[rules], help="Prometheus, Alertmanager, Grafana"
    )
    compiled.add_argument("--out-dir", type=Path, required=True)
    compiled.add_argument("--metric-prefix", help="series prefix (default ray_: Ray's export)")
    commands.add_parser("backtest", parents=[store, rules], help="replay stored drift results")
    maintenance = commands.add_parser("maintenance", parents=[rules], help="start/stop/status")
    maintenance.add_argument("action", choices=("start", "stop", "status"))
    maintenance.add_argument("--url", help="the app's base URL (its admin maintenance endpoint)")
    maintenance.add_argument("--token-env", default=TOKEN_ENV, help="variable holding the token")
    maintenance.add_argument("--alertmanager", help="Alertmanager's URL: set a silence directly")
    maintenance.add_argument("--silence-id", help="the silence to stop or show (--alertmanager)")
    maintenance.add_argument("--who")
    maintenance.add_argument("--why")
    maintenance.add_argument("--for", dest="duration", type=parse_duration, default=3600.0)
    return parser


_COMMANDS: dict[str, Callable[[argparse.Namespace], None]] = {
    "list": _list,
    "show": _show,
    "check": _check,
    "compile": _compile,
    "backtest": _backtest,
    "maintenance": _maintenance,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point, mounted as ``serve-drift alerts``. Returns the exit code."""
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        _COMMANDS[args.command](args)
    except StoreError as exc:
        print(f"event store: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
