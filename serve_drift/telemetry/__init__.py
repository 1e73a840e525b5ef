"""OpenTelemetry: the instruments every stage records (API only), and the opt-in SDK setup.

- :mod:`~serve_drift.telemetry.instruments`: span, metric and attribute names under
  ``serve_drift.``; never installs a provider;
- :mod:`~serve_drift.telemetry.setup`: :func:`configure_telemetry`, the SDK from ``OTEL_*``;
- :mod:`~serve_drift.telemetry.logs_setup`: an OTel logs SDK provider for the event log export.
"""

from serve_drift.telemetry.setup import TelemetryDestination, configure_telemetry, force_flush

__all__ = ["TelemetryDestination", "configure_telemetry", "force_flush"]
