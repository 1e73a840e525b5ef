"""alibi-detect's ``KSDrift`` on softmax probabilities: BBSD as alibi-detect documents it.

alibi-detect is licensed under the Business Source License 1.1; it is imported only when this
backend is built. alibi uses asymptotic KS p-values and a Bonferroni threshold ``alpha / C``; we
report the Bonferroni-adjusted ``min(1, C · min_c p_c)``, which crosses alpha exactly when alibi
flags drift.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_drift._results import DriftStatistic
from serve_drift.detectors._alibi import import_alibi
from serve_drift.detectors._validate import check_probabilities, require_probabilities
from serve_drift.detectors.base import DetectorInputError
from serve_drift.detectors.bbsd import _rows


class AlibiBBSD:
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
        if reference_probabilities is None:
            raise DetectorInputError(
                "the bbsd detector needs the reference set's softmax probabilities; "
                "build the reference with `serve-drift reference build` to include them"
            )
        reference = check_probabilities(reference_probabilities, rows=None, what="reference set")
        self.p_value_threshold = p_value_threshold
        self.num_classes = int(reference.shape[1])
        self._detector = import_alibi("KSDrift")(
            reference.astype(np.float32), p_val=p_value_threshold, correction="bonferroni"
        )

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        probs = require_probabilities(
            probabilities, rows=_rows(window), classes=self.num_classes, detector="bbsd"
        )
        data = self._detector.predict(
            probs.astype(np.float32), return_p_val=True, return_distance=True
        )["data"]
        p_values = np.asarray(data["p_val"], dtype=np.float64)
        return DriftStatistic(
            p_value=float(min(1.0, self.num_classes * p_values.min())),
            distance=float(np.max(data["distance"])),
            distance_threshold=None,
        )
