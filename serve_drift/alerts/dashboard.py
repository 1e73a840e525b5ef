"""A Grafana dashboard generated from the rule config, for one app's Prometheus metrics.

Panels: drift p-values per detector with the rules' ``alpha`` as threshold lines, windows
tested and significant, the engine's alert state and maintenance, accuracy from labels beside
estimated accuracy (and its baseline), calibration error, request latency p99, flagged share,
and dropped or failed monitoring data. Queries use ``$__rate_interval`` and a ``datasource``
variable; ratios put ``or vector(0)`` on the numerator only, so "no drops" reads 0 while the
series that must exist (embeddings shipped, requests) still decide whether there is data.

>>> from serve_drift.alerts.config import AlertsConfig
>>> board = grafana_dashboard(AlertsConfig(), model_name="digits")
>>> board["uid"], len(dashboard_queries(board)) > 10
('serve-drift-digits', True)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.metrics import METRIC_ACTIVE, METRIC_MAINTENANCE, METRIC_SIGNAL
from serve_drift.alerts.prometheus import metric, quote
from serve_drift.alerts.rules import DriftCondition, ThresholdCondition
from serve_drift.telemetry.instruments import P_VALUE_BUCKETS

__all__ = ["dashboard_queries", "grafana_dashboard"]

_DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
_RATE = "[$__rate_interval]"
_WIDTH, _HEIGHT = 12, 8
# Recorded without model name: in Prometheus they cover every app the cluster runs.
UNLABELLED = frozenset(
    {
        "serve_drift.embeddings.dropped",
        "serve_drift.embeddings.shipped",
        "serve_drift.events.dropped",
        "serve_drift.events.accepted",
        "serve_drift.monitoring.errors",
    }
)


class _Names:
    """Series names and selectors for one app."""

    def __init__(self, *, prefix: str, model_name: str) -> None:
        self.prefix = prefix
        self.model = f"model_name={quote(model_name)}"

    def series(
        self, otel_name: str, suffix: str = "", *, extra: str = "", model: bool | None = None
    ) -> str:
        """``name{model_name="...", extra}``; metrics recorded without model labels (the
        monitor's embeddings, events and errors counters) get no model matcher."""
        with_model = otel_name not in UNLABELLED if model is None else model
        matchers = ", ".join(m for m in ((self.model if with_model else ""), extra) if m)
        name = metric(otel_name, prefix=self.prefix, suffix=suffix)
        return f"{name}{{{matchers}}}" if matchers else name

    def rate(self, otel_name: str, *, model: bool | None = None) -> str:
        return f"rate({self.series(otel_name, '_total', model=model)}{_RATE})"

    def share(self, part: str, whole: str) -> str:
        """sum(rate(part)) / sum(rate(whole)); "no part yet" counts as 0."""
        return f"(sum({self.rate(part)}) or vector(0)) / sum({self.rate(whole)})"


@dataclass(frozen=True)
class _Spec:
    """One panel: a title, its (query, legend) targets, and how to draw them."""

    title: str
    targets: tuple[tuple[str, str], ...]
    unit: str = "short"
    thresholds: tuple[float, ...] = ()
    kind: str = "timeseries"
    log_scale: bool = False


def _target(expr: str, legend: str, ref: str) -> dict[str, Any]:
    return {"datasource": _DATASOURCE, "expr": expr, "legendFormat": legend, "refId": ref}


def _field_config(spec: _Spec) -> dict[str, Any]:
    custom: dict[str, Any] = {}
    if spec.thresholds:
        custom["thresholdsStyle"] = {"mode": "line"}
    if spec.log_scale:
        custom["scaleDistribution"] = {"type": "log", "log": 10}
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    steps += [{"color": "red", "value": value} for value in sorted(spec.thresholds)]
    return {
        "defaults": {
            "unit": spec.unit,
            "custom": custom,
            "thresholds": {"mode": "absolute", "steps": steps},
        },
        "overrides": [],
    }


def _panel(spec: _Spec, *, index: int) -> dict[str, Any]:
    position = {"x": (index % 2) * _WIDTH, "y": (index // 2) * _HEIGHT, "w": _WIDTH, "h": _HEIGHT}
    return {
        "id": index + 1,
        "type": spec.kind,
        "title": spec.title,
        "datasource": _DATASOURCE,
        "gridPos": position,
        "fieldConfig": _field_config(spec),
        "targets": [
            _target(expr, legend, chr(ord("A") + i))
            for i, (expr, legend) in enumerate(spec.targets)
        ],
    }


def _alphas(config: AlertsConfig) -> tuple[float, ...]:
    found = {c.alpha for r in config.rules for c in r.conditions if isinstance(c, DriftCondition)}
    return tuple(sorted(found))


def _bounds(config: AlertsConfig, signal: str) -> tuple[float, ...]:
    """The absolute bounds rules put on ``signal``: drawn as threshold lines."""
    found = {
        value
        for r in config.rules
        for c in r.conditions
        if isinstance(c, ThresholdCondition) and c.signal == signal
        for value in (c.above, c.below)
        if value is not None
    }
    return tuple(sorted(found))


def _drift_panels(n: _Names, config: AlertsConfig) -> list[_Spec]:
    p_last = f"max by (detector) ({n.series('serve_drift.drift.p_value.last')})"
    count = n.series("serve_drift.drift.p_value", "_count")
    counted = [(f"sum by (detector) (increase({count}{_RATE}))", "{{detector}}: windows tested")]
    for alpha in _alphas(config):
        if alpha in P_VALUE_BUCKETS:  # only a bucket bound can be counted from the histogram
            bucket = n.series("serve_drift.drift.p_value", "_bucket", extra=f'le="{alpha:g}"')
            legend = f"{{{{detector}}}}: p <= {alpha:g}"
            counted.append((f"sum by (detector) (increase({bucket}{_RATE}))", legend))
    return [
        _Spec(
            "Drift p-value, latest window",
            ((p_last, "{{detector}}"),),
            thresholds=_alphas(config),
            log_scale=True,
        ),
        _Spec("Windows tested and significant", tuple(counted)),
    ]


def _alert_panels(n: _Names) -> list[_Spec]:
    active = f"max by (alert_rule) ({n.series(METRIC_ACTIVE)})"
    maintenance = f"max({n.series(METRIC_MAINTENANCE)})"
    labelled = f"max by (tag) ({n.series('serve_drift.concept.accuracy')})"
    estimated = n.series(METRIC_SIGNAL, extra='alert_signal="estimated_accuracy"')
    baseline = n.series(METRIC_SIGNAL, extra='alert_signal="estimated_accuracy_baseline"')
    return [
        _Spec(
            "Alert state (1: open)",
            ((active, "{{alert_rule}}"), (maintenance, "maintenance")),
            kind="state-timeline",
        ),
        _Spec(
            "Accuracy: from labels and estimated",
            (
                (labelled, "from labels ({{tag}})"),
                (f"max({estimated})", "estimated (no labels)"),
                (f"max({baseline})", "estimated on the reference"),
            ),
            unit="percentunit",
        ),
    ]


def _health_panels(n: _Names, config: AlertsConfig) -> list[_Spec]:
    latency = n.series("serve_drift.request.duration", "_bucket")
    errors = f"(sum({n.rate('serve_drift.monitoring.errors')}) or vector(0))"
    rejected = f"sum by (code) ({n.rate('serve_drift.ingress.rejected')})"
    return [
        _Spec(
            "Calibration error (ECE) from labels",
            ((f"max by (tag) ({n.series('serve_drift.concept.ece')})", "{{tag}}"),),
        ),
        _Spec(
            "Request latency p99",
            ((f"histogram_quantile(0.99, sum by (le) (rate({latency}{_RATE})))", "p99"),),
            unit="s",
            thresholds=_bounds(config, "latency_p99_s"),
        ),
        _Spec(
            "Flagged inputs and ingress rejections",
            (
                (n.share("serve_drift.ingress.flagged", "serve_drift.requests"), "flagged share"),
                (rejected, "rejected: {{code}} /s"),
            ),
            thresholds=_bounds(config, "flagged_share"),
        ),
        _Spec(
            "Monitoring data lost, and errors",
            (
                (
                    n.share("serve_drift.embeddings.dropped", "serve_drift.embeddings.shipped"),
                    "embeddings dropped / shipped",
                ),
                (
                    n.share("serve_drift.events.dropped", "serve_drift.events.accepted"),
                    "events dropped / accepted",
                ),
                (f"{errors} / sum({n.rate('serve_drift.requests')})", "errors per request"),
            ),
            unit="percentunit",
            thresholds=_bounds(config, "dropped_share"),
        ),
    ]


def grafana_dashboard(config: AlertsConfig, *, model_name: str) -> dict[str, Any]:
    """The dashboard JSON (a dict) for one app; import it into Grafana or provision it."""
    names = _Names(prefix=config.prometheus.metric_prefix, model_name=model_name)
    specs = [*_drift_panels(names, config), *_alert_panels(names), *_health_panels(names, config)]
    variable = {"name": "datasource", "label": "Prometheus", "type": "datasource"}
    return {
        "uid": f"serve-drift-{model_name}"[:40],
        "title": f"serve-drift: {model_name}",
        "tags": ["serve-drift", "drift"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": [{**variable, "query": "prometheus"}]},
        "annotations": {"list": []},
        "panels": [_panel(spec, index=i) for i, spec in enumerate(specs)],
    }


def dashboard_queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL expression in ``dashboard``, in panel order."""
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
