"""Promote, hold or roll back: the criteria in :class:`~serve_drift.routing.config.DecisionConfig`
applied to the evidence of the current epoch (pooled windows plus each arm's drift monitor).

Each check passes, fails, or lacks evidence (``unknown``); some failures are strong enough to
**roll back**. The verdict is ``rollback`` when any check calls for it, ``promote`` when every
check passes, ``hold`` otherwise:

- ``evidence``: at least ``min_pairs`` paired rows (shadow) or candidate answers (canary);
- ``agreement`` (shadow): top-1 agreement >= ``min_agreement`` (never a rollback by itself:
  without labels, disagreement does not say which model is wrong);
- ``candidate_errors``: the candidate's share of raised, timed-out and garbage answers is at
  most ``max_candidate_error_rate``; roll back when even the lower end of its one-sided
  Wilson interval is above it;
- ``accuracy``: with at least ``min_labels`` labels, the accuracy lost (incumbent minus
  candidate) is at most ``max_accuracy_drop`` at ``confidence_level``: promote when the upper
  confidence bound is within it, roll back when the lower bound is beyond it. Shadow mode
  compares both models on the same requests (a paired difference, whose variance comes only
  from the requests they disagree on); canary mode compares independent samples. With too
  few labels, the monitors' label-free estimates may stand in (``use_estimated_accuracy``),
  for promotion only;
- ``candidate_drift``: the candidate's own monitor raised no alarm (``drift_alarm_windows``
  drifting windows in a row); roll back when it alarms while the incumbent's does not
  (the same traffic, so it is the candidate that sees it differently);
- ``latency_p99`` (when ``max_p99_latency_increase_s`` is set): the candidate's p99 is at most
  that much above the incumbent's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from serve_drift.routing.comparison import Comparison, summary
from serve_drift.routing.config import DecisionConfig
from serve_drift.routing.drift import ArmDrift

Verdict = Literal["promote", "hold", "rollback"]
CheckStatus = Literal["pass", "fail", "unknown"]


@dataclass(frozen=True)
class Evidence:
    """What a decision reads: the windows of one epoch and one pair of model versions."""

    mode: str
    epoch: int
    windows: int
    incumbent_version: str | None
    candidate_version: str | None
    since: float | None
    comparison: Comparison
    drift: Mapping[str, ArmDrift] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "epoch": self.epoch,
            "windows": self.windows,
            "incumbent_version": self.incumbent_version,
            "candidate_version": self.candidate_version,
            "since": self.since,
            "summary": summary(self.comparison),
            "drift": {arm: d.to_dict() for arm, d in self.drift.items()},
        }


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    value: float | None = None
    threshold: float | None = None
    rollback: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "value": self.value,
            "threshold": self.threshold,
            "rollback": self.rollback,
        }


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    reasons: tuple[str, ...]
    checks: tuple[Check, ...]
    evidence: Evidence

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "reasons": list(self.reasons),
            "checks": [c.to_dict() for c in self.checks],
            "evidence": self.evidence.to_dict(),
        }


def decide(evidence: Evidence, criteria: DecisionConfig) -> Decision:
    """The verdict and every check behind it.

    >>> from serve_drift.routing.comparison import Comparison
    >>> empty = Evidence("shadow", 0, 0, None, None, None, Comparison())
    >>> decide(empty, DecisionConfig()).verdict
    'hold'
    """
    checks = [
        _evidence(evidence, criteria),
        *([_agreement(evidence, criteria)] if evidence.mode == "shadow" else []),
        _errors(evidence.comparison, criteria),
        _accuracy(evidence, criteria),
        _drift(evidence.drift, criteria),
        *([_latency(evidence.comparison, criteria)] if criteria.max_p99_latency_increase_s else []),
    ]
    if any(c.rollback for c in checks):
        verdict: Verdict = "rollback"
        reasons = [c.detail for c in checks if c.rollback]
    elif all(c.status == "pass" for c in checks):
        verdict, reasons = "promote", [c.detail for c in checks]
    else:
        verdict, reasons = "hold", [c.detail for c in checks if c.status != "pass"]
    return Decision(
        verdict=verdict, reasons=tuple(reasons), checks=tuple(checks), evidence=evidence
    )


def _z(criteria: DecisionConfig) -> float:
    return NormalDist().inv_cdf(criteria.confidence_level)


def _evidence(evidence: Evidence, criteria: DecisionConfig) -> Check:
    c = evidence.comparison
    n = c.pairs.pairs if evidence.mode == "shadow" else c.candidate.answered
    what = "paired rows" if evidence.mode == "shadow" else "candidate answers"
    status: CheckStatus = "pass" if n >= criteria.min_pairs else "unknown"
    return Check(
        "evidence", status, f"{n} {what} (need {criteria.min_pairs})", n, criteria.min_pairs
    )


def _agreement(evidence: Evidence, criteria: DecisionConfig) -> Check:
    agreement = evidence.comparison.pairs.agreement
    if agreement is None:
        return Check("agreement", "unknown", "no paired answers yet", None, criteria.min_agreement)
    status: CheckStatus = "pass" if agreement >= criteria.min_agreement else "fail"
    detail = f"agreement {agreement:.3f} (need >= {criteria.min_agreement:g})"
    return Check("agreement", status, detail, agreement, criteria.min_agreement)


def wilson_lower(failures: int, n: int, *, z: float) -> float:
    """Lower end of the Wilson score interval of a proportion (one-sided at ``z``).

    >>> round(wilson_lower(20, 20, z=1.645), 3)
    0.881
    """
    if n == 0:
        return 0.0
    p = failures / n
    centre = p + z * z / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, (centre - margin) / (1 + z * z / n))


def _errors(comparison: Comparison, criteria: DecisionConfig) -> Check:
    arm = comparison.candidate
    limit = criteria.max_candidate_error_rate
    if not arm.answered:
        return Check(
            "candidate_errors", "unknown", "the candidate answered nothing yet", None, limit
        )
    rate = arm.failed / arm.answered
    lower = wilson_lower(arm.failed, arm.answered, z=_z(criteria))
    kinds = ", ".join(f"{k} {v}" for k, v in sorted(arm.failures.items())) or "none"
    detail = f"candidate error rate {rate:.3f} of {arm.answered} ({kinds}; limit {limit:g})"
    status: CheckStatus = "pass" if rate <= limit else "fail"
    return Check("candidate_errors", status, detail, rate, limit, rollback=lower > limit)


def accuracy_drop(evidence: Evidence) -> tuple[float, float, int] | None:
    """(incumbent minus candidate accuracy, its standard error, labels it rests on)."""
    c = evidence.comparison
    if evidence.mode == "shadow":
        n = c.pairs.labelled
        if not n:
            return None
        b, k = c.pairs.incumbent_only_correct, c.pairs.candidate_only_correct
        variance = max(0.0, (b + k) - (b - k) ** 2 / n) / (n * n)
        return (b - k) / n, math.sqrt(variance), n
    inc, cand = c.incumbent, c.candidate
    if not (inc.labelled and cand.labelled):
        return None
    p1, p2 = inc.correct / inc.labelled, cand.correct / cand.labelled
    variance = p1 * (1 - p1) / inc.labelled + p2 * (1 - p2) / cand.labelled
    return p1 - p2, math.sqrt(variance), min(inc.labelled, cand.labelled)


def _accuracy(evidence: Evidence, criteria: DecisionConfig) -> Check:
    limit = criteria.max_accuracy_drop
    measured = accuracy_drop(evidence)
    if measured is None or measured[2] < criteria.min_labels:
        labels = 0 if measured is None else measured[2]
        return _estimated_accuracy(evidence, criteria, labels=labels)
    drop, se, n = measured
    z = _z(criteria)
    upper, lower = drop + z * se, drop - z * se
    detail = (
        f"accuracy drop {drop:+.3f} on {n} labels, {criteria.confidence_level:.0%} bounds "
        f"[{lower:+.3f}, {upper:+.3f}] (limit {limit:g})"
    )
    status: CheckStatus = "pass" if upper <= limit else "fail"
    return Check("accuracy", status, detail, drop, limit, rollback=lower > limit)


def _estimated_accuracy(evidence: Evidence, criteria: DecisionConfig, *, labels: int) -> Check:
    limit = criteria.max_accuracy_drop
    missing = f"{labels} labels (need {criteria.min_labels})"
    inc = evidence.drift.get("incumbent", ArmDrift()).estimated_accuracy
    cand = evidence.drift.get("candidate", ArmDrift()).estimated_accuracy
    if not criteria.use_estimated_accuracy or inc is None or cand is None:
        return Check("accuracy", "unknown", missing, None, limit)
    drop = inc - cand
    status: CheckStatus = "pass" if drop <= limit else "fail"
    detail = f"{missing}; estimated accuracy drop {drop:+.3f} (label-free, limit {limit:g})"
    return Check("accuracy", status, detail, drop, limit)


def _drift(drift: Mapping[str, ArmDrift], criteria: DecisionConfig) -> Check:
    candidate = drift.get("candidate")
    incumbent = drift.get("incumbent", ArmDrift())
    if candidate is None or not candidate.available:
        return Check("candidate_drift", "unknown", "the candidate's drift monitor did not answer")
    if not candidate.windows:
        return Check("candidate_drift", "unknown", "the candidate's monitor tested no window yet")
    detail = (
        f"candidate drift: {candidate.drifting} of {candidate.windows} windows drifting, "
        f"alarm {'yes' if candidate.alarm else 'no'} (incumbent: "
        f"{'alarm' if incumbent.alarm else 'no alarm'})"
    )
    if not criteria.block_on_candidate_drift:
        return Check("candidate_drift", "pass", f"{detail}; not blocking")
    status: CheckStatus = "fail" if candidate.alarm else "pass"
    return Check(
        "candidate_drift", status, detail, rollback=candidate.alarm and not incumbent.alarm
    )


def _latency(comparison: Comparison, criteria: DecisionConfig) -> Check:
    limit = criteria.max_p99_latency_increase_s
    delta = comparison.delta("latency_p99_s")
    if delta is None:
        return Check("latency_p99", "unknown", "no latencies from both arms yet", None, limit)
    status: CheckStatus = "pass" if limit is not None and delta <= limit else "fail"
    return Check("latency_p99", status, f"p99 latency {delta * 1000:+.1f} ms", delta, limit)
