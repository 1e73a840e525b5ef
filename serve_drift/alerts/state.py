"""What the engine remembers per model version: recent windows per detector, CUSUM sums,
consecutive failures, and the latest value (and first value) of every measured signal.

Pure bookkeeping, no rule logic: :mod:`serve_drift.alerts.conditions` reads it.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from serve_drift.alerts.incidents import MAX_SAMPLE_IDS, WindowEvidence
from serve_drift.alerts.signals import DetectorFailed, LabelMetrics, SentinelRun, WindowTested
from serve_drift.messages import DriftResult

__all__ = ["DetectorState", "Reading", "StateNeeds", "VersionState", "window_evidence"]

_P_FLOOR = 1e-300  # -ln(0) is infinite: alibi-detect's p-values can be exactly 0


@dataclass(frozen=True)
class Reading:
    """The latest value of one signal, the baseline it carried, and how many labels it rests on."""

    value: float | None
    baseline: float | None
    at: float
    n_labels: int | None = None


@dataclass(frozen=True)
class StateNeeds:
    """What the configured rules read, so state keeps just that: windows per detector
    (``history``), CUSUMs by (allowance, threshold), and first values by (signal, min_labels)."""

    history: int
    cusums: frozenset[tuple[float, float]]
    firsts: frozenset[tuple[str, int]]


@dataclass
class DetectorState:
    """One detector's recent windows (newest last) and sequential statistics."""

    windows: deque[WindowEvidence]
    cusum: dict[tuple[float, float], float] = field(default_factory=dict)
    cusum_alarm: dict[tuple[float, float], bool] = field(default_factory=dict)
    consecutive_failures: int = 0
    last_error: str | None = None


def window_evidence(result: DriftResult, *, alpha: float) -> WindowEvidence:
    return WindowEvidence(
        window_index=result.window_index,
        detector=result.detector,
        backend=result.backend,
        p_value=result.p_value,
        tested_at=result.tested_at,
        test_id=result.test_id,
        trace_id=result.trace_id,
        span_id=result.span_id,
        significant=result.p_value <= alpha,
        correlation_ids_sample=result.correlation_ids_sample[:MAX_SAMPLE_IDS],
    )


class VersionState:
    """Everything observed for one (model name, model version)."""

    def __init__(self, *, model_name: str, model_version: str, needs: StateNeeds) -> None:
        self.model_name = model_name
        self.model_version = model_version
        self.needs = needs
        self.detectors: dict[str, DetectorState] = {}
        self.readings: dict[str, Reading] = {}
        # (signal, min_labels) -> its first value resting on at least min_labels labels
        self.firsts: dict[tuple[str, int], float] = {}
        self.last_window_at: float | None = None

    def detector(self, name: str) -> DetectorState:
        if name not in self.detectors:
            self.detectors[name] = DetectorState(windows=deque(maxlen=self.needs.history))
        return self.detectors[name]

    # --- ingest -----------------------------------------------------------------------------

    def add_window(self, signal: WindowTested) -> None:
        for result in signal.results:
            self._add_result(result)
        if signal.results:
            self.last_window_at = signal.at
        for name, value, baseline in (
            ("estimated_accuracy", signal.estimated_accuracy, signal.estimated_accuracy_baseline),
            ("flagged_share", signal.flagged_share, None),
            ("dropped_share", signal.dropped_share, None),
            ("latency_p99_s", signal.latency_p99_s, None),
        ):
            self._read(name, Reading(value, baseline, signal.at))

    def _add_result(self, result: DriftResult) -> None:
        state = self.detector(result.detector)
        # ``significant`` here is at the detector's own threshold; each condition re-judges
        # the p-value at its own alpha.
        state.windows.append(window_evidence(result, alpha=result.p_value_threshold))
        state.consecutive_failures = 0
        score = -math.log(max(result.p_value, _P_FLOOR))
        for key in self.needs.cusums:
            allowance, threshold = key
            total = max(0.0, state.cusum.get(key, 0.0) + score - allowance)
            alarm = total > threshold
            state.cusum_alarm[key] = alarm
            state.cusum[key] = 0.0 if alarm else total  # a CUSUM restarts after its alarm

    def add_failure(self, signal: DetectorFailed) -> None:
        state = self.detector(signal.detector)
        state.consecutive_failures += 1
        state.last_error = signal.error

    def add_labels(self, signal: LabelMetrics) -> None:
        for name, value, baseline in (
            ("label_accuracy", signal.accuracy, signal.baseline_accuracy),
            ("label_f1_macro", signal.f1_macro, signal.baseline_f1_macro),
            ("label_ece", signal.ece, signal.baseline_ece),
        ):
            self._read(name, Reading(value, baseline, signal.at, signal.n_labels))

    def add_sentinel(self, signal: SentinelRun) -> None:
        reading = Reading(signal.accuracy, signal.baseline_accuracy, signal.at, signal.n_images)
        self._read("sentinel_accuracy", reading)

    def _read(self, name: str, reading: Reading) -> None:
        self.readings[name] = reading
        if reading.value is None:
            return
        for signal, min_labels in self.needs.firsts:
            if signal == name and (reading.n_labels or 0) >= min_labels:
                self.firsts.setdefault((signal, min_labels), reading.value)
