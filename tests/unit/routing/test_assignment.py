"""Canary assignment is sticky and monotone in the share; mirror sampling follows the fraction;
a promotion or rollback overrides both."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from serve_drift.routing.assignment import (
    caller_key,
    mirrored,
    route_for,
    takes_candidate,
    unit_interval,
)
from serve_drift.routing.config import CanaryKey, RouterConfig
from serve_drift.routing.messages import RoutingState


def _config(**changes: object) -> RouterConfig:
    return RouterConfig.model_validate(
        {"incumbent": {"app": "inc"}, "candidate": {"app": "cand"}, **changes}
    )


@given(key=st.text(max_size=40), low=st.floats(0, 1), high=st.floats(0, 1))
def test_widening_the_share_never_moves_a_caller_back_to_the_incumbent(
    key: str, low: float, high: float
) -> None:
    low, high = min(low, high), max(low, high)
    if takes_candidate(key, share=low, salt="s"):
        assert takes_candidate(key, share=high, salt="s")


def test_the_share_of_callers_on_the_candidate_matches_the_configured_share() -> None:
    keys = [f"user-{i}" for i in range(20_000)]
    for share in (0.05, 0.3):
        on_candidate = sum(takes_candidate(k, share=share, salt="") for k in keys) / len(keys)
        # Binomial standard error at 20 000 keys is under 0.004: 4 of them is generous.
        assert abs(on_candidate - share) < 0.016


def test_a_salt_reshuffles_who_is_in_the_canary() -> None:
    keys = [f"user-{i}" for i in range(2000)]
    a = {k for k in keys if takes_candidate(k, share=0.5, salt="a")}
    b = {k for k in keys if takes_candidate(k, share=0.5, salt="b")}
    assert 0.35 < len(a & b) / len(a) < 0.65  # independent halves overlap by about half


def test_hash_points_are_in_the_unit_interval_and_stable() -> None:
    points = [unit_interval(f"k{i}", salt="x") for i in range(1000)]
    assert all(0 <= p < 1 for p in points)
    assert points == [unit_interval(f"k{i}", salt="x") for i in range(1000)]
    assert unit_interval("k", salt="a" * 40) != unit_interval("k", salt="b" * 40)  # long salts


def test_the_caller_key_comes_from_the_configured_header_or_context_else_the_id() -> None:
    headers = {"x-user": "alice", "x-serve-drift-context-camera": "cam-7"}
    assert (
        caller_key(CanaryKey(header="X-User"), headers=headers, correlation_id="r") == "key:alice"
    )
    assert (
        caller_key(CanaryKey(context="camera"), headers=headers, correlation_id="r") == "key:cam-7"
    )
    assert caller_key(CanaryKey(header="x-absent"), headers=headers, correlation_id="r") == "id:r"
    assert caller_key(CanaryKey(), headers=headers, correlation_id="r") == "id:r"


def test_mirror_sampling_follows_the_fraction() -> None:
    ids = [f"req-{i}" for i in range(10_000)]
    assert all(mirrored(i, fraction=1.0) for i in ids[:100])
    assert not any(mirrored(i, fraction=0.0) for i in ids[:100])
    share = sum(mirrored(i, fraction=0.25) for i in ids) / len(ids)
    assert abs(share - 0.25) < 0.02


def test_the_same_caller_gets_the_same_arm_in_canary_mode() -> None:
    config = _config(mode="canary", canary={"share": 0.5, "key": {"header": "x-user"}})
    for user in ("alice", "bob", "carol", "dave"):
        arms = {
            route_for(
                config, RoutingState(), correlation_id=f"r{i}", headers={"x-user": user}
            ).serve
            for i in range(50)
        }
        assert len(arms) == 1


def test_a_promotion_or_rollback_overrides_the_configured_mode() -> None:
    for mode in ("shadow", "canary"):
        config = _config(mode=mode, canary={"share": 1.0})
        for arm in ("candidate", "incumbent"):
            route = route_for(
                config, RoutingState(route_all_to=arm, epoch=1), correlation_id="r", headers={}
            )
            assert (route.serve, route.mirror, route.mode) == (arm, False, "routed")


def test_shadow_mode_always_answers_from_the_incumbent() -> None:
    config = _config(mode="shadow", mirror={"fraction": 0.5})
    routes = [
        route_for(config, RoutingState(), correlation_id=f"r{i}", headers={}) for i in range(200)
    ]
    assert {r.serve for r in routes} == {"incumbent"}
    assert 0 < sum(r.mirror for r in routes) < 200
