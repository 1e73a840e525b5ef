"""serve-drift: drift detection for PyTorch vision models served with Ray Serve.

Importing the package does no work and changes no global state (no OpenTelemetry providers,
no Ray connection); :func:`configure_telemetry` is the opt-in SDK setup. This module only
re-exports the public surface; the README's "Architecture" section maps the packages.
"""

from serve_drift.apps.reference_build import build_reference_from
from serve_drift.config import (
    CalibrationConfig,
    DetectorConfig,
    DriftConfig,
    EventLogConfig,
    ShippingConfig,
    TelemetryConfig,
    WindowConfig,
)
from serve_drift.errors import ServeDriftError
from serve_drift.messages import DriftResult, DriftStatistic
from serve_drift.monitor import (
    DriftMonitor,
    calibrate_reference,
    monitor_deployment,
    monitored_app,
)
from serve_drift.reference import ReferenceLineage, ReferenceSet, build_reference, embed_outputs
from serve_drift.replica import answer_batch, monitored
from serve_drift.request_context import mark_request
from serve_drift.telemetry import (
    TelemetryDestination,
    TelemetryFlushResult,
    configure_telemetry,
    shutdown_telemetry,
)

__all__ = [
    "CalibrationConfig",
    "DetectorConfig",
    "DriftConfig",
    "DriftMonitor",
    "DriftResult",
    "DriftStatistic",
    "EventLogConfig",
    "ReferenceLineage",
    "ReferenceSet",
    "ServeDriftError",
    "ShippingConfig",
    "TelemetryConfig",
    "TelemetryDestination",
    "TelemetryFlushResult",
    "WindowConfig",
    "answer_batch",
    "build_reference",
    "build_reference_from",
    "calibrate_reference",
    "configure_telemetry",
    "embed_outputs",
    "mark_request",
    "monitor_deployment",
    "monitored",
    "monitored_app",
    "shutdown_telemetry",
]

__version__ = "0.1.0"
