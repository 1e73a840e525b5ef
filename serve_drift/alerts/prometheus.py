"""Rules compiled to Prometheus alerting rules: one rule config, evaluated in both places.

Each rule becomes an alerting rule with labels ``severity`` and ``owner`` and annotations
``summary``, ``runbook_url``, ``dashboard``, ``suggested_checks`` and ``description``:

- **window rules** (drift, CUSUM, thresholds, failing detectors) fire on the engine's
  ``serve_drift_alerts_active`` gauge. PromQL has no notion of "the last n windows": windows
  arrive with traffic, not with scrapes, so a time-range translation of "2 of the last 3
  windows" would be a different rule with a different false-alert rate. The engine evaluates
  the window logic (and its hysteresis) once; Prometheus and Alertmanager then route, group,
  silence and deliver exactly those incidents;
- **silence rules** compile to native PromQL over the windows-tested counter, so Prometheus
  still alerts when the monitor itself is gone;
- one more rule fires when the engine's heartbeat (``serve_drift_alerts_rules``) is absent for
  ``prometheus.engine_absent_for_s``: window rules cannot fire without the engine.

>>> from serve_drift.alerts.config import AlertsConfig
>>> groups = compile_rules(AlertsConfig(), model_name="digits")
>>> rule = groups["groups"][0]["rules"][1]
>>> rule["alert"], rule["labels"]["severity"], rule["expr"].split("(")[0]
('input-drift', 'warning', 'max by ')
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import yaml

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.metrics import METRIC_ACTIVE, METRIC_RULES
from serve_drift.alerts.payload import alert_annotations
from serve_drift.alerts.rules import AlertRule, SilenceCondition
from serve_drift.telemetry.ray_metrics import prometheus_label, ray_metric_name

__all__ = [
    "ENGINE_ABSENT",
    "compile_rules",
    "duration",
    "metric",
    "render_yaml",
    "rule_names",
]

ENGINE_ABSENT = "alert-engine-absent"
_LABEL_FIELDS = ("model_name", "model_version", "detector")


def metric(otel_name: str, *, prefix: str, suffix: str = "") -> str:
    """The Prometheus series name of a serve-drift instrument (``suffix``: ``_total``, ...)."""
    return f"{prefix}{ray_metric_name(otel_name)}{suffix}"


def duration(seconds: float) -> str:
    """A Prometheus duration: whole seconds, at least one."""
    return f"{max(1, math.ceil(seconds))}s"


def quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_names(config: AlertsConfig) -> list[str]:
    """Every ``alertname`` the compiled rules can raise."""
    extra = [ENGINE_ABSENT] if config.prometheus.engine_absent_for_s else []
    return [r.name for r in config.rules] + extra


def compile_rules(config: AlertsConfig, *, model_name: str) -> dict[str, Any]:
    """A Prometheus rule file (as a dict; :func:`render_yaml` writes it) for one app."""
    rules = [_alerting_rule(rule, config, model_name) for rule in config.rules]
    if config.prometheus.engine_absent_for_s:
        rules.append(_engine_absent(config, model_name))
    group = {
        "name": f"serve-drift-{model_name}",
        "interval": duration(config.prometheus.evaluation_interval_s),
        "rules": rules,
    }
    return {"groups": [group]}


def _alerting_rule(rule: AlertRule, config: AlertsConfig, model_name: str) -> dict[str, Any]:
    silence = next((c for c in rule.conditions if isinstance(c, SilenceCondition)), None)
    if silence is not None:
        expr = _silence_expr(silence, config.prometheus.metric_prefix, model_name)
    else:
        expr = _active_expr(rule, config.prometheus.metric_prefix, model_name)
    return {
        "alert": rule.name,
        "expr": expr,
        "labels": {"severity": rule.severity, "owner": rule.owner},
        "annotations": {**_annotations(rule), "description": rule.describe()},
    }


def _active_expr(rule: AlertRule, prefix: str, model_name: str) -> str:
    by = ", ".join(_LABEL_FIELDS if rule.per_detector else _LABEL_FIELDS[:2])
    rule_label = prometheus_label("serve_drift.alert.rule")
    selector = f"{{model_name={quote(model_name)}, {rule_label}={quote(rule.name)}}}"
    return f"max by ({by}) ({metric(METRIC_ACTIVE, prefix=prefix)}{selector}) > 0"


def _silence_expr(condition: SilenceCondition, prefix: str, model_name: str) -> str:
    series = metric("serve_drift.drift.windows_tested", prefix=prefix, suffix="_total")
    selector = f"{series}{{model_name={quote(model_name)}}}"
    window = duration(condition.max_gap_s)
    return (
        f"(sum by (model_name) (increase({selector}[{window}])) == 0)"
        f" or absent_over_time({selector}[{window}])"
    )


def _engine_absent(config: AlertsConfig, model_name: str) -> dict[str, Any]:
    assert config.prometheus.engine_absent_for_s is not None
    series = metric(METRIC_RULES, prefix=config.prometheus.metric_prefix)
    window = duration(config.prometheus.engine_absent_for_s)
    owners = Counter(r.owner for r in config.rules)
    return {
        "alert": ENGINE_ABSENT,
        "expr": f"absent_over_time({series}{{model_name={quote(model_name)}}}[{window}])",
        "labels": {
            "severity": "warning",
            "owner": owners.most_common(1)[0][0] if owners else "ml-platform",
        },
        "annotations": {
            "summary": f"{model_name}: the drift monitor's alert engine is not reporting",
            "description": "Window rules (drift, accuracy, failing detectors) cannot fire "
            "without it: is the monitor deployment running and exporting metrics?",
        },
    }


class _Template(dict[str, str]):
    """Summary fields as Prometheus template references (the rule's own as plain text)."""

    def __missing__(self, key: str) -> str:
        return "{{ $labels." + key + " }}"


def _annotations(rule: AlertRule) -> dict[str, str]:
    fields = _Template(rule=rule.name, severity=rule.severity, owner=rule.owner)
    return alert_annotations(
        summary=(rule.summary or f"{rule.name}: {rule.describe()}").format_map(fields),
        runbook_url=rule.runbook_url,
        dashboards=rule.dashboards,
        suggested_checks=rule.suggested_checks,
    )


def render_yaml(document: dict[str, Any], *, source: str) -> str:
    """YAML with a header naming where it was generated from."""
    header = (
        f"# Generated by `serve-drift alerts compile` from {source}.\n"
        "# Edit the rule config and compile again rather than editing this file.\n"
    )
    text = yaml.dump(document, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=10_000)
    return header + text


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (suggested checks) as ``|`` blocks; nothing folded."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)
