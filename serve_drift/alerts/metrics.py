"""The engine's own metrics (OpenTelemetry API only), read by Prometheus rules and dashboards.

- ``serve_drift.alerts.active`` (gauge, 1 while an incident is open, 0 once resolved) per rule,
  severity and scope: what the compiled Prometheus rules fire on, so that Prometheus and
  Alertmanager alert on exactly the engine's incidents;
- ``serve_drift.alerts.signal`` (gauge) per signal: the values the rules read (estimated
  accuracy and its baseline, flagged and dropped shares, label metrics, sentinel accuracy);
- ``serve_drift.alerts.rules`` (gauge): how many rules the engine runs, a heartbeat;
- ``serve_drift.alerts.maintenance`` (gauge, 1 during maintenance);
- ``serve_drift.alerts.transitions{rule, transition, notified}`` and
  ``serve_drift.alerts.notifications{sink, outcome}`` (counters).

>>> from opentelemetry.metrics import NoOpMeterProvider
>>> telemetry = AlertTelemetry(meter=NoOpMeterProvider().get_meter("test"))
>>> telemetry.record_outcome("stdout", "delivered")
"""

from __future__ import annotations

from collections.abc import Sequence

from opentelemetry import metrics

from serve_drift.alerts.incidents import Transition
from serve_drift.alerts.signals import LabelMetrics, SentinelRun, Signal, WindowTested
from serve_drift.telemetry import instruments as tel

__all__ = [
    "ATTR_ALERT_RULE",
    "ATTR_ALERT_SEVERITY",
    "ATTR_ALERT_SIGNAL",
    "METRIC_ACTIVE",
    "METRIC_MAINTENANCE",
    "METRIC_RULES",
    "METRIC_SIGNAL",
    "AlertTelemetry",
]

METRIC_ACTIVE = "serve_drift.alerts.active"
METRIC_SIGNAL = "serve_drift.alerts.signal"
METRIC_RULES = "serve_drift.alerts.rules"
METRIC_MAINTENANCE = "serve_drift.alerts.maintenance"
ATTR_ALERT_RULE = "serve_drift.alert.rule"
ATTR_ALERT_SEVERITY = "serve_drift.alert.severity"
ATTR_ALERT_SIGNAL = "serve_drift.alert.signal"
_SCOPE_ATTRIBUTES = {
    "model_name": tel.ATTR_MODEL_NAME,
    "model_version": tel.ATTR_MODEL_VERSION,
    "detector": tel.ATTR_DETECTOR,
}


class AlertTelemetry:
    """Records the engine's metrics; pass a ``meter`` or use the global provider's."""

    def __init__(self, *, meter: metrics.Meter | None = None) -> None:
        meter = meter or metrics.get_meter("serve_drift")
        self._active = meter.create_gauge(METRIC_ACTIVE, unit="1", description="1: incident open.")
        self._signal = meter.create_gauge(
            METRIC_SIGNAL, unit="1", description="Latest value of each signal the rules read."
        )
        self._rules = meter.create_gauge(METRIC_RULES, unit="{rule}", description="Rules run.")
        self._maintenance = meter.create_gauge(
            METRIC_MAINTENANCE, unit="1", description="1 while maintenance holds alerts back."
        )
        self._transitions = meter.create_counter(
            "serve_drift.alerts.transitions", unit="{transition}", description="Incident changes."
        )
        self._outcomes = meter.create_counter(
            "serve_drift.alerts.notifications",
            unit="{notification}",
            description="Notifications per sink: delivered, failed, dropped.",
        )

    def record(
        self,
        signal: Signal | None,
        transitions: Sequence[Transition],
        *,
        model_name: str,
        rules: int,
        maintenance: bool,
    ) -> None:
        """After each observation: its signal's values, the transitions, the heartbeat."""
        model = {tel.ATTR_MODEL_NAME: model_name}
        self._rules.set(rules, model)
        self._maintenance.set(int(maintenance), model)
        if signal is not None:
            self._record_signal(signal)
        for transition in transitions:
            self._record_transition(transition)

    def record_outcome(self, sink: str, outcome: str) -> None:
        self._outcomes.add(1, {"serve_drift.alert.sink": sink, "outcome": outcome})

    def _record_transition(self, transition: Transition) -> None:
        incident = transition.incident
        attributes = {
            _SCOPE_ATTRIBUTES.get(key, f"serve_drift.{key}"): value for key, value in incident.scope
        }
        attributes[ATTR_ALERT_RULE] = incident.rule
        attributes[ATTR_ALERT_SEVERITY] = incident.severity
        self._active.set(int(incident.state == "open"), attributes)
        self._transitions.add(
            1,
            {
                ATTR_ALERT_RULE: incident.rule,
                "serve_drift.alert.transition": transition.kind,
                "serve_drift.alert.notified": transition.notify,
            },
        )

    def _record_signal(self, signal: Signal) -> None:
        if not isinstance(signal, WindowTested | LabelMetrics | SentinelRun):
            return
        model = {
            tel.ATTR_MODEL_NAME: signal.model_name,
            tel.ATTR_MODEL_VERSION: signal.model_version,
        }
        for name, value in _signal_values(signal):
            if value is not None:
                self._signal.set(value, {**model, ATTR_ALERT_SIGNAL: name})


def _signal_values(
    signal: WindowTested | LabelMetrics | SentinelRun,
) -> list[tuple[str, float | None]]:
    if isinstance(signal, WindowTested):
        return [
            ("estimated_accuracy", signal.estimated_accuracy),
            ("estimated_accuracy_baseline", signal.estimated_accuracy_baseline),
            ("flagged_share", signal.flagged_share),
            ("dropped_share", signal.dropped_share),
            ("latency_p99_s", signal.latency_p99_s),
        ]
    if isinstance(signal, LabelMetrics):
        return [
            ("label_accuracy", signal.accuracy),
            ("label_f1_macro", signal.f1_macro),
            ("label_ece", signal.ece),
        ]
    return [("sentinel_accuracy", signal.accuracy)]
