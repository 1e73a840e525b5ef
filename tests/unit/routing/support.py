"""Builders for the routing unit tests: answers, observations, and a comparison in one call."""

from __future__ import annotations

from collections.abc import Sequence

from serve_drift.routing.answers import Answer, RowAnswer
from serve_drift.routing.comparison import Comparison, WindowAccumulator, labelled_answers
from serve_drift.routing.messages import Observation


def ok(
    predicted: int, confidence: float = 0.9, *, version: str = "v", latency_s: float = 0.01
) -> Answer:
    return Answer("ok", latency_s, rows=(RowAnswer(predicted, confidence),), model_version=version)


def shadow(cid: str, incumbent: Answer, candidate: Answer, *, at: float = 1.0) -> Observation:
    return Observation(cid, at, "shadow", "incumbent", incumbent, candidate)


def paired_comparison(
    incumbent_classes: Sequence[int], candidate_classes: Sequence[int], labels: Sequence[int]
) -> Comparison:
    """Both arms on the same requests, every request labelled."""
    acc = WindowAccumulator()
    for a, b, y in zip(incumbent_classes, candidate_classes, labels, strict=True):
        inc, cand = ok(a), ok(b)
        acc.add_pair(incumbent=inc, candidate=cand)
        acc.label(labelled_answers([("incumbent", inc), ("candidate", cand)]), y)
    return acc.freeze()
