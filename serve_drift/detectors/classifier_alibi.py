"""alibi-detect's ``ClassifierDrift`` (scikit-learn backend) behind our detector interface.

alibi-detect is licensed under the Business Source License 1.1; it is imported only when this
backend is built. The classifier is a standardised logistic regression. alibi trains it on
``train_size`` of the pooled rows (or in ``n_folds`` stratified folds) and KS-tests the
held-out predicted probabilities of window rows against those of reference rows
(one-sided). With folds, alibi pools out-of-fold scores from different models into one test,
which is not exact; the native backend is (see ``classifier_native``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_drift.detectors.alibi_support import SeededRuns, import_alibi
from serve_drift.detectors.base import EmbeddingDetector
from serve_drift.detectors.validate import as_compute_dtype, check_window
from serve_drift.messages import DriftStatistic


class AlibiClassifier(EmbeddingDetector):
    """``alibi_detect.cd.ClassifierDrift(backend="sklearn")`` with a logistic regression.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = AlibiClassifier(rng.normal(size=(200, 4)))
    >>> detector.test(rng.normal(size=(100, 4)) + 2.0).p_value < 0.05
    True
    """

    name = "classifier"
    backend = "alibi"

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float = 0.05,
        train_size: float = 0.75,
        n_folds: int | None = None,
        seed: int | None = 0,
    ) -> None:
        # scikit-learn fits on the CPU whatever devices the machine has.
        super().__init__(reference, p_value_threshold=p_value_threshold, device="cpu")
        x_ref = as_compute_dtype(self.reference, dtype=np.float32, what="reference set")
        # alibi draws the train/test split from numpy's global generator.
        self._runs = SeededRuns(seed)
        self._detector = import_alibi("ClassifierDrift")(
            x_ref,
            model=_logistic_regression(),
            backend="sklearn",
            p_val=p_value_threshold,
            preds_type="probs",
            binarize_preds=False,
            train_size=None if n_folds else train_size,
            n_folds=n_folds,
            seed=0 if seed is None else seed,
        )

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """alibi's classifier test of ``window`` (M, d); ``probabilities`` are not used."""
        x = as_compute_dtype(check_window(window, dim=self.dim), dtype=np.float32, what="window")
        with self._runs.run():
            data = self._detector.predict(
                x, return_p_val=True, return_distance=True, return_probs=False, return_model=False
            )["data"]
        return DriftStatistic(
            p_value=float(data["p_val"]), distance=float(data["distance"]), distance_threshold=None
        )


def _logistic_regression() -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    # Standardised features and a Newton solver converge in a few iterations for embeddings
    # of a few hundred dimensions (lbfgs needed hundreds of slow iterations here).
    return make_pipeline(
        StandardScaler(), LogisticRegression(solver="newton-cholesky", max_iter=100)
    )
