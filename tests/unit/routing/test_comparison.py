"""The comparison's figures, and pooling windows: every figure must add up across windows."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_drift.eventlog.labels import expected_calibration_error
from serve_drift.routing.answers import failed
from serve_drift.routing.comparison import (
    Comparison,
    WindowAccumulator,
    histogram_quantile,
    labelled_answers,
    latency_bucket,
    pool,
)
from tests.unit.routing.support import ok, paired_comparison


def test_agreement_and_flips_by_class_pair() -> None:
    stats = paired_comparison([1, 1, 2, 3, 3], [1, 7, 2, 5, 5], [1, 1, 2, 3, 5])
    assert stats.pairs.pairs == 5 and stats.pairs.agreement == 0.4
    assert stats.pairs.flips == ((3, 5, 2), (1, 7, 1))  # most frequent first


def test_paired_labels_count_who_alone_was_right() -> None:
    stats = paired_comparison([1, 1, 2, 3, 3], [1, 7, 2, 5, 5], [1, 1, 2, 3, 5])
    pairs = stats.pairs
    assert (pairs.labelled, pairs.incumbent_only_correct, pairs.candidate_only_correct) == (5, 2, 1)
    assert stats.incumbent.accuracy == 0.8 and stats.candidate.accuracy == 0.6
    assert stats.delta("accuracy") is not None and abs(stats.delta("accuracy") + 0.2) < 1e-12


def test_a_failed_candidate_answer_counts_as_a_failure_not_a_pair() -> None:
    acc = WindowAccumulator()
    acc.add_pair(incumbent=ok(1), candidate=failed("timeout", latency_s=5.0))
    acc.add_pair(incumbent=ok(1), candidate=ok(1))
    stats = acc.freeze()
    assert stats.observations == 2 and stats.pairs.pairs == 1
    assert stats.candidate.failures == {"timeout": 1} and stats.candidate.error_rate == 0.5
    assert stats.incumbent.failed == 0


def test_ece_matches_the_event_logs_definition() -> None:
    rng = np.random.default_rng(0)
    confidence = rng.uniform(0.05, 1.0, size=300)
    predicted = rng.integers(0, 10, size=300)
    labels = np.where(rng.uniform(size=300) < confidence, predicted, (predicted + 1) % 10)
    acc = WindowAccumulator()
    for c, p, y in zip(confidence, predicted, labels, strict=True):
        answer = ok(int(p), float(c))
        acc.add_single(arm="incumbent", answer=answer)
        acc.label(labelled_answers([("incumbent", answer)]), int(y))
    expected = expected_calibration_error(confidence=confidence, correct=predicted == labels)
    ece = acc.freeze().incumbent.ece
    assert ece is not None and abs(ece - expected) < 1e-9


def test_latency_quantiles_from_the_histogram_are_within_five_percent() -> None:
    rng = np.random.default_rng(1)
    latencies = rng.lognormal(mean=np.log(0.008), sigma=0.6, size=5000)
    histogram: dict[int, int] = {}
    for value in latencies:
        bucket = latency_bucket(float(value))
        histogram[bucket] = histogram.get(bucket, 0) + 1
    for q in (0.5, 0.99):
        estimate = histogram_quantile(histogram, q)
        exact = float(np.quantile(latencies, q))
        assert estimate is not None and abs(estimate - exact) / exact < 0.05
    assert histogram_quantile({}, 0.5) is None


classes = st.integers(0, 4)
rows = st.lists(st.tuples(classes, classes, classes, st.floats(0.01, 1.0)), max_size=30)


@settings(max_examples=60, deadline=None)
@given(windows=st.lists(rows, min_size=1, max_size=4))
def test_pooled_windows_equal_one_window_of_all_their_requests(
    windows: list[list[tuple[int, int, int, float]]],
) -> None:
    def window(items: list[tuple[int, int, int, float]]) -> Comparison:
        acc = WindowAccumulator()
        for a, b, y, c in items:
            inc, cand = ok(a, c, latency_s=c / 10), ok(b, c / 2, latency_s=c)
            acc.add_pair(incumbent=inc, candidate=cand)
            acc.label(labelled_answers([("incumbent", inc), ("candidate", cand)]), y)
        return acc.freeze()

    pooled = pool(window(w) for w in windows)
    whole = window([item for w in windows for item in w])
    assert pooled.observations == whole.observations
    assert pooled.pairs == whole.pairs
    for arm in ("incumbent", "candidate"):
        a, b = getattr(pooled, arm), getattr(whole, arm)
        assert (a.answered, a.rows, a.labelled, a.correct) == (
            b.answered,
            b.rows,
            b.labelled,
            b.correct,
        )
        assert dict(a.latency_histogram) == dict(b.latency_histogram)
        assert abs(a.confidence_sum - b.confidence_sum) < 1e-9
        assert (a.ece is None) == (b.ece is None)
        if a.ece is not None and b.ece is not None:
            assert abs(a.ece - b.ece) < 1e-9


def test_a_comparison_survives_its_json_round_trip() -> None:
    stats = paired_comparison([1, 2, 3], [1, 2, 4], [1, 0, 3])
    assert Comparison.from_dict(stats.to_dict()) == stats
