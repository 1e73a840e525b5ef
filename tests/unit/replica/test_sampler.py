"""The replica's row sampler: every row under the cap, a weighted uniform sample above it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_drift.replica.sampler import RowSampler


def _none(n: int) -> np.ndarray:
    return np.zeros(n, dtype=bool)


def test_without_a_cap_every_row_ships_with_weight_one() -> None:
    choice = RowSampler(max_rows_per_s=None, burst_s=1.0).choose(always=_none(500), now=0.0)
    assert choice.kept.tolist() == list(range(500)) and choice.unsampled == 0
    assert set(choice.weights.tolist()) == {1.0}


def test_under_the_cap_every_row_ships() -> None:
    sampler = RowSampler(max_rows_per_s=100.0, burst_s=1.0, seed=0)
    for second in range(5):  # 50 rows a second against a cap of 100
        choice = sampler.choose(always=_none(50), now=float(second))
        assert len(choice.kept) == 50 and choice.unsampled == 0


def test_above_the_cap_a_drain_ships_its_tokens_and_each_kept_row_stands_for_n_over_k() -> None:
    sampler = RowSampler(max_rows_per_s=20.0, burst_s=1.0, seed=0)
    first = sampler.choose(always=_none(100), now=0.0)  # a full bucket: one second's worth
    assert len(first.kept) == 20 and first.unsampled == 80
    assert first.weights.tolist() == [5.0] * 20
    later = sampler.choose(always=_none(100), now=0.5)  # half a second refills 10 tokens
    assert len(later.kept) == 10 and later.unsampled == 90 and later.weights[0] == 10.0
    assert len(set(later.kept.tolist())) == 10 and later.kept.tolist() == sorted(later.kept)


def test_rows_that_must_ship_ship_with_weight_one_and_cost_no_tokens() -> None:
    sampler = RowSampler(max_rows_per_s=4.0, burst_s=1.0, seed=0)
    always = _none(40)
    always[[3, 17]] = True  # e.g. a verified sentinel run
    choice = sampler.choose(always=always, now=0.0)
    assert {3, 17} <= set(choice.kept.tolist()) and len(choice.kept) == 6
    weights = dict(zip(choice.kept.tolist(), choice.weights.tolist(), strict=True))
    assert weights[3] == weights[17] == 1.0
    assert sorted(w for i, w in weights.items() if i not in (3, 17)) == [38 / 4] * 4
    assert choice.unsampled == 34


def test_the_monitors_share_lowers_the_cap_and_none_lifts_it() -> None:
    sampler = RowSampler(max_rows_per_s=100.0, burst_s=1.0, seed=0)
    sampler.advise(10.0)
    assert sampler.rate == 10.0
    assert len(sampler.choose(always=_none(50), now=0.0).kept) == 10
    sampler.advise(None)
    assert sampler.rate == 100.0
    sampler.advise(float("nan"))  # nonsense from the wire is ignored
    assert sampler.rate == 100.0


def test_the_sample_is_uniform_over_the_rows_of_a_drain() -> None:
    """Every position of a drain is kept with probability k/n (a seeded frequency check)."""
    sampler = RowSampler(max_rows_per_s=10.0, burst_s=1.0, seed=1)
    n, drains = 40, 4000
    kept = np.zeros(n)
    for i in range(drains):
        kept[sampler.choose(always=_none(n), now=float(i)).kept] += 1
    expected = drains * 10 / n  # 1000 per position; binomial sd about 27
    assert np.abs(kept - expected).max() < 6 * np.sqrt(expected * (1 - 10 / n))


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=12),
    rate=st.floats(min_value=1.0, max_value=500.0),
    step_s=st.floats(min_value=0.0, max_value=2.0),
)
def test_weights_re_estimate_every_served_row_exactly(
    sizes: list[int], rate: float, step_s: float
) -> None:
    """Horvitz-Thompson, per drain: the kept rows' weights sum to the rows the drain had."""
    sampler = RowSampler(max_rows_per_s=rate, burst_s=1.0, seed=0)
    for i, n in enumerate(sizes):
        choice = sampler.choose(always=_none(n), now=i * step_s)
        assert len(choice.kept) + choice.unsampled == n
        if len(choice.kept):
            assert choice.weights.sum() == pytest.approx(n)
        assert (choice.weights >= 1.0).all()
