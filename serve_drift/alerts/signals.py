"""What the alert engine observes: one frozen dataclass per kind of news, each stamped with ``at``.

The drift monitor hands the engine one signal at a time (:meth:`AlertEngine.observe`):

- :class:`WindowTested` after each tested window: the window's :class:`DriftResult` per detector
  (whose ``p_value`` is the one rules compare, the calibrated one where calibration runs), the
  label-free estimated accuracy, and what the monitor measured over the window;
- :class:`LabelMetrics` when labels arrive for a window (accuracy, F1, ECE from ground truth);
- :class:`SentinelRun` after each sentinel run through the serving path;
- :class:`DetectorFailed` when a detector could not test a window;
- :class:`Tick` on a timer, so that silence can be noticed when nothing else happens.

Time is always the signal's ``at`` (Unix seconds): the engine never reads a clock, so recorded
sequences replay exactly.

>>> from serve_drift.alerts.signals import Tick, signal_model
>>> signal_model(Tick(at=10.0)) is None
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from serve_drift.messages import DriftResult

__all__ = [
    "DetectorFailed",
    "LabelMetrics",
    "SentinelRun",
    "Signal",
    "Tick",
    "WindowTested",
    "signal_model",
]


def _check_share(name: str, value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):  # also refuses NaN
        raise ValueError(f"{name} must be in [0, 1] or None, got {value!r}")


def _check_non_negative(name: str, value: float | None) -> None:
    if value is not None and not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")


@dataclass(frozen=True, kw_only=True)
class WindowTested:
    """One window, tested by every configured detector.

    ``estimated_accuracy`` is the label-free estimate for this window and
    ``estimated_accuracy_baseline`` the same estimator on the reference (calibration) data, so a
    rule can ask how far it fell. ``flagged_share`` is the share of the window's inputs that
    ingress flagged or quarantined; ``dropped_share`` the share of events or embeddings lost
    since the previous window (full queues, unreachable monitor, store failures);
    ``latency_p99_s`` the handler's 99th percentile latency over the window. Any of them may be
    ``None`` (not measured): a rule on an unmeasured signal is *unknown*, never true.
    """

    at: float
    model_name: str
    model_version: str
    window_index: int
    results: tuple[DriftResult, ...]
    estimated_accuracy: float | None = None
    estimated_accuracy_baseline: float | None = None
    flagged_share: float | None = None
    dropped_share: float | None = None
    latency_p99_s: float | None = None

    def __post_init__(self) -> None:
        _check_share("estimated_accuracy", self.estimated_accuracy)
        _check_share("estimated_accuracy_baseline", self.estimated_accuracy_baseline)
        _check_share("flagged_share", self.flagged_share)
        _check_share("dropped_share", self.dropped_share)
        _check_non_negative("latency_p99_s", self.latency_p99_s)


@dataclass(frozen=True, kw_only=True)
class LabelMetrics:
    """Accuracy, macro F1 and ECE of one window, from the labels that arrived for it.

    ``baseline_*`` are the values the model is expected to reach (e.g. its validation
    metrics), when the monitor knows them; ``n_labels`` how many labels the metrics rest on.
    """

    at: float
    model_name: str
    model_version: str
    window_index: int | None
    n_labels: int
    accuracy: float | None = None
    f1_macro: float | None = None
    ece: float | None = None
    baseline_accuracy: float | None = None
    baseline_f1_macro: float | None = None
    baseline_ece: float | None = None

    def __post_init__(self) -> None:
        for name in ("accuracy", "f1_macro", "ece", "baseline_accuracy", "baseline_f1_macro"):
            _check_share(name, getattr(self, name))
        _check_share("baseline_ece", self.baseline_ece)
        if self.n_labels < 0:
            raise ValueError(f"n_labels must be >= 0, got {self.n_labels}")


@dataclass(frozen=True, kw_only=True)
class SentinelRun:
    """Accuracy of one run of the fixed labelled sentinel set through the serving path."""

    at: float
    model_name: str
    model_version: str
    accuracy: float
    n_images: int
    baseline_accuracy: float | None = None

    def __post_init__(self) -> None:
        _check_share("accuracy", self.accuracy)
        _check_share("baseline_accuracy", self.baseline_accuracy)


@dataclass(frozen=True, kw_only=True)
class DetectorFailed:
    """A detector could not test a window (an exception, refused input, a timeout)."""

    at: float
    model_name: str
    model_version: str
    detector: str
    error: str


@dataclass(frozen=True, kw_only=True)
class Tick:
    """The passage of time, nothing else: lets silence rules and re-notification run."""

    at: float


Signal = WindowTested | LabelMetrics | SentinelRun | DetectorFailed | Tick


def signal_model(signal: Signal) -> tuple[str, str] | None:
    """``(model_name, model_version)`` the signal is about; ``None`` for a :class:`Tick`."""
    if isinstance(signal, Tick):
        return None
    return signal.model_name, signal.model_version
