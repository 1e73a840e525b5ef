"""Alerting: rules on drift results and other signals, incidents, sinks, and the Prometheus path.

The drift monitor feeds an :class:`AlertPipeline` (engine, sinks, metrics, storage) one signal
at a time; the same rule config compiles to Prometheus alerting rules, an Alertmanager route
tree and a Grafana dashboard (``serve-drift alerts compile``).

>>> from serve_drift.alerts import AlertsConfig, default_rules
>>> [rule.name for rule in AlertsConfig().rules] == [rule.name for rule in default_rules()]
True
"""

from serve_drift.alerts.alertmanager import (
    AlertmanagerSilences,
    compile_alertmanager,
    maintenance_matchers,
)
from serve_drift.alerts.config import AlertsConfig, config_from_mapping
from serve_drift.alerts.control import MaintenanceService, MaintenanceStatus
from serve_drift.alerts.dashboard import dashboard_queries, grafana_dashboard
from serve_drift.alerts.defaults import default_rules
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Evidence, Incident, Transition, WindowEvidence
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.pipeline import AlertPipeline
from serve_drift.alerts.prometheus import compile_rules
from serve_drift.alerts.rules import AlertRule
from serve_drift.alerts.signals import (
    DetectorFailed,
    LabelMetrics,
    SentinelRun,
    Signal,
    Tick,
    WindowTested,
)
from serve_drift.alerts.sinks import (
    AlertDispatcher,
    OtelLogSink,
    StdoutSink,
    WebhookSink,
    verify_signature,
)

__all__ = [
    "AlertDispatcher",
    "AlertEngine",
    "AlertPipeline",
    "AlertRule",
    "AlertmanagerSilences",
    "AlertsConfig",
    "DetectorFailed",
    "Evidence",
    "Incident",
    "LabelMetrics",
    "MaintenanceService",
    "MaintenanceStatus",
    "MaintenanceWindow",
    "OtelLogSink",
    "SentinelRun",
    "Signal",
    "StdoutSink",
    "Tick",
    "Transition",
    "WebhookSink",
    "WindowEvidence",
    "WindowTested",
    "compile_alertmanager",
    "compile_rules",
    "config_from_mapping",
    "dashboard_queries",
    "default_rules",
    "grafana_dashboard",
    "maintenance_matchers",
    "verify_signature",
]
