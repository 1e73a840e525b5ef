"""The label-free accuracy estimate: ATC inside the reference's support, chance outside it."""

from __future__ import annotations

import numpy as np
import pytest

from serve_drift.detectors.accuracy import AccuracyEstimator

CLASSES, DIM = 4, 6


def population(
    rng: np.random.Generator, rows: int, *, accuracy: float, shift: float = 0.0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clustered embeddings, labels, and probabilities of a model right on ``accuracy`` of
    rows, confident (0.9) when right and unsure (0.5) when wrong: calibrated on average."""
    labels = rng.integers(CLASSES, size=rows)
    embeddings = np.eye(CLASSES, DIM)[labels] * 5 + rng.normal(size=(rows, DIM)) + shift
    right = rng.uniform(size=rows) < accuracy
    predicted = np.where(right, labels, (labels + 1) % CLASSES)
    top = np.where(right, 0.9, 0.5)
    probabilities = np.tile(((1 - top) / (CLASSES - 1))[:, None], (1, CLASSES))
    probabilities[np.arange(rows), predicted] = top
    return embeddings, labels, probabilities


def fitted(*, labelled: bool = True, accuracy: float = 0.9) -> AccuracyEstimator:
    embeddings, labels, probabilities = population(
        np.random.default_rng(0), 2000, accuracy=accuracy
    )
    return AccuracyEstimator.fit(
        embeddings=embeddings, probabilities=probabilities, labels=labels if labelled else None
    )


def test_inside_the_support_the_estimate_follows_the_accuracy() -> None:
    estimator = fitted()
    for accuracy in (0.9, 0.7):  # fewer confident rows: ATC counts fewer above its threshold
        embeddings, _, probabilities = population(np.random.default_rng(1), 500, accuracy=accuracy)
        found = estimator.estimate(embeddings=embeddings, probabilities=probabilities)
        assert found.accuracy == pytest.approx(accuracy, abs=0.04)
        assert found.outside_fraction < 0.03


def test_rows_outside_the_support_count_at_chance_however_confident() -> None:
    embeddings, _, probabilities = population(np.random.default_rng(2), 500, accuracy=1.0)
    far = fitted().estimate(embeddings=embeddings + 40.0, probabilities=probabilities)
    assert far.outside_fraction == 1.0 and far.accuracy == pytest.approx(1 / CLASSES)


def test_clean_rows_are_outside_about_as_often_as_the_coverage_says() -> None:
    # Cross-fitted distances: held-out rows are not judged against in-sample ones.
    embeddings, _, probabilities = population(np.random.default_rng(3), 4000, accuracy=0.9)
    found = fitted().estimate(embeddings=embeddings, probabilities=probabilities)
    assert found.outside_fraction == pytest.approx(0.01, abs=0.01)


def test_without_labels_the_reference_is_assumed_calibrated() -> None:
    estimator = fitted(labelled=False)
    assert not estimator.labelled
    # Mean confidence 0.9 * 0.9 + 0.1 * 0.5 = 0.86 stands in for the accuracy of 0.9.
    assert estimator.reference_accuracy == pytest.approx(0.86, abs=0.01)
    embeddings, _, probabilities = population(np.random.default_rng(4), 500, accuracy=0.9)
    found = estimator.estimate(embeddings=embeddings, probabilities=probabilities)
    assert found.accuracy == pytest.approx(0.86, abs=0.04)


def test_mismatched_rows_are_refused() -> None:
    embeddings, labels, probabilities = population(np.random.default_rng(5), 50, accuracy=0.9)
    with pytest.raises(ValueError, match="same rows"):
        AccuracyEstimator.fit(
            embeddings=embeddings, probabilities=probabilities[:40], labels=labels
        )


def test_the_baseline_is_what_clean_windows_get() -> None:
    estimator = fitted()
    embeddings, _, probabilities = population(np.random.default_rng(6), 2000, accuracy=0.9)
    found = estimator.estimate(embeddings=embeddings, probabilities=probabilities)
    assert estimator.baseline == pytest.approx(found.accuracy, abs=0.02)
