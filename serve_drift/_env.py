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


def event_db() -> Path | None:
    """The event store the ``serve-drift events`` command reads, if set explicitly."""
    value = os.environ.get("SERVE_DRIFT_EVENT_DB")
    return Path(value) if value else None


def event_db_dir() -> Path:
    """Where monitors keep their event stores by default (``<app>/<monitor>.sqlite`` each)."""
    return cache_dir() / "events"


def device_default() -> str | None:
    """Torch device for drift tests (``cpu``, ``cuda``, ``cuda:1``); ``None``: automatic."""
    return os.environ.get("SERVE_DRIFT_DEVICE") or None
