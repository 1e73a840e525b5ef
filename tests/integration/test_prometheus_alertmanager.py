"""The ecosystem path, against real servers started here on 127.0.0.1.

- promtool and amtool accept what ``serve-drift alerts compile`` writes, and promtool's own rule
  tests fire the compiled rules on synthetic series;
- a real Prometheus (Debian's 2.42, scrape only) scrapes the running digits app through Ray's
  metrics export (``OTEL_METRICS_EXPORTER=otlp,ray`` in the app's replicas and monitor), the
  way a Ray Serve cluster is scraped, and reads the latest drift p-value back;
- Prometheus loads the compiled rules, and every PromQL query of the generated dashboard
  returns data from it;
- Alertmanager delivers the engine's incident to a webhook receiver run here, with severity,
  owner and runbook_url, and a maintenance silence holds it back until maintenance ends.

The rule engine runs in this test process on the app's real drift results, standing in for
the monitor's wiring (the monitor will run the same :class:`AlertPipeline`); its metrics reach
Prometheus through the same Ray export. Its label-free accuracy estimate is the stand-in's
too: the mean top-1 confidence of each window's answers (the reference value: the first clean
window's).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import yaml

from serve_drift.alerts.alertmanager import (
    AlertmanagerSilences,
    compile_alertmanager,
    maintenance_matchers,
)
from serve_drift.alerts.config import AlertmanagerOptions, AlertsConfig, PrometheusOptions
from serve_drift.alerts.control import MaintenanceService
from serve_drift.alerts.dashboard import dashboard_queries, grafana_dashboard
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Incident
from serve_drift.alerts.pipeline import AlertPipeline
from serve_drift.alerts.prometheus import compile_rules, render_yaml
from serve_drift.alerts.signals import WindowTested
from serve_drift.messages import DriftResult
from serve_drift.models.digits import split_digits
from serve_drift.tools.cli import main as cli_main
from serve_drift.tools.imageio import encode_png
from serve_drift.tools.shifts import apply_shift
from tests.support.prometheus import AlertmanagerServer, PrometheusServer, run_tool, wait_until
from tests.support.serve import ADMIN, ServeInstance
from tests.support.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MODEL = APP = "digits-prom"  # its own model name: its series are told apart from other tests'
WINDOW = 40
TRAFFIC = (None, None, "occlusion", "occlusion", "occlusion")  # one window each
RAY_EXPORT = {
    "ray_actor_options": {"runtime_env": {"env_vars": {"OTEL_METRICS_EXPORTER": "otlp,ray"}}}
}


def _config(receiver_url: str = "http://127.0.0.1:9/unused") -> AlertsConfig:
    """The default rules, evaluated and re-sent on a test's time scale."""
    fast = tuple(r.model_copy(update={"renotify_interval_s": 2.0}) for r in AlertsConfig().rules)
    return AlertsConfig(
        rules=fast,
        sinks=(),
        prometheus=PrometheusOptions(evaluation_interval_s=1.0),
        alertmanager=AlertmanagerOptions(
            default_url=receiver_url, group_wait_s=0, group_interval_s=1
        ),
    )


# --- the tools accept the compiled files (no servers) -----------------------------------------


def test_promtool_and_amtool_accept_the_compiled_files(tmp_path: Path) -> None:
    for name in ("digits-alert-rules.yml", "digits-alertmanager.yml", "digits-prometheus.yml"):
        assert (ROOT / "deployments" / name).exists()
    checks = [
        ["promtool", "check", "rules", str(ROOT / "deployments/digits-alert-rules.yml")],
        ["amtool", "check-config", str(ROOT / "deployments/digits-alertmanager.yml")],
    ]
    configured = tmp_path / "am.yml"
    configured.write_text(
        render_yaml(compile_alertmanager(_config(), model_name=MODEL), source="t")
    )
    checks.append(["amtool", "check-config", str(configured)])
    for check in checks:
        result = run_tool(check)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "SUCCESS" in result.stdout


def test_promtool_fires_the_compiled_rules_on_synthetic_series(tmp_path: Path) -> None:
    config = AlertsConfig(sinks=())
    (tmp_path / "rules.yml").write_text(
        render_yaml(compile_rules(config, model_name="digits"), source="t")
    )
    active = (
        'ray_serve_drift_alerts_active{model_name="digits", model_version="v1", '
        'detector="combined", alert_rule="input-drift", alert_severity="warning"}'
    )
    heartbeat = 'ray_serve_drift_alerts_rules{model_name="digits"}'
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "30s",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": active, "values": "0 0 1 1 1 0"},
                    {"series": heartbeat, "values": "9x80"},
                    # one window a minute for 5 minutes, then none for over an hour
                    {"series": 'ray_serve_drift_drift_windows_tested_total{model_name="digits"}',
                     "values": "0+1x5 5x70"},
                ],
                "alert_rule_test": [
                    {"eval_time": "1m", "alertname": "input-drift", "exp_alerts": []},
                    {
                        "eval_time": "3m",
                        "alertname": "input-drift",
                        "exp_alerts": [
                            {
                                "exp_labels": {
                                    "severity": "warning",
                                    "owner": "ml-platform",
                                    "model_name": "digits",
                                    "model_version": "v1",
                                    "detector": "combined",
                                },
                                "exp_annotations": _annotations(config, "input-drift"),
                            }
                        ],
                    },
                    {"eval_time": "5m", "alertname": "input-drift", "exp_alerts": []},
                    {"eval_time": "30m", "alertname": "monitor-silent", "exp_alerts": []},
                    {
                        "eval_time": "70m",
                        "alertname": "monitor-silent",
                        "exp_alerts": [
                            {"exp_labels": {"severity": "warning", "owner": "ml-platform",
                                            "model_name": "digits"},
                             "exp_annotations": _annotations(config, "monitor-silent")}
                        ],
                    },
                    {"eval_time": "70m", "alertname": "alert-engine-absent", "exp_alerts": []},
                ],
            }
        ],
    }  # fmt: skip
    (tmp_path / "test.yml").write_text(yaml.safe_dump(tests))
    result = run_tool(["promtool", "test", "rules", str(tmp_path / "test.yml")])
    assert result.returncode == 0, result.stdout + result.stderr


def _annotations(config: AlertsConfig, rule: str) -> dict[str, str]:
    (group,) = compile_rules(config, model_name="digits")["groups"]
    compiled = next(r for r in group["rules"] if r["alert"] == rule)["annotations"]
    summary = compiled["summary"]
    for label, value in (
        ("model_name", "digits"),
        ("model_version", "v1"),
        ("detector", "combined"),
    ):
        summary = summary.replace("{{ $labels." + label + " }}", value)
    return {**compiled, "summary": summary}


# --- the running app, scraped -----------------------------------------------------------------


@dataclass
class Traffic:
    results: dict[int, list[dict[str, Any]]]  # window index -> its drift results
    confidence: dict[str, float]  # correlation id -> the answer's confidence


def _images(shift: str | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    split = split_digits(seed=0)
    rng = np.random.default_rng(seed)
    picks = rng.choice(len(split.test_images), size=WINDOW, replace=False)
    images = split.test_images[picks]
    if shift is not None:
        images = apply_shift(shift, images, severity=0.6, fraction=1.0, rng=rng)
    return images, split.test_labels[picks]


def _send(app: ServeInstance) -> tuple[dict[str, float], list[dict[str, Any]]]:
    confidence, labels = {}, []
    with httpx.Client(timeout=30) as client:
        for seed, shift in enumerate(TRAFFIC):
            images, truth = _images(shift, seed)
            for image, label in zip(images, truth, strict=True):
                request_id = f"prom-{uuid.uuid4().hex[:12]}"
                answer = client.post(
                    app.url(f"/{APP}/predict"),
                    content=encode_png(image),
                    headers={"content-type": "image/png", "x-request-id": request_id},
                )
                assert answer.status_code == 200, answer.text
                confidence[request_id] = answer.json()["confidence"]
                labels.append({"correlation_id": request_id, "label": int(label)})
        bad = client.post(
            app.url(f"/{APP}/predict"), content=b"no", headers={"content-type": "image/png"}
        )
        assert bad.status_code == 400  # one ingress rejection, for the dashboard's panel
    return confidence, labels


def _all_results(app: ServeInstance) -> dict[int, list[dict[str, Any]]]:
    def tested() -> dict[int, list[dict[str, Any]]] | None:
        body = httpx.get(app.url(f"/{APP}/drift?limit=500"), headers=ADMIN, timeout=10).json()
        by_window: dict[int, list[dict[str, Any]]] = {}
        for result in body["results"]:
            by_window.setdefault(result["window_index"], []).append(result)
        return by_window if len(by_window) >= len(TRAFFIC) else None

    return wait_until(tested, timeout_s=120, what="every window to be tested")


@pytest.fixture(scope="module")
def traffic(serve_instance: ServeInstance) -> Iterator[Traffic]:
    from ray import serve

    from serve_drift.apps.classifier import build_app

    args = {
        "model": {"source": "digits"},
        "drift": {
            "model_name": MODEL,
            "window": {"size": WINDOW},
            "telemetry": {"configure_sdk": True, "link_sample_size": WINDOW},
            "shipping": {"flush_interval_s": 0.1},
            "events": {"sample_rate": 1.0},  # every event stored: every label joins
        },
        "deployment": RAY_EXPORT,
        "monitor": RAY_EXPORT,
    }
    serve.run(build_app(args), name=APP, route_prefix=f"/{APP}")
    confidence, labels = _send(serve_instance)
    results = _all_results(serve_instance)
    answer = httpx.post(
        serve_instance.url(f"/{APP}/labels"), json={"labels": labels}, headers=ADMIN, timeout=30
    )
    assert {r["status"] for r in answer.json()["results"]} == {"accepted"}
    yield Traffic(results=results, confidence=confidence)
    serve.delete(APP)


def _drift_result(data: dict[str, Any]) -> DriftResult:
    return DriftResult(
        **{
            **data,
            "correlation_ids_sample": tuple(data["correlation_ids_sample"]),
            "component_p_values": tuple(data["component_p_values"].items()),
            "skipped_components": tuple(data["skipped_components"]),
        }
    )


def _signals(traffic: Traffic) -> list[WindowTested]:
    signals, baseline = [], None
    for index in sorted(traffic.results):
        results = tuple(_drift_result(r) for r in traffic.results[index])
        ids = {cid for r in results for cid in r.correlation_ids_sample}
        estimate = float(np.mean([traffic.confidence[cid] for cid in ids]))
        baseline = estimate if baseline is None else baseline
        signals.append(
            WindowTested(
                at=max(r.tested_at for r in results),
                model_name=MODEL,
                model_version=results[0].model_version,
                window_index=index,
                results=results,
                estimated_accuracy=estimate,
                estimated_accuracy_baseline=baseline,
            )
        )
    return signals


@pytest.fixture(scope="module")
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as server:
        yield server


@pytest.fixture(scope="module")
def alerting(traffic: Traffic, receiver: WebhookReceiver) -> Iterator[AlertPipeline]:
    """The stand-in for the monitor's wiring: the pipeline on the app's results, exporting its
    metrics through Ray like the app's own processes."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader

    from serve_drift.telemetry.ray_metrics import RayMetricsExporter

    reader = PeriodicExportingMetricReader(RayMetricsExporter(), export_interval_millis=500)
    provider = MeterProvider(metric_readers=[reader])
    config = _config(receiver.url)
    signals = _signals(traffic)
    pipeline = AlertPipeline(
        AlertEngine(config, started_at=signals[0].at, model_names=(MODEL,)),
        model_name=MODEL,
        meter=provider.get_meter("serve_drift"),
    )
    for signal in signals:
        pipeline.observe(signal)
    assert pipeline.engine.open_incidents(), "the occluded windows opened no incident"
    yield pipeline
    pipeline.close()
    provider.shutdown()


@pytest.fixture(scope="module")
def alertmanager(
    tmp_path_factory: pytest.TempPathFactory, receiver: WebhookReceiver
) -> Iterator[AlertmanagerServer]:
    text = render_yaml(compile_alertmanager(_config(receiver.url), model_name=MODEL), source="t")
    with AlertmanagerServer(tmp_path_factory.mktemp("alertmanager"), config=text) as server:
        yield server


def _ray_scrape_targets(path: Path) -> Path:
    """Ray's file service discovery document (its dashboard writes it when it runs; the shared
    test Ray runs without a dashboard, so it is written here, in Ray's format)."""
    import ray

    ports = [n["MetricsExportPort"] for n in ray.nodes() if n["Alive"]]
    path.write_text(
        json.dumps([{"labels": {"job": "ray"}, "targets": [f"127.0.0.1:{p}" for p in ports]}])
    )
    return path


@pytest.fixture(scope="module")
def prometheus(
    tmp_path_factory: pytest.TempPathFactory,
    serve_instance: ServeInstance,
    alertmanager: AlertmanagerServer,
) -> Iterator[PrometheusServer]:
    folder = tmp_path_factory.mktemp("prometheus")
    discovery = _ray_scrape_targets(folder / "prom_metrics_service_discovery.json")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {
                "job_name": "ray",
                "file_sd_configs": [{"files": [str(discovery)], "refresh_interval": "1s"}],
            }
        ],
        "alerting": {
            "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{alertmanager.port}"]}]}]
        },
    }
    rules = {"serve-drift.yml": render_yaml(compile_rules(_config(), model_name=MODEL), source="t")}
    with PrometheusServer(folder, config=config, rules=rules) as server:
        yield server


def test_prometheus_scrapes_the_app_through_ray_and_reads_the_latest_p_value(
    prometheus: PrometheusServer, traffic: Traffic
) -> None:
    latest = max(traffic.results)
    (expected,) = [r["p_value"] for r in traffic.results[latest] if r["detector"] == "combined"]
    query = f'max by (detector) (ray_serve_drift_drift_p_value_last{{model_name="{MODEL}"}})'

    def latest_p_value() -> float | None:
        found = prometheus.query(query)
        value = float(found[0]["value"][1]) if found else None
        return value if value is not None and abs(value - expected) < 1e-9 else None

    assert wait_until(latest_p_value, timeout_s=90, what="the latest p-value in Prometheus")
    (target,) = [t for t in prometheus.targets() if t["labels"]["job"] == "ray"]
    assert target["health"] == "up"
    windows_tested = prometheus.query(
        f'sum(ray_serve_drift_drift_windows_tested_total{{model_name="{MODEL}"}})'
    )
    assert float(windows_tested[0]["value"][1]) == len(traffic.results)


def test_prometheus_loads_the_compiled_rules(prometheus: PrometheusServer) -> None:
    (group,) = [g for g in prometheus.rule_groups() if g["name"] == f"serve-drift-{MODEL}"]
    loaded = {rule["name"]: rule for rule in group["rules"]}
    assert set(loaded) == {r.name for r in _config().rules} | {"alert-engine-absent"}
    wait_until(
        lambda: all(r["health"] == "ok" for g in prometheus.rule_groups() for r in g["rules"]),
        timeout_s=30,
        what="every rule evaluated without error",
    )
    assert loaded["drift-accuracy-drop"]["labels"] == {
        "severity": "critical",
        "owner": "ml-platform",
    }


def _finite(prometheus: PrometheusServer, query: str) -> bool:
    found = prometheus.query(query)
    return bool(found) and all(math.isfinite(float(r["value"][1])) for r in found)


def test_every_dashboard_query_returns_data(
    prometheus: PrometheusServer,
    alerting: AlertPipeline,
    traffic: Traffic,
    serve_instance: ServeInstance,
) -> None:
    board = grafana_dashboard(_config(), model_name=MODEL)
    queries = [q.replace("$__rate_interval", "1m") for q in dashboard_queries(board)]
    missing = list(queries)
    deadline = time.monotonic() + 120
    with httpx.Client(timeout=30) as client:
        while missing and time.monotonic() < deadline:
            # Traffic while Prometheus watches, so rates and quantiles are numbers, not 0/0.
            for image in _images(None, seed=99)[0][:10]:
                client.post(
                    serve_instance.url(f"/{APP}/predict"),
                    content=encode_png(image),
                    headers={"content-type": "image/png"},
                )
            missing = [q for q in missing if not _finite(prometheus, q)]
    assert not missing, f"no finite data from Prometheus for {missing}"


def _incident(alerting: AlertPipeline) -> Incident:
    incidents = alerting.engine.open_incidents()
    notified = [i for i in incidents if i.rule == "drift-accuracy-drop"] or incidents
    return notified[0]


def _deliveries(receiver: WebhookReceiver, rule: str) -> list[dict[str, Any]]:
    return [
        alert
        for call in list(receiver.received)
        for alert in call.json()["alerts"]
        if alert["labels"]["alertname"] == rule and alert["labels"]["model_name"] == MODEL
    ]


def test_alertmanager_delivers_the_incident_with_severity_owner_and_runbook(
    prometheus: PrometheusServer, alerting: AlertPipeline, receiver: WebhookReceiver
) -> None:
    incident = _incident(alerting)
    wait_until(lambda: _deliveries(receiver, incident.rule), timeout_s=120, what="the webhook call")
    alert = _deliveries(receiver, incident.rule)[0]
    assert alert["status"] == "firing"
    assert alert["labels"]["severity"] == incident.severity
    assert alert["labels"]["owner"] == incident.owner
    assert alert["labels"]["detector"] == dict(incident.scope)["detector"]
    assert alert["annotations"]["runbook_url"] == incident.runbook_url
    assert alert["annotations"]["summary"] == incident.summary  # one summary, both paths


def test_a_maintenance_silence_holds_the_alert_back_until_maintenance_ends(
    prometheus: PrometheusServer,
    alertmanager: AlertmanagerServer,
    alerting: AlertPipeline,
    receiver: WebhookReceiver,
) -> None:
    incident = _incident(alerting)
    wait_until(
        lambda: len(_deliveries(receiver, incident.rule)) >= 2,
        timeout_s=120,
        what="two deliveries (re-sent every 2 s while firing)",
    )
    silences = AlertmanagerSilences(
        alertmanager.url, matchers=maintenance_matchers(_config(), model_name=MODEL)
    )
    service = MaintenanceService(alerting, silences=silences)
    started = service.start(who="ci", why="retraining digits", duration_s=600)
    assert started.window is not None and started.window.silence_id and not started.silence_error

    def suppressed() -> dict[str, Any] | None:
        mine = [a for a in alertmanager.alerts() if a["labels"]["alertname"] == incident.rule]
        return mine[0] if mine and mine[0]["status"]["state"] == "suppressed" else None

    held = wait_until(suppressed, timeout_s=30, what="Alertmanager to suppress the alert")
    assert held["status"]["silencedBy"] == [started.window.silence_id]
    time.sleep(2)  # a notification already on its way may still land
    before = len(_deliveries(receiver, incident.rule))
    time.sleep(8)  # four repeat intervals of 2 s: without the silence, four more deliveries
    assert len(_deliveries(receiver, incident.rule)) == before
    assert alerting.engine.maintenance_active(at=time.time())
    service.stop(who="ci")
    assert silences.get(started.window.silence_id)["status"]["state"] == "expired"
    wait_until(
        lambda: len(_deliveries(receiver, incident.rule)) > before,
        timeout_s=30,
        what="deliveries to resume after maintenance",
    )
    silences.close()


def test_the_cli_sets_and_expires_a_silence_directly(
    alertmanager: AlertmanagerServer, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["alerts", "maintenance", "--alertmanager", alertmanager.url, "--model-name", MODEL]
    assert (
        cli_main([*base[:2], "start", *base[2:], "--who", "ci", "--why", "swap", "--for", "5m"])
        == 0
    )
    silence_id = json.loads(capsys.readouterr().out)["silence_id"]
    silence = alertmanager.silence(silence_id)
    assert silence["status"]["state"] == "active" and silence["createdBy"] == "ci"
    assert {m["name"] for m in silence["matchers"]} == {"model_name", "alertname"}
    assert cli_main([*base[:2], "stop", *base[2:], "--silence-id", silence_id]) == 0
    assert alertmanager.silence(silence_id)["status"]["state"] == "expired"
