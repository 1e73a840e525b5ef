"""Label feedback: join semantics (over both store backends), per-window metrics (checked
against sklearn), ECE."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, precision_recall_fscore_support

from serve_drift.eventlog.labels import (
    compute_metrics,
    expected_calibration_error,
    parse_labels,
    record_window_metrics,
    submit_labels,
    window_metrics,
)
from serve_drift.eventlog.schema import LabelRecord
from serve_drift.eventlog.store import BaseEventStore as EventStore
from serve_drift.eventlog.store import ServedRequest, StoreWriteError
from tests.support.eventlog_helpers import make_record, make_records, with_window
from tests.support.store_backends import PostgresBackend, SqliteBackend


@pytest.fixture
def store(store_backend: SqliteBackend | PostgresBackend):
    with store_backend.open() as s:
        yield s


def _label(cid: str, label: int) -> LabelRecord:
    return LabelRecord(correlation_id=cid, label=label, received_at=5000.0)


def test_each_label_gets_a_clear_answer(store: EventStore) -> None:
    store.write_batch(
        [
            *with_window(make_records(3), 0),  # req-0, req-1, req-2
            make_record(10, correlation_id="reused"),
            make_record(11, correlation_id="reused"),  # a client reused its id
            make_record(12, correlation_id="shadowed"),
            make_record(13, correlation_id="shadowed", deployment="Shadow", model_version="v2"),
        ]
    )
    items = parse_labels(
        {
            "labels": [
                {"correlation_id": "req-0", "label": 0},
                {"correlation_id": "req-1", "label": 7},
                {"correlation_id": "req-0", "label": 5},  # second label for the same request
                {"correlation_id": "never-served", "label": 1},
                {"correlation_id": "reused", "label": 1},
                {"correlation_id": "shadowed", "label": 2},
                {"correlation_id": "req-2", "label": "two"},
                "nonsense",
            ]
        },
        now=5000.0,
    )
    answers = submit_labels(store, items)
    statuses = [a.status for a in answers]
    assert statuses == [
        "accepted",
        "accepted",
        "duplicate_label",
        "unknown_correlation_id",
        "ambiguous",
        "accepted",
        "invalid",
        "invalid",
    ]
    assert answers[0].drift_windows == (0,) and len(answers[0].internal_ids) == 1
    # The answer never echoes what is stored (the label, its source) back to the caller.
    assert answers[2].detail == "already labelled; the first label stands"
    assert answers[2].to_dict() == {
        "correlation_id": answers[2].correlation_id,
        "status": "duplicate_label",
        "detail": answers[2].detail,
    }
    assert "never served" in answers[3].detail
    assert len(answers[5].internal_ids) == 2  # primary and shadow share the request's label
    again = submit_labels(store, parse_labels({"correlation_id": "req-1", "label": 7}))
    assert again[0].status == "duplicate_label" and "7" not in again[0].detail
    assert set(store.labels(["req-0", "req-1", "reused"])) == {"req-0", "req-1"}


def test_parse_rejects_what_is_not_a_label_payload() -> None:
    with pytest.raises(ValueError):
        parse_labels("just text")
    with pytest.raises(ValueError, match="at most"):
        parse_labels([{"correlation_id": str(i), "label": 0} for i in range(10_001)])
    bad = parse_labels([{"correlation_id": "a", "label": True}, {"correlation_id": "", "label": 1}])
    assert [b.status for b in bad] == ["invalid", "invalid"]


def test_labels_fail_visibly_when_the_store_fails(
    store: EventStore, store_backend: SqliteBackend | PostgresBackend
) -> None:
    store.write_batch(make_records(3))
    store_backend.fail_writes(store)
    with pytest.raises(StoreWriteError):
        submit_labels(store, [_label("req-0", 0)])
    store_backend.heal(store)
    assert store.labels(["req-0"]) == {}


def test_metrics_match_sklearn_with_and_without_weights() -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 5, size=500)
    y_pred = np.where(rng.random(500) < 0.7, y_true, rng.integers(0, 6, size=500))
    weights = rng.choice([1.0, 10.0], size=500)
    for w in (None, weights):
        ours = compute_metrics(y_true=y_true, y_pred=y_pred, weights=w)
        assert ours.accuracy == pytest.approx(accuracy_score(y_true, y_pred, sample_weight=w))
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, average="macro", sample_weight=w, zero_division=0
        )
        assert (ours.precision_macro, ours.recall_macro, ours.f1_macro) == pytest.approx((p, r, f))
        p_c, r_c, f_c, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(6), sample_weight=w, zero_division=0
        )
        assert [c.class_index for c in ours.per_class] == list(
            range(6)
        )  # 5 never true, but predicted
        assert [c.precision for c in ours.per_class] == pytest.approx(list(p_c))
        assert [c.recall for c in ours.per_class] == pytest.approx(list(r_c))
        assert [c.f1 for c in ours.per_class] == pytest.approx(list(f_c))
    unweighted = compute_metrics(y_true=y_true, y_pred=y_pred)
    assert [c.support for c in unweighted.per_class] == list(np.bincount(y_true, minlength=6))
    assert unweighted.ece is None and unweighted.n_with_confidence == 0


def test_ece_is_small_when_calibrated_and_equals_the_gap_when_not() -> None:
    rng = np.random.default_rng(1)
    confidence = rng.uniform(0.2, 1.0, size=50_000)
    calibrated = rng.random(50_000) < confidence  # right with probability = confidence
    assert expected_calibration_error(confidence=confidence, correct=calibrated) < 0.01
    overconfident = rng.random(50_000) < confidence - 0.15  # 15 points less often right
    ece = expected_calibration_error(confidence=confidence, correct=overconfident)
    assert ece == pytest.approx(0.15, abs=0.01)
    # Exact toy: two bins, each 50 % right at 0.95 and 0.5 confidence: |0.5-0.95|/2 + |0.5-0.5|/2.
    toy = expected_calibration_error(confidence=[0.95, 0.95, 0.5, 0.5], correct=[1, 0, 1, 0])
    assert toy == pytest.approx(0.225)
    assert expected_calibration_error(confidence=[0.0, 1.0], correct=[0, 1]) == 0.0  # edges


def test_ece_bins_are_right_closed() -> None:
    """Bins are ((b-1)/15, b/15]: a confidence of exactly 1/15 shares bin 0 with 0.06."""
    edge = 1 / 15
    ece = expected_calibration_error(confidence=[edge, 0.06], correct=[1, 0])
    same_bin = abs(0.5 - (edge + 0.06) / 2)
    split_bins = (abs(1 - edge) + abs(0 - 0.06)) / 2  # what left-closed bins would give
    assert ece == pytest.approx(same_bin) and ece != pytest.approx(split_bins)


def test_window_metrics_count_every_labelled_request_sampled_out_or_not(
    store: EventStore,
) -> None:
    """A window with every low-confidence (and wrong) event kept but ordinary events sampled at
    10 %: accuracy from the stored events alone would be far too low. Every served request has
    a compact row, so the labels of sampled-out requests join too and the window is judged on
    all of them."""
    import dataclasses

    ordinary = [
        dataclasses.replace(r, sampling_weight=10.0, keep_reason="sampled")
        for r in with_window(make_records(200, confidence=0.95, predicted_class=1), 4)
    ]
    hard = with_window(make_records(20, start=1000, confidence=0.3, predicted_class=2), 4)
    kept = ordinary[::10]  # 20 of the 200 ordinary ones were sampled into the store
    store.record_served([ServedRequest.of(r) for r in ordinary])
    store.write_batch([*kept, *hard])
    labels = [_label(r.correlation_id, 1) for r in ordinary + hard]  # hard ones are all wrong
    assert {a.status for a in store.attach_labels(labels)} == {"accepted"}
    assert store.count_events() == 40 and store.count_served() == 220
    metrics = window_metrics(store, window_index=4)
    assert metrics is not None and metrics.n_labelled == 220 and metrics.weighted_n == 220.0
    assert metrics.accuracy == pytest.approx(200 / 220)
    assert window_metrics(store, window_index=5) is None
    record = record_window_metrics(
        store, window_index=4, model_name="digits-cnn", model_version="v1"
    )
    assert record is not None and store.concept_metrics(tag="feedback") == [record]
    assert (record.first_event_at, record.last_event_at) == (1000.0, 2019.0)


def test_labels_do_not_join_events_written_after_them(store: EventStore) -> None:
    store.write_batch([make_record(1, correlation_id="late")])
    store.attach_labels([_label("late", 3)])
    store.write_batch([make_record(2, correlation_id="late", drift_window=1)])  # a reuse, later
    assert len(store.labelled_predictions()) == 1
