"""Native BBSD: univariate Kolmogorov-Smirnov tests on the model's softmax outputs.

Black-box shift detection (Lipton et al. 2018) uses the deployed classifier itself as the
dimension reduction: each class's softmax probability is compared between the reference set and
the window with a two-sample KS test, and the C tests are combined with a Bonferroni
correction. "Failing Loudly" (Rabanser et al. 2019) found it the best single method on image
shifts. p-values are scipy's exact KS distribution where it is tractable and the asymptotic one
otherwise (alibi-detect always uses the asymptotic one).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

from serve_drift._results import DriftStatistic
from serve_drift.detectors._validate import (
    MIN_WINDOW_ROWS,
    check_probabilities,
    require_probabilities,
)
from serve_drift.detectors.base import DetectorInputError


class NativeBBSD:
    """KS test per softmax class, Bonferroni-corrected: ``p = min(1, C · min_c p_c)``.

    ``distance`` is the largest KS statistic over the classes. Deterministic: no seed.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> reference = rng.dirichlet([1.0, 1.0, 1.0], size=300)
    >>> detector = NativeBBSD(reference_probabilities=reference)
    >>> shifted = rng.dirichlet([5.0, 1.0, 1.0], size=100)
    >>> detector.test(np.zeros((100, 4)), probabilities=shifted).p_value < 0.001
    True
    """

    name = "bbsd"
    backend = "native"

    def __init__(self, *, reference_probabilities: Any, p_value_threshold: float = 0.05) -> None:
        if reference_probabilities is None:
            raise DetectorInputError(
                "the bbsd detector needs the reference set's softmax probabilities; "
                "build the reference with `serve-drift reference build` to include them"
            )
        self.p_value_threshold = p_value_threshold
        self._reference = check_probabilities(
            reference_probabilities, rows=None, what="reference set"
        )

    @property
    def num_classes(self) -> int:
        return int(self._reference.shape[1])

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """KS-test every class's probabilities; ``window`` (the embeddings) only sets the rows."""
        rows = _rows(window)
        probs = require_probabilities(
            probabilities, rows=rows, classes=self.num_classes, detector="bbsd"
        )
        results = [
            stats.ks_2samp(self._reference[:, c], probs[:, c], method="auto")
            for c in range(self.num_classes)
        ]
        p_values = np.array([r.pvalue for r in results])
        return DriftStatistic(
            p_value=float(min(1.0, self.num_classes * p_values.min())),
            distance=float(max(r.statistic for r in results)),
            distance_threshold=None,
        )


def _rows(window: Any) -> int:
    shape = np.shape(window)
    if len(shape) != 2:
        raise DetectorInputError(
            f"window must be a 2-D array (rows, embedding_dim), got shape {shape}"
        )
    if shape[0] < MIN_WINDOW_ROWS:
        raise DetectorInputError(
            f"window has {shape[0]} rows, at least {MIN_WINDOW_ROWS} are needed"
        )
    return int(shape[0])
