"""Configuration models, validated when built. Runtime changes arrive via ``reconfigure``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from serve_drift import _env

DetectorBackend = Literal["alibi", "native"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DetectorConfig(_Frozen):
    """One drift test run on every window."""

    kind: Literal["mmd"] = "mmd"
    backend: DetectorBackend = "alibi"
    p_value_threshold: float = Field(0.05, gt=0, lt=1)
    n_permutations: int = Field(100, ge=10, le=100_000)
    device: str | None = Field(default_factory=_env.device_default)
    seed: int | None = 0


class WindowConfig(_Frozen):
    """Count-based windows of embeddings, tested when full."""

    size: int = Field(200, ge=10, le=1_000_000)


class ShippingConfig(_Frozen):
    """How replicas move embeddings to the monitor, off the request path."""

    max_queue: int = Field(10_000, ge=1)
    batch_size: int = Field(64, ge=1)
    flush_interval_s: float = Field(0.25, gt=0)
    send_timeout_s: float = Field(5.0, gt=0)


class TelemetryConfig(_Frozen):
    """OpenTelemetry behaviour. The library itself only ever uses the OTel API."""

    configure_sdk: bool = Field(default_factory=_env.configure_otel_default)
    link_sample_size: int = Field(32, ge=0, le=1000)


class EventLogConfig(_Frozen):
    """The monitor's record of served requests (SQLite in WAL mode, written in batches)."""

    enabled: bool = True
    path: str | None = None  # default: <SERVE_DRIFT_CACHE_DIR>/events/<model_name>.sqlite
    sample_rate: float = Field(0.1, ge=0, le=1)
    keep_confidence_below: float | None = Field(0.5, ge=0, le=1)
    max_age_s: float = Field(7 * 24 * 3600, gt=0)
    max_bytes: int = Field(1 << 30, gt=0)
    export_otlp_logs: bool = False


class DriftConfig(_Frozen):
    """Everything serve-drift needs to monitor one model.

    >>> DriftConfig(model_name="digits", window=WindowConfig(size=100)).window.size
    100
    """

    model_name: str = "model"
    model_version: str = "0"
    reference_path: str | None = None
    model_attr: str | None = None
    embedding_layer: str | None = None
    monitor_deployment: str = "DriftMonitor"
    # Drift tests share nodes with serving replicas: the monitor process lowers its CPU
    # priority (Unix nice) so that, under contention, tests wait and requests do not.
    monitor_niceness: int = Field(10, ge=0, le=19)
    # Factories, not instances: defaults that read SERVE_DRIFT_* must read them when a config is
    # built (in the process that builds it), not when this module is imported.
    window: WindowConfig = Field(default_factory=WindowConfig)
    detectors: tuple[DetectorConfig, ...] = Field(default_factory=lambda: (DetectorConfig(),))
    shipping: ShippingConfig = Field(default_factory=ShippingConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    events: EventLogConfig = Field(default_factory=EventLogConfig)
