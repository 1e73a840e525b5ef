"""TelemetryConfig's bounds: documented defaults, SERVE_DRIFT_* knobs as defaults only, and the
one mapping to configure_telemetry's arguments."""

from __future__ import annotations

import inspect

import pytest
from pydantic import ValidationError

from serve_drift import _env
from serve_drift.config import DriftConfig, TelemetryConfig
from serve_drift.telemetry.setup import configure_telemetry

_KNOBS = (
    "SERVE_DRIFT_TELEMETRY_FLUSH_TIMEOUT_S",
    "SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S",
    "SERVE_DRIFT_TELEMETRY_FILE_MAX_BYTES",
    "SERVE_DRIFT_TELEMETRY_FILE_BACKUPS",
)


@pytest.fixture(autouse=True)
def _no_knobs(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in _KNOBS:
        monkeypatch.delenv(name, raising=False)


def test_documented_defaults() -> None:
    config = TelemetryConfig()
    assert (config.flush_timeout_s, config.shutdown_timeout_s) == (5.0, 5.0)
    assert (config.file_max_bytes, config.file_backup_count) == (16 * 1024 * 1024, 3)


def test_environment_knobs_supply_defaults_and_config_wins(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_TELEMETRY_SHUTDOWN_TIMEOUT_S", "2.5")
    monkeypatch.setenv("SERVE_DRIFT_TELEMETRY_FILE_BACKUPS", "0")
    assert TelemetryConfig().shutdown_timeout_s == 2.5
    assert TelemetryConfig().file_backup_count == 0
    assert TelemetryConfig(shutdown_timeout_s=9).shutdown_timeout_s == 9
    # Read when a config is built, not when the module was imported.
    assert DriftConfig().telemetry.shutdown_timeout_s == 2.5


@pytest.mark.parametrize("raw", ["soon", "0", "-3", "nan", "inf"])
def test_an_unusable_knob_falls_back_to_the_documented_default(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("SERVE_DRIFT_TELEMETRY_FLUSH_TIMEOUT_S", raw)
    monkeypatch.setenv("SERVE_DRIFT_TELEMETRY_FILE_MAX_BYTES", raw)
    assert _env.telemetry_flush_timeout_s() == _env.TELEMETRY_FLUSH_TIMEOUT_S
    assert _env.telemetry_file_max_bytes() == _env.TELEMETRY_FILE_MAX_BYTES


@pytest.mark.parametrize(
    "field, value",
    [("flush_timeout_s", 0), ("shutdown_timeout_s", -1), ("file_max_bytes", 0)],
)
def test_invalid_values_are_rejected_when_built(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        TelemetryConfig(**{field: value})


def test_sdk_arguments_are_exactly_configure_telemetrys_bounds() -> None:
    arguments = TelemetryConfig(flush_timeout_s=1, file_max_bytes=4096).sdk_arguments()
    parameters = inspect.signature(configure_telemetry).parameters
    assert set(arguments) <= set(parameters)
    assert arguments == {
        "flush_timeout_s": 1.0,
        "shutdown_timeout_s": 5.0,
        "file_max_bytes": 4096,
        "file_backup_count": 3,
    }
