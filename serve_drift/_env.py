"""Every ``SERVE_DRIFT_*`` environment knob, in one place. They only ever supply defaults."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Where trained demo models and reference sets are cached."""
    default = Path.home() / ".cache" / "serve-drift"
    return Path(os.environ.get("SERVE_DRIFT_CACHE_DIR", default))


def telemetry_dir() -> Path:
    """Where telemetry goes as JSON lines when no OTLP endpoint is configured."""
    return Path(
        os.environ.get("SERVE_DRIFT_TELEMETRY_DIR", Path.cwd() / ".serve-drift" / "telemetry")
    )


def configure_otel_default() -> bool:
    """Whether replicas configure the OpenTelemetry SDK themselves unless config says otherwise."""
    return os.environ.get("SERVE_DRIFT_CONFIGURE_OTEL", "").lower() in {"1", "true", "yes"}


def device_default() -> str | None:
    """Torch device for drift tests (``cpu``, ``cuda``, ``cuda:1``); ``None``: automatic."""
    return os.environ.get("SERVE_DRIFT_DEVICE") or None
