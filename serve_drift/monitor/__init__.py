"""The drift monitor: one deployment per monitored model, fed by every replica.

- :mod:`~serve_drift.monitor.deployment`: the Serve deployment and ``monitored_app``;
- :mod:`~serve_drift.monitor.state`: windows, detectors, results and health, without Ray;
- :mod:`~serve_drift.monitor.windows`: count, sliding and time windows;
- :mod:`~serve_drift.monitor.runner`: runs the detectors on a window, with a linked span;
- :mod:`~serve_drift.monitor.event_log`: the monitor's side of the event log and labels;
- :mod:`~serve_drift.monitor.traffic_sample`: a uniform sample of traffic for new references;
- :mod:`~serve_drift.monitor.calibration`: the detectors calibrated for the reference and window;
- :mod:`~serve_drift.monitor.accuracy`: the label-free accuracy estimate per window.
"""

from serve_drift.monitor.calibration import calibrate_reference
from serve_drift.monitor.deployment import DriftMonitor, monitor_deployment, monitored_app
from serve_drift.monitor.state import MonitorCounts, MonitorHealth, MonitorState
from serve_drift.monitor.traffic_sample import TrafficSnapshot

__all__ = [
    "DriftMonitor",
    "MonitorCounts",
    "MonitorHealth",
    "MonitorState",
    "TrafficSnapshot",
    "calibrate_reference",
    "monitor_deployment",
    "monitored_app",
]
