"""Every detector's false-positive rate, checked directly: 2000 seeded null draws each.

A test of ``min(p) >= 1/(P+1)`` holds by construction; this counts alarms. Each draw is a
reference and a window from the same distribution (small sizes, so a draw costs milliseconds),
and the number of ``p < 0.05`` is checked with an exact one-sided binomial test at level
0.001: a detector whose rate is above 0.05 by more than chance fails (with 2000 draws, a rate
of 0.07 fails with probability above 0.99). The native permutation tests are exact, so their
rate must not be far below 0.05 either.

Two alibi-detect detectors cost half a second or more to build, so they keep one reference
with a window 20 (MMD) or 40 (online MMD) times smaller than it: their rate is then the
conditional one of that reference, which at M/N <= 0.05 differs from the average over
references by well under the binomial tolerance (``serve_drift.detectors.calibration``
explains the dependence on M/N). The slowest checks are marked ``slow``; CI runs them all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import numpy as np
import pytest
from scipy import stats

from serve_drift.config import DetectorConfig
from serve_drift.detectors import build_detector

ALPHA = 0.05
DRAWS = 2000
SIGNIFICANCE = 1e-3  # of each binomial check
DIM, CLASSES = 3, 3
REFERENCE_ROWS, WINDOW_ROWS = 30, 20

NullDraw = Callable[[np.random.Generator], float]


def _sample(rng: np.random.Generator, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings and softmax outputs of one population: nothing differs between draws."""
    embeddings = rng.normal(size=(rows, DIM))
    logits = embeddings @ np.eye(DIM, CLASSES) * 2.0
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return embeddings, probabilities


def fresh_reference_draw(config: DetectorConfig) -> NullDraw:
    """A new reference and a new window each draw: the unconditional rate."""

    def draw(rng: np.random.Generator) -> float:
        reference, reference_probs = _sample(rng, REFERENCE_ROWS)
        window, window_probs = _sample(rng, WINDOW_ROWS)
        detector = build_detector(
            config, reference=reference, reference_probabilities=reference_probs
        )
        return detector.test(window, probabilities=window_probs).p_value

    return draw


def fixed_reference_draw(config: DetectorConfig, *, rows: int, window: int) -> NullDraw:
    """One reference (built once), a new window each draw."""
    reference, reference_probs = _sample(np.random.default_rng(12345), rows)
    detector = build_detector(config, reference=reference, reference_probabilities=reference_probs)

    def draw(rng: np.random.Generator) -> float:
        embeddings, probabilities = _sample(rng, window)
        return detector.test(embeddings, probabilities=probabilities).p_value

    return draw


def alarms(draw: NullDraw, *, seed: int) -> int:
    rng = np.random.default_rng(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # alibi-detect's and sklearn's chatter, not ours
        return sum(draw(rng) < ALPHA for _ in range(DRAWS))


def assert_not_above_alpha(count: int) -> None:
    p = stats.binomtest(count, DRAWS, ALPHA, alternative="greater").pvalue
    assert p >= SIGNIFICANCE, f"{count}/{DRAWS} false alarms: rate above {ALPHA} (p = {p:.1e})"


def assert_not_below_alpha(count: int) -> None:
    p = stats.binomtest(count, DRAWS, ALPHA, alternative="less").pvalue
    assert p >= SIGNIFICANCE, f"{count}/{DRAWS} false alarms: far below {ALPHA} (p = {p:.1e})"


EXACT = {  # native permutation tests: rate within binomial noise of alpha, both ways
    "mmd/native": DetectorConfig(kind="mmd", backend="native", device="cpu"),
    "classifier/native": DetectorConfig(kind="classifier", backend="native", device="cpu"),
    "combined/native": DetectorConfig(kind="combined", device="cpu"),
}
VALID = {  # valid but conservative by design (Bonferroni, a held-out split): not above alpha
    "bbsd/native": DetectorConfig(kind="bbsd", backend="native"),
}
SLOW_VALID = {
    "bbsd/alibi": DetectorConfig(kind="bbsd", backend="alibi"),
    "classifier/alibi": DetectorConfig(kind="classifier", backend="alibi"),
}


@pytest.mark.parametrize("name", sorted(EXACT))
def test_exact_permutation_tests_alarm_at_alpha_on_clean_data(name: str) -> None:
    count = alarms(fresh_reference_draw(EXACT[name]), seed=sorted(EXACT).index(name))
    assert_not_above_alpha(count)
    assert_not_below_alpha(count)


@pytest.mark.parametrize("name", sorted(VALID))
def test_valid_tests_alarm_at_most_at_alpha_on_clean_data(name: str) -> None:
    assert_not_above_alpha(alarms(fresh_reference_draw(VALID[name]), seed=10))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SLOW_VALID))
def test_alibi_tests_alarm_at_most_at_alpha_on_clean_data(name: str) -> None:
    assert_not_above_alpha(alarms(fresh_reference_draw(SLOW_VALID[name]), seed=20))


@pytest.mark.slow
def test_alibi_mmd_alarms_at_alpha_on_clean_windows() -> None:
    # p = k/P (no +1), but `p < 0.05` at P = 100 is k <= 4, as native's (k+1)/(P+1) < 0.05.
    config = DetectorConfig(kind="mmd", backend="alibi", device="cpu")
    count = alarms(fixed_reference_draw(config, rows=200, window=10), seed=30)
    assert_not_above_alpha(count)
    assert_not_below_alpha(count)


@pytest.mark.slow
def test_alibi_online_mmd_alarms_at_most_at_alpha_on_clean_windows() -> None:
    config = DetectorConfig(kind="mmd_online", backend="alibi", device="cpu")
    count = alarms(fixed_reference_draw(config, rows=800, window=20), seed=40)
    assert_not_above_alpha(count)


def test_the_check_catches_an_anticonservative_rate() -> None:
    """The binomial check can fail: a 'detector' alarming 7 % of the time is refused."""
    with pytest.raises(AssertionError, match="rate above"):
        assert_not_above_alpha(int(0.07 * DRAWS))
    with pytest.raises(AssertionError, match="far below"):
        assert_not_below_alpha(int(0.03 * DRAWS))
