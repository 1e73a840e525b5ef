"""One condition, evaluated on what the engine remembers: active, inactive, or unknown.

*Unknown* (``None``) means the condition could not be decided: too few windows yet, a signal
that was not measured, a baseline that is not known, too few labels. It never fires a rule,
and it counts as "not holding" for resolving an open incident, so an alert needs positive
evidence to stay open.

>>> from serve_drift.alerts.rules import DriftCondition
>>> from serve_drift.alerts.state import StateNeeds, VersionState
>>> state = VersionState(model_name="m", model_version="v1",
...     needs=StateNeeds(history=3, cusums=frozenset(), firsts=frozenset()))
>>> evaluate(DriftCondition(), state=state, detector="combined", at=0.0).outcome.active is None
True
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from serve_drift.alerts.incidents import ConditionOutcome, SignalValue, WindowEvidence
from serve_drift.alerts.rules import (
    Condition,
    CusumCondition,
    DetectorFailingCondition,
    DriftCondition,
    SilenceCondition,
    ThresholdCondition,
)
from serve_drift.alerts.state import Reading, VersionState

__all__ = ["Evaluation", "combine", "evaluate"]

_EPS = 1e-9  # "fell 0.1" holds for 0.9 -> 0.8 despite binary floating point

# Which signal kinds make a condition worth evaluating again.
Trigger = Literal["window", "failure", "labels", "sentinel", "tick"]
_SIGNAL_TRIGGERS: dict[str, Trigger] = {
    "estimated_accuracy": "window",
    "flagged_share": "window",
    "dropped_share": "window",
    "latency_p99_s": "window",
    "label_accuracy": "labels",
    "label_f1_macro": "labels",
    "label_ece": "labels",
    "sentinel_accuracy": "sentinel",
}


@dataclass(frozen=True)
class Evaluation:
    """A condition's outcome and the evidence it read."""

    outcome: ConditionOutcome
    windows: tuple[WindowEvidence, ...] = ()
    signals: tuple[SignalValue, ...] = ()


def triggers(condition: Condition) -> frozenset[Trigger]:
    """The signal kinds after which ``condition`` may have changed."""
    if isinstance(condition, ThresholdCondition):
        return frozenset({_SIGNAL_TRIGGERS[condition.signal]})
    if isinstance(condition, DetectorFailingCondition):
        return frozenset({"window", "failure"})
    if isinstance(condition, SilenceCondition):
        return frozenset({"window", "tick"})
    return frozenset({"window"})


def evaluate(
    condition: Condition,
    *,
    state: VersionState | None,
    detector: str | None,
    at: float,
    last_window_at: float | None = None,
) -> Evaluation:
    """``condition`` for one scope. ``last_window_at`` (silence only): the model's latest
    tested window, or the engine's start when none was tested yet."""
    if isinstance(condition, SilenceCondition):
        return _silence(condition, at=at, last_window_at=last_window_at)
    if state is None:
        return _unknown(condition, "nothing observed for this model version yet")
    if isinstance(condition, DriftCondition):
        return _drift(condition, state, detector)
    if isinstance(condition, CusumCondition):
        return _cusum(condition, state, detector)
    if isinstance(condition, DetectorFailingCondition):
        return _failing(condition, state, detector)
    return _threshold(condition, state)


def combine(how: Literal["all", "any"], outcomes: list[bool | None]) -> bool | None:
    """Three-valued ``all``/``any``: a decided answer wins over unknown ones where it can."""
    if how == "all":
        if any(o is False for o in outcomes):
            return False
        return True if all(o is True for o in outcomes) else None
    if any(o is True for o in outcomes):
        return True
    return False if all(o is False for o in outcomes) else None


def _outcome(condition: Condition, active: bool | None, detail: str) -> ConditionOutcome:
    return ConditionOutcome(description=condition.describe(), active=active, detail=detail)


def _unknown(condition: Condition, why: str) -> Evaluation:
    return Evaluation(_outcome(condition, None, why))


def _drift(condition: DriftCondition, state: VersionState, detector: str | None) -> Evaluation:
    if detector is None or detector not in state.detectors:
        return _unknown(condition, f"no window tested by {detector or 'any detector'} yet")
    recent = list(state.detectors[detector].windows)[-condition.n :]
    judged = tuple(replace(w, significant=w.p_value <= condition.alpha) for w in recent)
    if len(judged) < condition.k:
        return Evaluation(_outcome(condition, None, f"{len(judged)} windows so far"), judged)
    hits = sum(w.significant for w in judged)
    detail = f"{hits} of the last {len(judged)} windows with p <= {condition.alpha:g}"
    return Evaluation(_outcome(condition, hits >= condition.k, detail), judged)


def _cusum(condition: CusumCondition, state: VersionState, detector: str | None) -> Evaluation:
    if detector is None or detector not in state.detectors:
        return _unknown(condition, f"no window tested by {detector or 'any detector'} yet")
    tracked = state.detectors[detector]
    key = (condition.allowance, condition.threshold)
    if key not in tracked.cusum:
        return _unknown(condition, "no window tested since this CUSUM started")
    alarm = tracked.cusum_alarm.get(key, False)
    detail = "crossed at the latest window" if alarm else f"at {tracked.cusum[key]:.2f}"
    return Evaluation(_outcome(condition, alarm, detail), tuple(tracked.windows)[-3:])


def _failing(
    condition: DetectorFailingCondition, state: VersionState, detector: str | None
) -> Evaluation:
    if detector is None or detector not in state.detectors:
        return _unknown(condition, "detector not seen yet")
    tracked = state.detectors[detector]
    active = tracked.consecutive_failures >= condition.consecutive
    detail = f"{tracked.consecutive_failures} failed in a row"
    if tracked.last_error and tracked.consecutive_failures:
        detail += f" (latest: {tracked.last_error[:200]})"
    return Evaluation(_outcome(condition, active, detail))


def _silence(condition: SilenceCondition, *, at: float, last_window_at: float | None) -> Evaluation:
    if last_window_at is None:
        return _unknown(condition, "no start time known")
    gap = at - last_window_at
    detail = f"last window tested {gap:.0f} s ago"
    return Evaluation(_outcome(condition, gap > condition.max_gap_s, detail))


def _threshold(condition: ThresholdCondition, state: VersionState) -> Evaluation:
    reading = state.readings.get(condition.signal)
    if reading is None or reading.value is None:
        return _unknown(condition, f"{condition.signal} not measured")
    if reading.n_labels is not None and reading.n_labels < condition.min_labels:
        return _unknown(condition, f"only {reading.n_labels} labels (< {condition.min_labels})")
    baseline = _baseline(condition, state, reading)
    seen = SignalValue(name=condition.signal, value=reading.value, baseline=baseline, at=reading.at)
    if condition.relative and baseline is None:
        return Evaluation(_outcome(condition, None, "baseline not known"), signals=(seen,))
    active, detail = _compare(condition, reading.value, baseline)
    return Evaluation(_outcome(condition, active, detail), signals=(seen,))


def _baseline(condition: ThresholdCondition, state: VersionState, reading: Reading) -> float | None:
    if not condition.relative:
        return None
    if isinstance(condition.baseline, float | int):
        return float(condition.baseline)
    if condition.baseline == "signal":
        return reading.baseline
    return state.firsts.get((condition.signal, condition.min_labels))


def _compare(
    condition: ThresholdCondition, value: float, baseline: float | None
) -> tuple[bool, str]:
    if condition.below is not None:
        return value < condition.below, f"{value:.4g} (bound {condition.below:g})"
    if condition.above is not None:
        return value > condition.above, f"{value:.4g} (bound {condition.above:g})"
    assert baseline is not None
    change = value - baseline
    detail = f"{value:.4g} against baseline {baseline:.4g} ({change:+.4g})"
    if condition.drop is not None:
        return -change >= condition.drop - _EPS, detail
    assert condition.rise is not None
    return change >= condition.rise - _EPS, detail
