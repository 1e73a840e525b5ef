"""Promotion needs the evidence; rollback is always allowed; every change is a new epoch."""

from __future__ import annotations

import pytest

from serve_drift.routing.changes import ChangeRefused, ChangeRequest, next_state
from serve_drift.routing.comparison import Comparison
from serve_drift.routing.config import DecisionConfig
from serve_drift.routing.decision import Decision, Evidence, decide
from serve_drift.routing.drift import ArmDrift
from serve_drift.routing.messages import RoutingState
from tests.unit.routing.support import paired_comparison

HOLD = decide(Evidence("shadow", 0, 0, None, None, None, Comparison()), DecisionConfig())


def _promote_decision() -> Decision:
    labels = list(range(10)) * 40
    drift = {"incumbent": ArmDrift(windows=3), "candidate": ArmDrift(windows=3)}
    evidence = Evidence(
        "shadow", 0, 3, "a", "b", 0.0, paired_comparison(labels, labels, labels), drift
    )
    decision = decide(evidence, DecisionConfig())
    assert decision.verdict == "promote"
    return decision


def _next(
    request: ChangeRequest,
    state: RoutingState,
    decision: Decision = HOLD,
    *,
    fallback: bool = False,
) -> RoutingState:
    return next_state(request, state=state, decision=decision, has_fallback=fallback, now=9.0)


def test_promotion_is_refused_unless_the_decision_says_promote() -> None:
    with pytest.raises(ChangeRefused) as refused:
        _next(ChangeRequest("promote"), RoutingState())
    assert refused.value.code == "decision_not_promote"
    assert _next(ChangeRequest("promote"), RoutingState(), _promote_decision()) == RoutingState(
        "candidate", 1, 9.0
    )
    assert _next(ChangeRequest("promote", force=True), RoutingState()).route_all_to == "candidate"


def test_rollback_goes_to_the_incumbent_or_a_configured_fallback() -> None:
    promoted = RoutingState("candidate", 3, 1.0)
    assert _next(ChangeRequest("rollback"), promoted) == RoutingState("incumbent", 4, 9.0)
    with pytest.raises(ChangeRefused, match="no fallback"):
        _next(ChangeRequest("rollback", target="fallback"), promoted)
    assert (
        _next(ChangeRequest("rollback", target="fallback"), promoted, fallback=True).route_all_to
        == "fallback"
    )
    with pytest.raises(ChangeRefused) as same:
        _next(ChangeRequest("rollback"), RoutingState("incumbent", 4, 9.0))
    assert same.value.code == "no_change"


def test_resume_returns_to_the_configured_routing_in_a_new_epoch() -> None:
    assert _next(ChangeRequest("resume"), RoutingState("incumbent", 4, 1.0)) == RoutingState(
        None, 5, 9.0
    )
    assert _next(ChangeRequest("resume"), RoutingState()).epoch == 1
