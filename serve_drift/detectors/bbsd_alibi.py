"""alibi-detect's ``KSDrift`` on softmax probabilities: BBSD as alibi-detect documents it.

alibi-detect is licensed under the Business Source License 1.1; it is imported only when this
backend is built. alibi uses asymptotic KS p-values and a Bonferroni threshold ``alpha / C``; we
report the Bonferroni-adjusted ``min(1, C · min_c p_c)``, which crosses alpha exactly when alibi
flags drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_drift.detectors.alibi_support import import_alibi
from serve_drift.detectors.base import ProbabilityDetector
from serve_drift.messages import DriftStatistic


class AlibiBBSD(ProbabilityDetector):
    """``alibi_detect.cd.KSDrift`` with Bonferroni correction, on the model's probabilities.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = AlibiBBSD(reference_probabilities=rng.dirichlet([1.0, 1.0], size=300))
    >>> shifted = rng.dirichlet([6.0, 1.0], size=100)
    >>> detector.test(np.zeros((100, 4)), probabilities=shifted).p_value < 0.001
    True
    """

    name = "bbsd"
    backend = "alibi"

    def __init__(self, *, reference_probabilities: Any, p_value_threshold: float = 0.05) -> None:
        super().__init__(
            reference_probabilities=reference_probabilities, p_value_threshold=p_value_threshold
        )
        self._detector = import_alibi("KSDrift")(
            self.reference_probabilities.astype(np.float32),
            p_val=p_value_threshold,
            correction="bonferroni",
        )

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        probs = self.window_probabilities(window, probabilities)
        data = self._detector.predict(
            probs.astype(np.float32), return_p_val=True, return_distance=True
        )["data"]
        p_values = np.asarray(data["p_val"], dtype=np.float64)
        return DriftStatistic(
            p_value=self.bonferroni(p_values),
            distance=float(np.max(data["distance"])),
            distance_threshold=None,
        )
