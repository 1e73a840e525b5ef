"""Configuration models, validated when built. Runtime changes arrive via ``reconfigure``."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_drift import _env

DetectorBackend = Literal["alibi", "native"]
DetectorKind = Literal["mmd", "classifier", "bbsd", "mmd_online", "combined"]
CombinedComponent = Literal["classifier", "confidence", "mmd"]

# Valid backends per detector kind; the first is the kind's default backend. MMD keeps alibi
# first (the library the product was specified with); the kinds added later default to ours.
KIND_BACKENDS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "mmd": ("alibi", "native"),
        "classifier": ("native", "alibi"),
        "bbsd": ("native", "alibi"),
        "mmd_online": ("alibi",),
        "combined": ("native",),
    }
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ReductionConfig(_Frozen):
    """Dimension reduction fitted on the reference set, applied to every window first."""

    method: Literal["pca", "random_projection"] = "pca"
    dim: int = Field(32, ge=1, le=100_000)
    seed: int = 0


class DetectorConfig(_Frozen):
    """One drift test run on every window.

    ``kind`` picks the test and ``backend`` who implements it (``KIND_BACKENDS`` lists the valid
    pairs). Left out (``None``), ``backend`` and ``n_permutations`` mean the kind's own default:
    :attr:`resolved_backend` and :attr:`resolved_n_permutations` say which. Fields that a kind
    does not use are ignored by it: ``n_permutations`` (mmd, classifier/native, combined),
    ``ridge`` (classifier/native, combined), ``train_size``/``n_folds`` (classifier/alibi),
    ``ert``, ``online_window_size``, ``n_bootstraps`` (mmd_online), ``components`` (combined).

    >>> DetectorConfig(kind="bbsd").resolved_backend
    'native'
    >>> DetectorConfig(kind="combined").resolved_n_permutations
    500
    """

    kind: DetectorKind = "mmd"
    backend: DetectorBackend | None = None
    p_value_threshold: float = Field(0.05, gt=0, lt=1)
    n_permutations: int | None = Field(None, ge=10, le=100_000)
    device: str | None = Field(default_factory=_env.device_default)
    seed: int | None = 0
    reduction: ReductionConfig | None = None
    ridge: float = Field(0.01, gt=0, le=1e6)
    train_size: float = Field(0.75, gt=0, lt=1)
    n_folds: int | None = Field(None, ge=2, le=50)
    ert: float | None = Field(None, gt=1)
    online_window_size: int = Field(20, ge=2, le=10_000)
    n_bootstraps: int | None = Field(None, ge=100, le=10_000_000)
    components: tuple[CombinedComponent, ...] = ("classifier", "confidence")

    @property
    def resolved_backend(self) -> str:
        """``backend``, or the kind's default backend (the first in ``KIND_BACKENDS``)."""
        return self.backend or KIND_BACKENDS[self.kind][0]

    @property
    def resolved_n_permutations(self) -> int:
        """``n_permutations``, or the kind's default: 500 for combined, 100 otherwise.

        The combined p-value is a min over components: finer permutation p-values (>= 1/501)
        cost little power to the correction, and its statistics are cheap.
        """
        if self.n_permutations is not None:
            return self.n_permutations
        return 500 if self.kind == "combined" else 100

    @model_validator(mode="after")
    def _check_pair(self) -> DetectorConfig:
        if self.resolved_backend not in KIND_BACKENDS[self.kind]:
            valid = ", ".join(KIND_BACKENDS[self.kind])
            raise ValueError(
                f"backend {self.backend!r} is not available for detector kind {self.kind!r}; "
                f"valid backends: {valid}"
            )
        if self.kind == "combined" and len(set(self.components)) != len(self.components):
            raise ValueError(f"combined components must be distinct, got {self.components}")
        if self.kind == "combined" and not self.components:
            raise ValueError("a combined detector needs at least one component")
        return self


def default_detectors() -> tuple[DetectorConfig, ...]:
    """What a user gets without choosing: see ``serve_drift.detectors.combined``."""
    return (DetectorConfig(kind="combined"),)


class WindowConfig(_Frozen):
    """Which embeddings are tested together; a window never mixes model versions.

    - count windows (default): ``size`` rows; with ``stride`` < ``size`` they slide, a new
      window of the latest ``size`` rows every ``stride`` rows;
    - time windows (``duration_s`` set): the rows whose event timestamps fall in
      ``[start, start + duration_s)``, a new one every ``stride_s`` (default ``duration_s``);
      windows with fewer than ``min_size`` rows are not tested, and ``size`` caps the rows
      of one time window (the first ``size`` are kept, the rest counted as overflow).

    >>> WindowConfig(size=100, stride=25).stride
    25
    """

    size: int = Field(200, ge=10, le=1_000_000)
    stride: int | None = Field(None, ge=1, le=1_000_000)
    duration_s: float | None = Field(None, gt=0)
    stride_s: float | None = Field(None, gt=0)
    min_size: int = Field(10, ge=10, le=1_000_000)

    @model_validator(mode="after")
    def _check_strides(self) -> WindowConfig:
        if self.stride is not None and self.stride > self.size:
            raise ValueError(f"stride ({self.stride}) must not exceed size ({self.size})")
        if self.stride_s is not None and self.duration_s is None:
            raise ValueError("stride_s needs duration_s (time windows)")
        if (
            self.stride_s is not None
            and self.duration_s is not None
            and (self.stride_s > self.duration_s)
        ):
            raise ValueError(
                f"stride_s ({self.stride_s}) must not exceed duration_s ({self.duration_s})"
            )
        if self.duration_s is not None and self.stride is not None:
            raise ValueError("stride is for count windows; use stride_s with duration_s")
        return self


class CalibrationConfig(_Frozen):
    """False-alarm control for the deployed reference (``serve_drift.detectors.calibration``).

    Every detector's p-value is calibrated for the reference set and window size in use, from
    ``references`` bootstrap references with ``windows`` bootstrap windows each, so that the
    level holds for all but ``1 - quantile`` of references built this way. It runs when the
    monitor starts and when the window size changes, off the request path; a detector whose
    calibration would take longer than ``budget_s`` uses the draws made by then (at least
    ``min_references``), or runs uncalibrated and says so. ``max_window_ratio`` is the largest
    window-to-reference size ratio (M/N) that is tested without a warning.

    >>> CalibrationConfig().quantile
    0.99
    """

    enabled: bool = True
    references: int = Field(40, ge=5, le=10_000)
    windows: int = Field(50, ge=5, le=10_000)
    quantile: float = Field(0.99, ge=0.5, lt=1)
    min_references: int = Field(10, ge=2, le=10_000)
    budget_s: float = Field(120.0, gt=0)
    max_window_ratio: float = Field(0.5, gt=0)
    seed: int = 0


class MonitorUpdate(_Frozen):
    """What the monitor's Serve ``user_config`` may change without a restart.

    ``window`` fields replace the current ones (the rest are kept); ``window_size`` is short
    for ``{"window": {"size": ...}}``. ``p_value_threshold`` sets every detector's threshold,
    ``p_value_thresholds`` one per configured detector, in order. ``reference_path`` swaps the
    reference set between windows (with ``reference_sha256`` it must have that content hash;
    ``changed_by`` is recorded with the change); ``on_version_mismatch`` changes the policy.

    >>> MonitorUpdate.model_validate({"window_size": 500, "p_value_threshold": 0.01}).window_size
    500
    """

    window_size: int | None = Field(None, ge=10, le=1_000_000)
    window: dict[str, Any] | None = None
    p_value_threshold: float | None = Field(None, gt=0, lt=1)
    p_value_thresholds: tuple[float, ...] | None = None
    # A new reference set, swapped in between windows (serve_drift.monitor.reference_swap):
    # optionally the content hash it must have, and who asks (recorded, not verified).
    reference_path: str | None = Field(None, min_length=1)
    reference_sha256: str | None = Field(None, pattern=r"^sha256:[0-9a-f]{64}$")
    changed_by: str | None = Field(None, min_length=1, max_length=128)
    on_version_mismatch: Literal["refuse", "degraded"] | None = None

    @model_validator(mode="after")
    def _check_thresholds(self) -> MonitorUpdate:
        if self.p_value_thresholds is not None:
            if not all(0 < p < 1 for p in self.p_value_thresholds):
                raise ValueError("every p_value_thresholds entry must be in (0, 1)")
            if self.p_value_threshold is not None:
                raise ValueError("set p_value_threshold or p_value_thresholds, not both")
        return self

    def window_config(self, current: WindowConfig) -> WindowConfig:
        """``current`` with this update's window fields applied (validated again)."""
        fields = dict(self.window or {})
        if self.window_size is not None:
            fields["size"] = self.window_size
        return WindowConfig.model_validate({**current.model_dump(), **fields})


class ShippingConfig(_Frozen):
    """How replicas move embeddings to the monitor, off the request path.

    ``max_queue`` rows wait at most (beyond: dropped and counted); they leave in batches of
    ``batch_size`` rows, at least every ``flush_interval_s``. A send through the monitor's
    Serve handle costs the replica about 3.7 ms of CPU plus 8 µs a row
    (``benchmarks/shipping_cost.py``), so the defaults ship up to 256 rows once a second: at 250
    requests a second that is ~23 µs a request, where 64-row batches four times a second cost
    ~67. Rows reach the monitor within a second, well inside any window. The request spans
    end sooner, every 32 rows: the rows then wait for their batch without the spans' objects,
    which would otherwise make the garbage collector sweep the whole heap twice as often.
    Rows waiting for their batch count against ``max_queue`` until they are sent.

    **Sampling, so the monitor's cost is bounded at any traffic.** A replica ships at most
    ``max_rows_per_s`` rows a second, and at most its share of ``monitor_max_rows_per_s``, the
    monitor's ingest budget split equally between the replicas it heard from in the last
    ``share_window_s``. Below both, every row ships. Above, the replica ships a uniform random
    sample of the rows of each drain (``burst_s`` seconds' worth may go at once after a quiet
    spell), each row weighted 1/P(shipped); rows left out are counted
    (``embeddings.dropped{reason="sampled_out"}``) and reported to the monitor, and the drift
    results say what share of the served rows their windows held (``sampling_rate``).
    Verified sentinel runs always ship. ``None`` means no cap. The default budget, 2000 rows a
    second, is well under what one monitor of the digits app takes on two CPU cores
    (``benchmarks/monitor_capacity.py`` measures yours): a monitor then costs at most that much,
    whatever the traffic and however many replicas.

    >>> ShippingConfig(max_rows_per_s=500).monitor_max_rows_per_s
    2000.0
    """

    max_queue: int = Field(10_000, ge=1)
    batch_size: int = Field(256, ge=1)
    flush_interval_s: float = Field(1.0, gt=0)
    send_timeout_s: float = Field(5.0, gt=0)
    max_rows_per_s: float | None = Field(None, gt=0)
    monitor_max_rows_per_s: float | None = Field(2000.0, gt=0)
    share_window_s: float = Field(10.0, gt=0, le=3600)
    burst_s: float = Field(1.0, gt=0, le=60)


class TelemetryConfig(_Frozen):
    """OpenTelemetry behaviour. The library itself only ever uses the OTel API.

    The bounds apply when serve-drift configures the SDK (``configure_sdk``). Flush and
    shutdown (also the one at process exit) return within ``flush_timeout_s`` and
    ``shutdown_timeout_s`` whatever the exporter does; what is still buffered when the shutdown
    bound is reached is dropped and counted. Without an OTLP endpoint, telemetry goes to JSON-lines
    files that rotate at ``file_max_bytes`` and keep ``file_backup_count`` rotated files each.

    >>> TelemetryConfig(shutdown_timeout_s=2).sdk_arguments()["shutdown_timeout_s"]
    2.0
    """

    configure_sdk: bool = Field(default_factory=_env.configure_otel_default)
    link_sample_size: int = Field(32, ge=0, le=1000)
    # A client's W3C ``traceparent`` makes the request span its child. Public endpoints that
    # do not want callers to choose trace IDs turn this off (the span starts a new trace).
    trust_client_traceparent: bool = True
    flush_timeout_s: float = Field(default_factory=_env.telemetry_flush_timeout_s, gt=0, le=600)
    shutdown_timeout_s: float = Field(
        default_factory=_env.telemetry_shutdown_timeout_s, gt=0, le=600
    )
    file_max_bytes: int = Field(default_factory=_env.telemetry_file_max_bytes, ge=1)
    file_backup_count: int = Field(default_factory=_env.telemetry_file_backup_count, ge=0, le=1000)

    def sdk_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``configure_telemetry`` that this config decides."""
        return self.model_dump(
            include={"flush_timeout_s", "shutdown_timeout_s", "file_max_bytes", "file_backup_count"}
        )


class AdminConfig(_Frozen):
    """Where replicas find the admin bearer token (see :mod:`serve_drift.credentials`).

    ``token_file`` (a mounted secret) wins over the environment variable named ``token_env``.
    The token itself never goes into the config.
    """

    token_env: str = "SERVE_DRIFT_ADMIN_TOKEN"
    token_file: str | None = None


class ContextConfig(_Frozen):
    """Which ``X-Serve-Drift-Context-<key>`` headers are kept on events, and how long.

    Only these keys are stored and exported; anything else a client sends is dropped. The
    ``source`` key is not caller context: ``source: sentinel`` marks a sentinel run and is
    honoured only on requests that carry the admin credential.
    """

    allow: tuple[str, ...] = ("camera", "site", "scene")
    max_value_chars: int = Field(64, ge=1, le=256)


class EventLogConfig(_Frozen):
    """The monitor's record of served requests, written in batches: SQLite in WAL mode (one
    file per monitor), or PostgreSQL when a DSN is given (one schema per monitor; for clusters,
    where the monitor may move between nodes)."""

    enabled: bool = True
    path: str | None = None  # default: <SERVE_DRIFT_CACHE_DIR>/events/<app>/<monitor>.sqlite
    # PostgreSQL, e.g. "postgresql://monitor@db:5432/events"; default $SERVE_DRIFT_EVENTS_DSN,
    # read in the monitor's process. Keep the password out of it (libpq reads PGPASSWORD and
    # ~/.pgpass): the config travels in the Serve config.
    dsn: str | None = None
    # The monitor's schema there; default: sd_<app>__<monitor>, lower case.
    pg_schema: str | None = Field(None, pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    sample_rate: float = Field(0.1, ge=0, le=1)
    keep_confidence_below: float | None = Field(0.5, ge=0, le=1)
    max_age_s: float = Field(7 * 24 * 3600, gt=0)
    max_bytes: int = Field(1 << 30, gt=0)
    export_otlp_logs: bool = False
    # The event log's own writer: jobs waiting beyond this are refused and counted as dropped.
    writer_queue_size: int = Field(1024, ge=1, le=1_000_000)
    # How long a batch waits for its compact rows to be committed before the monitor answers
    # the replica "not recorded" (the rows still reach the windows).
    arrival_timeout_s: float = Field(2.0, gt=0, le=60)


class DriftConfig(_Frozen):
    """Everything serve-drift needs to monitor one model.

    >>> DriftConfig(model_name="digits", window=WindowConfig(size=100)).window.size
    100
    """

    model_name: str = "model"
    model_version: str = "0"
    reference_path: str | None = None
    # The reference's recorded model version against model_version, at start-up, at a swap
    # and per window: "refuse" tests nothing until they agree, "degraded" tests and flags the
    # results (serve_drift.monitor.reference_swap says why refuse is the default).
    on_version_mismatch: Literal["refuse", "degraded"] = "refuse"
    model_attr: str | None = None
    embedding_layer: str | None = None
    # Probabilities come from the model's own (batch, classes) output ("model"), or from the
    # hooked classifier layer ("classifier"); see serve_drift.capture.EmbeddingCapture.
    scores: Literal["model", "classifier"] = "model"
    # The drift monitor's Serve deployment; None: "<deployment>DriftMonitor", so that several
    # monitored deployments of one app each get their own monitor (and event store).
    monitor_deployment: str | None = None
    # Drift tests share nodes with serving replicas: the monitor process lowers its CPU
    # priority (Unix nice) so that, under contention, tests wait and requests do not.
    monitor_niceness: int = Field(10, ge=0, le=19)
    # Factories, not instances: defaults that read SERVE_DRIFT_* must read them when a config is
    # built (in the process that builds it), not when this module is imported.
    window: WindowConfig = Field(default_factory=WindowConfig)
    detectors: tuple[DetectorConfig, ...] = Field(default_factory=default_detectors)
    shipping: ShippingConfig = Field(default_factory=ShippingConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    events: EventLogConfig = Field(default_factory=EventLogConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    context: ContextConfig = Field(default_factory=ContextConfig)

    def monitor_name(self, deployment: str) -> str:
        """The monitor deployment's name for the monitored deployment named ``deployment``.

        >>> DriftConfig().monitor_name("Classifier")
        'ClassifierDriftMonitor'
        """
        return self.monitor_deployment or f"{deployment}DriftMonitor"

    # Rows of accepted traffic the monitor keeps per model version (a uniform reservoir
    # sample) for `serve-drift reference from-traffic`; 0 turns it off.
    traffic_sample_size: int = Field(2000, ge=0, le=1_000_000)
    calibration: CalibrationConfig = Field(default_factory=CalibrationConfig)
    # The ``alerts`` section (``serve_drift.alerts.AlertsConfig``: rules, schedules, sinks,
    # Alertmanager), kept as a mapping because this module sits below the alerts package: the
    # monitor validates it when the app is built and when it starts. None: the default rules.
    alerts: dict[str, Any] | None = None
