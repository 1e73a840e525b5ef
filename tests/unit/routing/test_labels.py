"""Labels posted to the router: the arms' answers merged, the accepted ones for the comparator."""

from __future__ import annotations

from serve_drift.routing.labels import accepted_labels, merge_answers


def _answers(*statuses: str) -> list[dict[str, str]]:
    return [{"correlation_id": f"c{i}", "status": s, "detail": ""} for i, s in enumerate(statuses)]


def test_an_item_is_accepted_when_any_arm_accepted_it() -> None:
    incumbent = _answers("accepted", "unknown_correlation_id", "duplicate_label", "invalid")
    candidate = _answers("unknown_correlation_id", "accepted", "unknown_correlation_id", "invalid")
    merged = merge_answers([incumbent, candidate])
    assert [m["status"] for m in merged] == ["accepted", "accepted", "duplicate_label", "invalid"]
    assert merge_answers([incumbent, []]) == incumbent  # an arm that could not judge


def test_the_comparator_gets_exactly_the_accepted_labels() -> None:
    payload = {
        "labels": [
            {"correlation_id": "c0", "label": 3},
            {"correlation_id": "c1", "label": 4},
            {"label": 5},
        ]
    }
    merged = _answers("accepted", "unknown_correlation_id", "invalid")
    assert accepted_labels(payload, merged) == [("c0", 3)]
    assert accepted_labels({"labels": "nope"}, merged) == []
