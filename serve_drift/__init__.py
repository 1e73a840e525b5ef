"""serve-drift: drift detection for PyTorch vision models served with Ray Serve.

Importing the package does no work and changes no global state (no OpenTelemetry providers,
no Ray connection); :func:`configure_telemetry` is the opt-in SDK setup.
"""

from serve_drift._config import (
    DetectorConfig,
    DriftConfig,
    EventLogConfig,
    ShippingConfig,
    TelemetryConfig,
    WindowConfig,
)
from serve_drift._deploy import monitor_deployment, monitored_app
from serve_drift._marks import mark_request
from serve_drift._monitor import DriftMonitor
from serve_drift._reference import ReferenceLineage, ReferenceSet
from serve_drift._results import DriftResult, DriftStatistic
from serve_drift._wrap import monitored
from serve_drift.telemetry_setup import TelemetryDestination, configure_telemetry

__all__ = [
    "DetectorConfig",
    "DriftConfig",
    "DriftMonitor",
    "DriftResult",
    "DriftStatistic",
    "EventLogConfig",
    "ReferenceLineage",
    "ReferenceSet",
    "ShippingConfig",
    "TelemetryConfig",
    "TelemetryDestination",
    "WindowConfig",
    "configure_telemetry",
    "mark_request",
    "monitor_deployment",
    "monitored",
    "monitored_app",
]

__version__ = "0.1.0"
