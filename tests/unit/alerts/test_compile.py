"""The Prometheus/Alertmanager/Grafana compilers: shape, names, and the committed files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from serve_drift.alerts.alertmanager import compile_alertmanager, maintenance_matchers
from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.dashboard import dashboard_queries, grafana_dashboard
from serve_drift.alerts.prometheus import ENGINE_ABSENT, compile_rules
from serve_drift.tools.alerts_cli import compiled_files, load_alerts_config

ROOT = Path(__file__).resolve().parents[3]
CONFIG = AlertsConfig.model_validate(
    {
        "rules": [
            {
                "name": "page",
                "severity": "critical",
                "owner": "vision-oncall",
                "summary": "{model_name} {model_version} drifted on {detector} ({severity})",
                "runbook_url": "https://runbooks.example.com/page",
                "dashboards": ["https://grafana.example.com/d/serve-drift-digits"],
                "all": [{"kind": "drift"}],
                "renotify_interval_s": 600,
                "inhibits": ["slow"],
            },
            {
                "name": "slow",
                "all": [{"kind": "threshold", "signal": "latency_p99_s", "above": 0.3}],
                "renotify_interval_s": None,
            },
            {"name": "quiet", "all": [{"kind": "silence", "max_gap_s": 900}]},
        ],
        "suppress": [{"name": "nightly", "start": "01:00", "end": "02:00", "rules": ["slow"]}],
        "alertmanager": {"receivers": {"vision-oncall": "https://pager.example.com/hook"}},
    }
)


def _rules() -> dict[str, dict[str, object]]:
    (group,) = compile_rules(CONFIG, model_name="digits")["groups"]
    return {rule["alert"]: rule for rule in group["rules"]}


def test_each_rule_carries_severity_owner_runbook_and_dashboard() -> None:
    page = _rules()["page"]
    assert page["labels"] == {"severity": "critical", "owner": "vision-oncall"}
    annotations = page["annotations"]
    assert annotations["runbook_url"] == "https://runbooks.example.com/page"
    assert annotations["dashboard"] == "https://grafana.example.com/d/serve-drift-digits"
    assert annotations["summary"] == (
        "{{ $labels.model_name }} {{ $labels.model_version }} drifted on "
        "{{ $labels.detector }} (critical)"
    )


def test_window_rules_fire_on_the_engine_state_and_silence_on_prometheus_own_data() -> None:
    rules = _rules()
    assert rules["page"]["expr"] == (
        "max by (model_name, model_version, detector) "
        '(ray_serve_drift_alerts_active{model_name="digits", alert_rule="page"}) > 0'
    )
    assert "by (model_name, model_version)" in str(rules["slow"]["expr"])  # not per detector
    quiet = str(rules["quiet"]["expr"])
    assert "increase(ray_serve_drift_drift_windows_tested_total" in quiet and "[900s]" in quiet
    assert "absent_over_time" in quiet and "alerts_active" not in quiet
    assert "absent_over_time(ray_serve_drift_alerts_rules" in str(rules[ENGINE_ABSENT]["expr"])


def test_the_metric_prefix_is_configurable() -> None:
    config = CONFIG.model_copy(
        update={"prometheus": CONFIG.prometheus.model_copy(update={"metric_prefix": ""})}
    )
    (group,) = compile_rules(config, model_name="digits")["groups"]
    assert group["rules"][0]["expr"].startswith(
        "max by (model_name, model_version, detector) (serve_drift_"
    )


def test_the_alertmanager_config_maps_owners_intervals_schedules_and_inhibition() -> None:
    config = compile_alertmanager(CONFIG, model_name="digits")
    routes = {route["matchers"][0]: route for route in config["route"]["routes"]}
    assert routes['alertname="page"']["receiver"] == "serve-drift-vision-oncall"
    assert routes['alertname="page"']["repeat_interval"] == "600s"
    assert routes['alertname="slow"']["repeat_interval"] == f"{365 * 24 * 3600}s"  # never again
    assert routes['alertname="slow"']["mute_time_intervals"] == ["nightly"]
    assert "mute_time_intervals" not in routes['alertname="page"']
    receivers = {r["name"]: r["webhook_configs"][0]["url"] for r in config["receivers"]}
    assert receivers["serve-drift-vision-oncall"] == "https://pager.example.com/hook"
    (inhibit,) = config["inhibit_rules"]
    assert inhibit["equal"] == ["model_name", "model_version"]  # the labels both alerts have
    assert config["time_intervals"][0]["time_intervals"][0]["times"] == [
        {"start_time": "01:00", "end_time": "02:00"}
    ]


def test_maintenance_silences_exactly_this_apps_alerts() -> None:
    by_name = {m["name"]: m for m in maintenance_matchers(CONFIG, model_name="digits")}
    pattern = re.compile(f"^{by_name['alertname']['value']}$")
    assert all(pattern.match(name) for name in ("page", "slow", "quiet", ENGINE_ABSENT))
    assert not pattern.match("pager") and not pattern.match("KubePodCrashLooping")
    assert by_name["model_name"] == {
        "name": "model_name",
        "value": "digits",
        "isRegex": False,
        "isEqual": True,
    }


def _instrument_names() -> set[str]:
    sources = [
        ROOT / "serve_drift/telemetry/instruments.py",
        ROOT / "serve_drift/alerts/metrics.py",
    ]
    text = "\n".join(path.read_text() for path in sources)
    found = set(re.findall(r'"(serve_drift\.[a-z_.]+)"', text))
    found |= {f"serve_drift.concept.{name}" for name in ("accuracy", "f1_macro", "ece")}
    found |= {f"serve_drift.events.{n}" for n in ("accepted", "stored", "sampled_out", "dropped")}
    return found


def test_every_dashboard_query_reads_a_metric_the_product_records() -> None:
    known = {name.replace(".", "_") for name in _instrument_names()}
    queries = dashboard_queries(grafana_dashboard(CONFIG, model_name="digits"))
    series = {m for q in queries for m in re.findall(r"ray_(serve_drift_[a-z_]+)", q)}
    unknown = {s for s in series if re.sub(r"_(total|bucket|count|sum)$", "", s) not in known}
    assert series and not unknown, unknown


def test_the_dashboard_draws_the_rules_thresholds() -> None:
    panels = {p["title"]: p for p in grafana_dashboard(CONFIG, model_name="digits")["panels"]}
    steps = panels["Drift p-value, latest window"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in steps] == [None, 0.01]
    latency = panels["Request latency p99"]["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert [s["value"] for s in latency] == [None, 0.3]


def test_the_committed_files_are_what_compile_writes_for_the_digits_config() -> None:
    config, model_name = load_alerts_config(ROOT / "deployments/digits.yaml")
    expected = compiled_files(config, model_name=model_name, source="deployments/digits.yaml")
    for name, text in expected.items():
        committed = (ROOT / "deployments" / name).read_text(encoding="utf-8")
        assert committed == text, f"deployments/{name} is stale: run serve-drift alerts compile"
    board = json.loads(expected[f"{model_name}-dashboard.json"])
    assert board["uid"] == "serve-drift-digits"
    scrape = yaml.safe_load(expected[f"{model_name}-prometheus.yml"])
    assert scrape["scrape_configs"][0]["file_sd_configs"][0]["files"] == [
        "/tmp/ray/prom_metrics_service_discovery.json"
    ]
