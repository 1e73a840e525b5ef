"""Promote, hold or roll back, from the evidence; the paired test holds its level."""

from __future__ import annotations

import numpy as np

from serve_drift.routing.answers import failed
from serve_drift.routing.comparison import Comparison, WindowAccumulator, labelled_answers
from serve_drift.routing.config import DecisionConfig
from serve_drift.routing.decision import Evidence, accuracy_drop, decide, wilson_lower
from serve_drift.routing.drift import UNAVAILABLE, ArmDrift
from tests.unit.routing.support import ok, paired_comparison

QUIET = {"incumbent": ArmDrift(windows=3), "candidate": ArmDrift(windows=3)}


def _evidence(
    comparison: Comparison, *, drift: dict[str, ArmDrift] | None = None, mode: str = "shadow"
) -> Evidence:
    return Evidence(mode, 0, 3, "inc", "cand", 0.0, comparison, QUIET if drift is None else drift)


def _simulated(
    n: int, *, incumbent_accuracy: float, candidate_accuracy: float, seed: int
) -> Comparison:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, size=n)
    inc_right = rng.uniform(size=n) < incumbent_accuracy
    # The candidate mostly repeats the incumbent, as two similar models do.
    cand_right = np.where(
        rng.uniform(size=n) < 0.7, inc_right, rng.uniform(size=n) < candidate_accuracy
    )
    if candidate_accuracy < incumbent_accuracy:
        cand_right &= rng.uniform(size=n) < candidate_accuracy / incumbent_accuracy
    inc = np.where(inc_right, labels, (labels + 1) % 10)
    cand = np.where(cand_right, labels, np.where(inc_right, (labels + 2) % 10, inc))
    return paired_comparison(inc.tolist(), cand.tolist(), labels.tolist())


def test_a_clearly_weaker_candidate_is_rolled_back() -> None:
    weaker = _simulated(400, incumbent_accuracy=0.97, candidate_accuracy=0.88, seed=0)
    decision = decide(_evidence(weaker), DecisionConfig())
    assert decision.verdict == "rollback"
    accuracy = next(c for c in decision.checks if c.name == "accuracy")
    assert accuracy.rollback and "labels" in accuracy.detail


def test_an_equal_candidate_is_promoted() -> None:
    labels = list(range(10)) * 40
    same = paired_comparison(labels, labels, labels)
    decision = decide(_evidence(same), DecisionConfig())
    assert decision.verdict == "promote", decision.reasons


def test_too_little_evidence_holds() -> None:
    labels = list(range(10)) * 5
    few = paired_comparison(labels, labels, labels)
    decision = decide(_evidence(few), DecisionConfig())
    assert decision.verdict == "hold"
    assert {c.name for c in decision.checks if c.status == "unknown"} == {"evidence", "accuracy"}


def test_without_labels_accuracy_is_unknown_unless_estimates_may_stand_in() -> None:
    acc = WindowAccumulator()
    for i in range(300):
        acc.add_pair(incumbent=ok(i % 10), candidate=ok(i % 10))
    drift = {
        "incumbent": ArmDrift(windows=3, estimated_accuracy=0.95),
        "candidate": ArmDrift(windows=3, estimated_accuracy=0.94),
    }
    evidence = _evidence(acc.freeze(), drift=drift)
    assert decide(evidence, DecisionConfig()).verdict == "hold"
    assert decide(evidence, DecisionConfig(use_estimated_accuracy=True)).verdict == "promote"
    worse = {**drift, "candidate": ArmDrift(windows=3, estimated_accuracy=0.80)}
    estimated = decide(
        _evidence(acc.freeze(), drift=worse), DecisionConfig(use_estimated_accuracy=True)
    )
    assert estimated.verdict == "hold"  # an estimate never rolls back by itself


def test_a_failing_candidate_is_rolled_back_on_few_requests() -> None:
    acc = WindowAccumulator()
    for _ in range(20):
        acc.add_pair(incumbent=ok(1), candidate=failed("error", latency_s=0.01, detail="boom"))
    decision = decide(_evidence(acc.freeze()), DecisionConfig())
    assert decision.verdict == "rollback"
    assert any(c.name == "candidate_errors" and c.rollback for c in decision.checks)


def test_one_failure_in_many_requests_only_holds() -> None:
    labels = list(range(10)) * 30
    acc = WindowAccumulator()
    for i, y in enumerate(labels):
        candidate = failed("timeout", latency_s=5.0) if i in (3, 50, 77, 120) else ok(y)
        acc.add_pair(incumbent=ok(y), candidate=candidate)
        acc.label(labelled_answers([("incumbent", ok(y)), ("candidate", candidate)]), y)
    decision = decide(_evidence(acc.freeze()), DecisionConfig())
    assert decision.verdict == "hold"  # 4/300 is above 1 %, but not surely so


def test_a_candidate_drift_alarm_rolls_back_unless_the_incumbent_alarms_too() -> None:
    labels = list(range(10)) * 40
    same = paired_comparison(labels, labels, labels)
    alarm = ArmDrift(windows=4, drifting=2, alarm=True)
    alone = decide(
        _evidence(same, drift={"incumbent": ArmDrift(windows=4), "candidate": alarm}),
        DecisionConfig(),
    )
    assert alone.verdict == "rollback"
    both = decide(_evidence(same, drift={"incumbent": alarm, "candidate": alarm}), DecisionConfig())
    assert both.verdict == "hold"  # the traffic moved: compare again later
    lenient = DecisionConfig(block_on_candidate_drift=False)
    assert (
        decide(
            _evidence(same, drift={"incumbent": ArmDrift(windows=4), "candidate": alarm}), lenient
        ).verdict
        == "promote"
    )


def test_an_unanswering_candidate_monitor_holds_a_promotion() -> None:
    labels = list(range(10)) * 40
    same = paired_comparison(labels, labels, labels)
    decision = decide(
        _evidence(same, drift={"incumbent": ArmDrift(windows=3), "candidate": UNAVAILABLE}),
        DecisionConfig(),
    )
    assert decision.verdict == "hold"


def test_canary_mode_compares_independent_samples() -> None:
    acc = WindowAccumulator()
    rng = np.random.default_rng(3)
    for i in range(600):
        arm = "candidate" if i % 2 else "incumbent"
        y = int(rng.integers(0, 10))
        right = rng.uniform() < (0.80 if arm == "candidate" else 0.97)
        answer = ok(y if right else (y + 1) % 10)
        acc.add_single(arm=arm, answer=answer)
        acc.label(labelled_answers([(arm, answer)]), y)
    evidence = _evidence(acc.freeze(), mode="canary")
    measured = accuracy_drop(evidence)
    assert measured is not None and measured[2] == 300
    decision = decide(evidence, DecisionConfig())
    assert decision.verdict == "rollback"
    assert not any(c.name == "agreement" for c in decision.checks)


def test_the_latency_criterion_applies_only_when_configured() -> None:
    acc = WindowAccumulator()
    for y in list(range(10)) * 30:
        inc, cand = ok(y, latency_s=0.005), ok(y, latency_s=0.050)
        acc.add_pair(incumbent=inc, candidate=cand)
        acc.label(labelled_answers([("incumbent", inc), ("candidate", cand)]), y)
    evidence = _evidence(acc.freeze())
    assert decide(evidence, DecisionConfig()).verdict == "promote"
    slow = decide(evidence, DecisionConfig(max_p99_latency_increase_s=0.01))
    assert slow.verdict == "hold" and any(c.name == "latency_p99" for c in slow.checks)


def test_an_equally_good_candidate_is_rarely_rolled_back() -> None:
    """The rollback rule's false-rollback rate on equal models stays under 1 - level."""
    rollbacks = sum(
        decide(
            _evidence(_simulated(300, incumbent_accuracy=0.9, candidate_accuracy=0.9, seed=s)),
            DecisionConfig(max_accuracy_drop=0.0),
        ).verdict
        == "rollback"
        for s in range(200)
    )
    assert rollbacks / 200 <= 0.08  # nominal 0.05; 200 draws


def test_wilson_lower_bound() -> None:
    assert wilson_lower(0, 100, z=1.645) == 0.0
    assert 0.0 < wilson_lower(5, 100, z=1.645) < 0.05 < wilson_lower(20, 20, z=1.645)
