"""Every ``SERVE_DRIFT_*`` environment knob, in one place. They only ever supply defaults."""

from __future__ import annotations

import math
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


def events_dsn() -> str | None:
    """The PostgreSQL event store's DSN (``SERVE_DRIFT_EVENTS_DSN``) when the config names none.

    Read where the store is opened (in the monitor's process, on whichever node it runs), so a
    password set here never travels in the Serve config.
    """
    return os.environ.get("SERVE_DRIFT_EVENTS_DSN") or None


def event_db_dir() -> Path:
    """Where monitors keep their event stores by default (``<app>/<monitor>.sqlite`` each)."""
    return cache_dir() / "events"


def device_default() -> str | None:
    """Torch device for drift tests (``cpu``, ``cuda``, ``cuda:1``); ``None``: automatic."""
    return os.environ.get("SERVE_DRIFT_DEVICE") or None


# Telemetry bounds: the defaults of ``TelemetryConfig`` and of ``configure_telemetry``'s arguments.
TELEMETRY_FLUSH_TIMEOUT_S = 5.0
TELEMETRY_SHUTDOWN_TIMEOUT_S = 5.0
TELEMETRY_FILE_MAX_BYTES = 16 * 1024 * 1024
TELEMETRY_FILE_BACKUP_COUNT = 3


def telemetry_flush_timeout_s() -> float:
    """Bound on one telemetry flush, in seconds (``SERVE_DRIFT_TELEMETRY_FLUSH_TIMEOUT_S``)."""
    return _positive_float("SERVE_DRIFT_TELEMETRY_FLUSH_TIMEOUT_S", TELEMETRY_FLUSH_TIMEOUT_S)


def telemetry_shutdown_timeout_s() -> float:
    """Bound on telemetry shutdown, also at exit (``SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S``)."""
    return _positive_float("SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S", TELEMETRY_SHUTDOWN_TIMEOUT_S)


def telemetry_file_max_bytes() -> int:
    """Size at which a JSON-lines telemetry file rotates (``SERVE_DRIFT_TELEMETRY_FILE_MAX_BYTES``).

    A knob that does not parse, or is out of range, falls back to the documented default.
    """
    return _int_at_least("SERVE_DRIFT_TELEMETRY_FILE_MAX_BYTES", TELEMETRY_FILE_MAX_BYTES, 1)


def telemetry_file_backup_count() -> int:
    """Rotated JSON-lines files kept per file (``SERVE_DRIFT_TELEMETRY_FILE_BACKUPS``)."""
    return _int_at_least("SERVE_DRIFT_TELEMETRY_FILE_BACKUPS", TELEMETRY_FILE_BACKUP_COUNT, 0)


def _positive_float(name: str, default: float) -> float:
    # A knob only supplies a default: an unusable value falls back to the documented one.
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if math.isfinite(value) and value > 0 else default


def _int_at_least(name: str, default: int, minimum: int) -> int:
    try:
        value = int(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value >= minimum else default
