"""Native BBSD: univariate Kolmogorov-Smirnov tests on the model's softmax outputs.

Black-box shift detection (Lipton et al. 2018) uses the deployed classifier itself as the
dimension reduction: each class's softmax probability is compared between the reference set and
the window with a two-sample KS test, and the C tests are combined with a Bonferroni
correction. "Failing Loudly" (Rabanser et al. 2019) found it the best single method on image
shifts. p-values are scipy's exact KS distribution where it is tractable and the asymptotic one
otherwise (alibi-detect always uses the asymptotic one).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from serve_drift.detectors.base import ProbabilityDetector
from serve_drift.messages import DriftStatistic


class NativeBBSD(ProbabilityDetector):
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

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """KS-test every class's probabilities; ``window`` (the embeddings) only sets the rows."""
        probs = self.window_probabilities(window, probabilities)
        reference = self.reference_probabilities
        results = [
            stats.ks_2samp(reference[:, c], probs[:, c], method="auto")
            for c in range(self.num_classes)
        ]
        p_values = np.array([r.pvalue for r in results])
        return DriftStatistic(
            p_value=self.bonferroni(p_values),
            distance=float(max(r.statistic for r in results)),
            distance_threshold=None,
        )
