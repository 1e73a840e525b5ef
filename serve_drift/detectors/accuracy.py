"""A label-free estimate of the model's accuracy on a window, fitted on the reference set.

Drift says the inputs moved; this says whether it hurts. Per window it estimates the fraction
of rows the model classifies correctly from what the monitor has without labels: the softmax
probabilities and the embeddings.

**Average thresholded confidence (ATC; Garg et al., ICLR 2022)** for rows like the reference:
a threshold ``t`` on the top-class probability is fitted on the reference so that the fraction
of its rows above ``t`` equals its accuracy from labels (without labels, its mean confidence:
the model is then assumed calibrated on the reference), and a row counts as correct when its
confidence exceeds ``t``.

**An out-of-support guard.** Confidence alone fails where the model is confidently wrong on
inputs unlike any it was trained on: occluding half of each digit drops the digits CNN's
accuracy to 14 % while its mean confidence stays at 0.86 (ATC alone estimates 0.8). So each
row is first scored by its Mahalanobis distance to the reference embeddings of its predicted
class (class-conditional Gaussians with a shared covariance, as in Lee et al., NeurIPS 2018).
Rows beyond the ``coverage`` quantile (0.99) of the reference's own, cross-fitted, distances
lie outside the reference's support; they count at chance, ``1 / C``: the model's confidence
says nothing about inputs it has never seen the like of. The class means use the reference's
labels when it has them, else its predicted classes.

The estimate is the mean over rows of ``[inside and confidence > t] + [outside] / C``. Its
error on the digits CNN (``benchmarks/false_alarms.py``) is within 5 points of the accuracy
from labels on clean traffic and under brightness, Gaussian noise and occlusion (severity 0.5).
It cannot be trusted where the guard cannot see the shift: when the model is confidently
wrong on inputs whose embeddings stay inside the reference's support (measured: rotation).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> classes = rng.integers(3, size=300)
>>> embeddings = np.eye(3)[classes] * 4 + rng.normal(size=(300, 3))
>>> probabilities = np.full((300, 3), 0.05); probabilities[np.arange(300), classes] = 0.9
>>> estimator = AccuracyEstimator.fit(
...     embeddings=embeddings, probabilities=probabilities, labels=classes)
>>> round(estimator.estimate(embeddings=embeddings, probabilities=probabilities).accuracy, 1)
1.0
>>> far = estimator.estimate(embeddings=embeddings + 50, probabilities=probabilities)
>>> round(far.accuracy, 2), far.outside_fraction
(0.33, 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

METHOD = "atc+mahalanobis-guard-v1"
DEFAULT_COVERAGE = 0.99
_FOLDS = 5
_RIDGE = 0.01  # of the mean variance, added to the shared covariance's diagonal


@dataclass(frozen=True)
class AccuracyEstimate:
    """One window's estimate: ``accuracy`` in [0, 1] and the fraction of rows found outside
    the reference's support (counted at chance)."""

    accuracy: float
    outside_fraction: float


@dataclass(frozen=True, eq=False)
class _ClassGaussians:
    means: np.ndarray  # (C, d)
    precision: np.ndarray  # (d, d), inverse of the shared covariance

    @classmethod
    def fit(cls, embeddings: np.ndarray, classes: np.ndarray, *, num_classes: int) -> Any:
        overall = embeddings.mean(axis=0)
        means = np.stack(
            [
                embeddings[classes == c].mean(axis=0) if (classes == c).any() else overall
                for c in range(num_classes)
            ]
        )
        centred = embeddings - means[classes]
        covariance = np.atleast_2d(np.cov(centred, rowvar=False))
        ridge = _RIDGE * float(np.trace(covariance)) / len(covariance) + 1e-12
        precision = np.linalg.inv(covariance + ridge * np.eye(len(covariance)))
        return cls(means=means, precision=precision)

    def distances(self, embeddings: np.ndarray, classes: np.ndarray) -> np.ndarray:
        offsets = embeddings - self.means[classes]
        return np.einsum("ij,jk,ik->i", offsets, self.precision, offsets)


@dataclass(frozen=True, eq=False)
class AccuracyEstimator:
    """ATC with an out-of-support guard (see the module docstring), fitted by :meth:`fit`."""

    gaussians: _ClassGaussians
    distance_limit: float
    confidence_threshold: float
    tie_credit: float  # for rows exactly at the threshold (saturated confidences tie)
    num_classes: int
    reference_accuracy: float
    # The estimate on the reference itself (its rows judged as new ones, cross-fitted): what
    # a clean window should get, to compare a window's estimate with (alert rules do).
    baseline: float
    labelled: bool

    @classmethod
    def fit(
        cls,
        *,
        embeddings: Any,
        probabilities: Any,
        labels: Any | None = None,
        coverage: float = DEFAULT_COVERAGE,
        seed: int = 0,
    ) -> AccuracyEstimator:
        """Fit on the reference's embeddings (N, d), probabilities (N, C) and labels (N,)."""
        x = np.asarray(embeddings, dtype=np.float64)
        probs = np.asarray(probabilities, dtype=np.float64)
        predicted = probs.argmax(axis=1)
        num_classes = int(probs.shape[1])
        classes = predicted if labels is None else np.asarray(labels, dtype=np.int64)
        if len(classes) != len(x) or len(probs) != len(x) or classes.max() >= num_classes:
            raise ValueError("embeddings, probabilities and labels must describe the same rows")
        distances = _cross_fitted(x, classes, predicted, num_classes=num_classes, seed=seed)
        limit = float(np.quantile(distances, coverage))
        inside = distances <= limit
        confidence = probs.max(axis=1)
        accuracy = (
            float(probs[inside].max(axis=1).mean())
            if labels is None
            else float((predicted == classes)[inside].mean())
        )
        threshold, tie_credit = _atc_threshold(confidence[inside], accuracy)
        credit = _credit(confidence, threshold=threshold, tie_credit=tie_credit)
        return cls(
            gaussians=_ClassGaussians.fit(x, classes, num_classes=num_classes),
            distance_limit=limit,
            confidence_threshold=threshold,
            tie_credit=tie_credit,
            num_classes=num_classes,
            reference_accuracy=accuracy,
            baseline=float(np.where(inside, credit, 1.0 / num_classes).mean()),
            labelled=labels is not None,
        )

    def estimate(self, *, embeddings: Any, probabilities: Any) -> AccuracyEstimate:
        """The estimated accuracy of the model on these rows (one window)."""
        x = np.asarray(embeddings, dtype=np.float64)
        probs = np.asarray(probabilities, dtype=np.float64)
        predicted = probs.argmax(axis=1)
        outside = self.gaussians.distances(x, predicted) > self.distance_limit
        confident = _credit(
            probs.max(axis=1), threshold=self.confidence_threshold, tie_credit=self.tie_credit
        )
        correct = np.where(outside, 1.0 / self.num_classes, confident)
        return AccuracyEstimate(
            accuracy=float(correct.mean()), outside_fraction=float(outside.mean())
        )


def _cross_fitted(
    x: np.ndarray, classes: np.ndarray, predicted: np.ndarray, *, num_classes: int, seed: int
) -> np.ndarray:
    """Each reference row's distance under Gaussians fitted without it (K folds): in-sample
    distances are smaller than a new row's, which would make the guard fire on clean traffic."""
    folds = np.random.default_rng(seed).permutation(len(x)) % _FOLDS
    distances = np.empty(len(x))
    for fold in range(_FOLDS):
        held = folds == fold
        gaussians = _ClassGaussians.fit(x[~held], classes[~held], num_classes=num_classes)
        distances[held] = gaussians.distances(x[held], predicted[held])
    return distances


def _credit(confidence: np.ndarray, *, threshold: float, tie_credit: float) -> np.ndarray:
    """Each row's ATC credit: 1 above the threshold, ``tie_credit`` exactly at it."""
    return (confidence > threshold) + tie_credit * (confidence == threshold)


def _atc_threshold(confidence: np.ndarray, accuracy: float) -> tuple[float, float]:
    """A threshold ``t`` and a credit ``c`` for rows exactly at it, such that
    ``mean(confidence > t) + c * mean(confidence == t) == accuracy``: confidences tie (a
    confident float32 softmax saturates at 1.0), and a plain quantile would then miss."""
    t = float(np.quantile(confidence, 1.0 - accuracy, method="lower"))
    above = float((confidence > t).mean())
    at = float((confidence == t).mean())
    credit = 0.0 if at == 0 else min(max((accuracy - above) / at, 0.0), 1.0)
    return t, credit
