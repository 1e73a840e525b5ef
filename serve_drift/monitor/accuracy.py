"""The monitor's label-free accuracy estimate per window, and its comparison with labels.

The estimator (:mod:`serve_drift.detectors.accuracy`) is fitted on the reference set when the
monitor starts (milliseconds). Every window's estimate goes on each of its drift results, on
the ``serve_drift.accuracy.estimated`` gauge and into the event store with them; when labels
arrive and the window's accuracy is recomputed, the estimate's error (estimate minus accuracy
from labels) is exported as ``serve_drift.accuracy.estimate_error``.
"""

from __future__ import annotations

import logging

import numpy as np

from serve_drift.detectors.accuracy import AccuracyEstimator
from serve_drift.reference.reference_set import ReferenceSet

logger = logging.getLogger(__name__)


def fit_accuracy_estimator(reference: ReferenceSet) -> AccuracyEstimator | None:
    """The estimator for ``reference``, or ``None`` without its softmax probabilities."""
    if reference.probabilities is None:
        logger.info("serve-drift: the reference set has no probabilities: no accuracy estimate")
        return None
    try:
        return AccuracyEstimator.fit(
            embeddings=reference.embeddings,
            probabilities=reference.probabilities,
            labels=reference.labels,
        )
    except (ValueError, np.linalg.LinAlgError):
        logger.exception("serve-drift: the accuracy estimate could not be fitted")
        return None
