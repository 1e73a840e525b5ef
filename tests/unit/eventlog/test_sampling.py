"""Sampling keeps what matters, weights re-estimate counts, and the accounting adds up."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_drift.eventlog.sampling import Accounting, AccountingError, AccountingSnapshot, Sampler
from tests.support.eventlog_helpers import make_record


def _population(n: int, *, seed: int) -> list:
    """Mixed traffic: ~5 % flagged, ~1 % quarantined, ~10 % low confidence, the rest ordinary."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(4, size=n, p=[0.05, 0.01, 0.10, 0.84])
    records = []
    for i, kind in enumerate(kinds):
        if kind == 0:
            records.append(make_record(i, validation_flags=("too_small",)))
        elif kind == 1:
            records.append(make_record(i, validation_flags=("quarantined", "bad_decode")))
        elif kind == 2:
            records.append(make_record(i, confidence=float(rng.uniform(0.1, 0.49))))
        else:
            records.append(make_record(i, confidence=float(rng.uniform(0.5, 1.0))))
    return records


def test_everything_that_matters_is_kept_with_weight_one() -> None:
    records = _population(3000, seed=1)
    kept, sampled_out = Sampler(rate=0.05, keep_confidence_below=0.5, seed=0).apply(
        records, in_drift_window=False
    )
    kept_ids = {r.internal_id for r in kept}
    for record in records:
        important = record.flagged or record.outputs.confidence < 0.5
        if important:
            assert record.internal_id in kept_ids
    reasons = {r.keep_reason for r in kept if r.sampling_weight == 1.0}
    assert reasons == {"flagged", "quarantined", "low_confidence"}
    assert all(r.sampling_weight == pytest.approx(20.0) for r in kept if r.keep_reason == "sampled")
    assert len(kept) + sampled_out == len(records)


def test_a_drift_window_keeps_every_event() -> None:
    records = _population(500, seed=2)
    kept, sampled_out = Sampler(rate=0.01, seed=0).apply(records, in_drift_window=True)
    assert sampled_out == 0 and len(kept) == 500
    assert all(r.sampling_weight == 1.0 for r in kept)
    ordinary = [r for r in kept if not r.flagged and r.outputs.confidence >= 0.5]
    assert {r.keep_reason for r in ordinary} == {"drift_window"}


def test_weights_re_estimate_counts_without_bias() -> None:
    """Sum of weights estimates the total and per-class counts; seeded, within 4 standard errors."""
    records = _population(20_000, seed=3)
    rate = 0.1
    estimates = []
    # Sampler seeds differ from the population's: the same seed would replay the same stream.
    for seed in range(100, 105):
        kept, _ = Sampler(rate=rate, seed=seed).apply(records, in_drift_window=False)
        estimates.append(sum(r.sampling_weight for r in kept))
        per_class = {}
        for r in kept:
            per_class[r.outputs.predicted_class] = (
                per_class.get(r.outputs.predicted_class, 0) + r.sampling_weight
            )
        for cls, weight in per_class.items():
            true = sum(1 for r in records if r.outputs.predicted_class == cls)
            ordinary = sum(
                1
                for r in records
                if r.outputs.predicted_class == cls
                and r.keep_reason is None
                and not r.flagged
                and r.outputs.confidence >= 0.5
            )
            se = np.sqrt(ordinary * (1 - rate) / rate)
            assert abs(weight - true) < 4 * se, cls
    ordinary = sum(1 for r in records if not r.flagged and r.outputs.confidence >= 0.5)
    se = np.sqrt(ordinary * (1 - rate) / rate)
    assert abs(np.mean(estimates) - len(records)) < 4 * se / np.sqrt(len(estimates))


def test_rate_bounds_and_extremes() -> None:
    with pytest.raises(ValueError, match="rate"):
        Sampler(rate=1.5)
    with pytest.raises(ValueError, match="keep_confidence_below"):
        Sampler(rate=0.5, keep_confidence_below=2.0)
    records = _population(200, seed=4)
    kept_all, out = Sampler(rate=1.0, seed=0).apply(records, in_drift_window=False)
    assert out == 0 and all(r.sampling_weight == 1.0 for r in kept_all)
    kept_none, out = Sampler(rate=0.0, keep_confidence_below=None, seed=0).apply(
        records, in_drift_window=False
    )
    assert all(r.flagged for r in kept_none) and out == 200 - len(kept_none)


def test_seeded_decisions_are_reproducible() -> None:
    records = _population(300, seed=5)
    first = Sampler(rate=0.2, seed=7).decide_many(records, in_drift_window=False)
    second = Sampler(rate=0.2, seed=7).decide_many(records, in_drift_window=False)
    assert first == second


@settings(max_examples=100, deadline=None)
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["accept", "stored", "sampled_out", "dropped"]), st.integers(0, 50)
        ),
        max_size=40,
    )
)
def test_accounting_invariant_under_any_sequence(ops: list) -> None:
    accounting = Accounting()
    owed = 0
    for op, n in ops:
        if op == "accept":
            accounting.accept(n)
            owed += n
            continue
        n = min(n, owed)  # a correct caller never resolves more than it accepted
        owed -= n
        if op == "dropped":
            accounting.dropped(n, reason="store_locked")
        else:
            getattr(accounting, op)(n)
    snapshot = accounting.snapshot()
    snapshot.check()
    assert snapshot.pending == owed
    assert (
        snapshot.stored + snapshot.sampled_out + snapshot.dropped_total + snapshot.pending
        == snapshot.accepted
    )


def test_accounting_catches_lost_and_double_counted_events() -> None:
    lost = AccountingSnapshot(accepted=10, stored=5, sampled_out=4, dropped={})
    lost.check()  # one still pending is fine while running...
    with pytest.raises(AccountingError, match="1 pending"):
        lost.check(settled=True)  # ...but not at the end
    double = AccountingSnapshot(accepted=10, stored=8, sampled_out=4, dropped={"x": 1})
    with pytest.raises(AccountingError):
        double.check()
    with pytest.raises(ValueError):
        Accounting().stored(-1)
