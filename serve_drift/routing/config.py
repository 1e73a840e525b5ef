"""The router's configuration: which two apps it sits in front of, and how it splits traffic.

Written as a dict in YAML (the router application's ``args``), validated when built. What may
change while serving arrives through the router deployment's Serve ``user_config``
(:class:`RouterUpdate`): the mode, the mirrored fraction and the canary share.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_drift.config import AdminConfig, ShippingConfig, TelemetryConfig

Mode = Literal["shadow", "canary"]
ARM_NAMES = ("incumbent", "candidate", "fallback")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ArmConfig(_Frozen):
    """One monitored Serve application behind the router (the ready-made app or your own).

    ``app`` is the Serve application's name (deploy it with ``route_prefix: null`` so that
    clients reach it only through the router); ``monitor`` its drift monitor deployment.
    """

    app: str = Field(min_length=1)
    monitor: str = Field("DriftMonitor", min_length=1)


class MirrorConfig(_Frozen):
    """Shadow mode: which requests also go to the candidate, and how much waiting is allowed.

    A copy is made after the incumbent has answered. The router replica buffers at most
    ``buffer_size`` copies and ships them to the comparator in batches of ``batch_size``
    (or what has gathered after ``flush_interval_s``); the comparator, at low CPU priority,
    sends them to the candidate, up to ``candidate_batch_size`` copies per handle call
    (those waiting: it never waits to fill one; 1 sends one call per copy), at most
    ``max_in_flight`` calls at once with ``queue_size`` copies waiting, each copy bounded by
    ``timeout_s``. A copy that meets a full buffer or queue is dropped and counted, as is a
    request whose body exceeds ``max_copy_bytes`` (so the buffers stay bounded in memory:
    ``buffer_size`` and ``queue_size + max_in_flight * candidate_batch_size`` copies of at
    most that size).
    """

    fraction: float = Field(1.0, ge=0, le=1)
    queue_size: int = Field(64, ge=1, le=100_000)
    max_in_flight: int = Field(8, ge=1, le=1024)
    candidate_batch_size: int = Field(32, ge=1, le=1024)
    timeout_s: float = Field(5.0, gt=0, le=600)
    buffer_size: int = Field(256, ge=1, le=100_000)
    # A copy holds the request body: larger requests are answered, never copied (and counted).
    max_copy_bytes: int = Field(2 << 20, ge=1)
    batch_size: int = Field(32, ge=1, le=10_000)
    # A copy waits for the comparator at most this long (a full batch goes at once). Long
    # on purpose: each trip is a Serve call, whose CPU would come out of the incumbent's,
    # and nobody waits for a copy's answer (windows close by count, not by time).
    flush_interval_s: float = Field(0.5, gt=0, le=60)


class CanaryKey(_Frozen):
    """What canary assignment hashes: a request header, a caller-context key
    (``X-Serve-Drift-Context-<key>``), or, with neither, the correlation ID."""

    header: str | None = None
    context: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> CanaryKey:
        if self.header is not None and self.context is not None:
            raise ValueError("canary key: set header or context, not both")
        return self


class CanaryConfig(_Frozen):
    """Canary mode: ``share`` of callers (by key) is answered by the candidate.

    A candidate that raises or answers 5xx is retried once on the incumbent when
    ``fallback_on_error`` is set, so the caller still gets an answer.
    """

    share: float = Field(0.05, ge=0, le=1)
    key: CanaryKey = Field(default_factory=CanaryKey)
    salt: str = ""
    fallback_on_error: bool = True


class ComparisonConfig(_Frozen):
    """How the comparator windows the paired answers, and where it stores them."""

    window_size: int = Field(200, ge=10, le=1_000_000)
    # Closed windows kept in memory, so that late labels still join their requests.
    windows_kept: int = Field(50, ge=1, le=10_000)
    path: str | None = None  # default: <SERVE_DRIFT_CACHE_DIR>/shadow/<name>.sqlite
    drift_timeout_s: float = Field(2.0, gt=0, le=60)
    shipping: ShippingConfig = Field(default_factory=ShippingConfig)
    # The comparator lowers its CPU priority (Unix nice), like the drift monitor, so that
    # under contention comparisons wait and serving does not.
    niceness: int = Field(10, ge=0, le=19)


class DecisionConfig(_Frozen):
    """Promotion and rollback criteria (see :mod:`serve_drift.routing.decision`).

    >>> DecisionConfig(min_agreement=0.95).min_agreement
    0.95
    """

    min_pairs: int = Field(200, ge=1)
    min_agreement: float = Field(0.9, ge=0, le=1)
    min_labels: int = Field(100, ge=0)
    max_accuracy_drop: float = Field(0.02, ge=0, le=1)
    confidence_level: float = Field(0.95, gt=0.5, lt=1)
    max_candidate_error_rate: float = Field(0.01, ge=0, le=1)
    max_p99_latency_increase_s: float | None = Field(None, ge=0)
    block_on_candidate_drift: bool = True
    # Consecutive drifting windows of the candidate's own monitor that count as an alarm.
    drift_alarm_windows: int = Field(2, ge=1, le=100)
    # Without enough labels, judge accuracy by the monitors' label-free estimates.
    use_estimated_accuracy: bool = False
    # Roll back by itself when a closed window's decision says so (safe mode).
    auto_rollback: bool = False
    lookback_windows: int = Field(10, ge=1, le=10_000)


class RouterConfig(_Frozen):
    """Everything the router and its comparator need.

    >>> config = RouterConfig(incumbent={"app": "digits"}, candidate={"app": "digits-v2"})
    >>> (config.mode, config.mirror.fraction, config.candidate.monitor)
    ('shadow', 1.0, 'DriftMonitor')
    """

    name: str = Field("shadow", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    mode: Mode = "shadow"
    incumbent: ArmConfig
    candidate: ArmConfig
    fallback: ArmConfig | None = None
    mirror: MirrorConfig = Field(default_factory=MirrorConfig)
    canary: CanaryConfig = Field(default_factory=CanaryConfig)
    comparison: ComparisonConfig = Field(default_factory=ComparisonConfig)
    decision: DecisionConfig = Field(default_factory=DecisionConfig)
    admin: AdminConfig = Field(default_factory=AdminConfig)
    telemetry: TelemetryConfig = Field(default_factory=TelemetryConfig)
    max_body_bytes: int = Field(10 << 20, ge=1)
    body_timeout_s: float = Field(10.0, gt=0)
    # How often each router replica asks the comparator whether traffic was shifted.
    state_poll_s: float = Field(0.5, gt=0, le=60)

    @model_validator(mode="after")
    def _distinct_arms(self) -> RouterConfig:
        apps = [arm.app for arm in (self.incumbent, self.candidate, self.fallback) if arm]
        if len(set(apps)) != len(apps):
            raise ValueError(f"incumbent, candidate and fallback must be different apps: {apps}")
        return self

    def arm(self, name: str) -> ArmConfig | None:
        return {"incumbent": self.incumbent, "candidate": self.candidate}.get(
            name, self.fallback if name == "fallback" else None
        )


class RouterUpdate(_Frozen):
    """What the router's Serve ``user_config`` may change without a redeploy.

    >>> RouterUpdate(canary_share=0.2).apply(
    ...     RouterConfig(incumbent={"app": "a"}, candidate={"app": "b"})).canary.share
    0.2
    """

    mode: Mode | None = None
    mirror_fraction: float | None = Field(None, ge=0, le=1)
    canary_share: float | None = Field(None, ge=0, le=1)

    def apply(self, config: RouterConfig) -> RouterConfig:
        mirror = config.mirror.model_copy(
            update={"fraction": _pick(self.mirror_fraction, config.mirror.fraction)}
        )
        canary = config.canary.model_copy(
            update={"share": _pick(self.canary_share, config.canary.share)}
        )
        mode = self.mode or config.mode
        return config.model_copy(update={"mode": mode, "mirror": mirror, "canary": canary})


def _pick(new: float | None, current: float) -> float:
    return current if new is None else new
