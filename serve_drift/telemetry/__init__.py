"""OpenTelemetry: the instruments every stage records (API only), and the opt-in SDK setup.

- :mod:`~serve_drift.telemetry.instruments`: span, metric and attribute names under
  ``serve_drift.``; never installs a provider;
- :mod:`~serve_drift.telemetry.setup`: :func:`configure_telemetry`, the SDK from ``OTEL_*``, and
  its bounded :func:`force_flush` and :func:`shutdown_telemetry`;
- :mod:`~serve_drift.telemetry.bounded`: flush and shutdown that return within a bound;
- :mod:`~serve_drift.telemetry.jsonlines`: the rotating JSON-lines fallback exporters;
- :mod:`~serve_drift.telemetry.logs_setup`: an OTel logs SDK provider for the event log export.
"""

from serve_drift.telemetry.setup import (
    TelemetryDestination,
    TelemetryFlushResult,
    configure_telemetry,
    force_flush,
    shutdown_telemetry,
)

__all__ = [
    "TelemetryDestination",
    "TelemetryFlushResult",
    "configure_telemetry",
    "force_flush",
    "shutdown_telemetry",
]
