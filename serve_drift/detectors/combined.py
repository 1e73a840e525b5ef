"""The default detector: several tests of one window, combined with an exact correction.

No single test catches every shift. On the digits benchmark (``benchmarks/detection_power.py``)
a test on the embeddings misses pixel noise, which mostly lowers the model's confidence, and a
test on the softmax outputs misses brightness changes, which move the embeddings but hardly the
predictions. This detector runs, on the same window:

- ``classifier``: the linear-discriminant two-sample test on the embeddings
  (:mod:`serve_drift.detectors.classifier_native`);
- ``confidence``: a one-sided rank test that the window's top-class softmax probability is
  lower than the reference's (needs the model's probabilities; skipped without them);
- optionally ``mmd``: the Gaussian-kernel MMD² on the embeddings.

**The correction.** Each component yields a permutation p-value, and the combined p-value is
that of the smallest one (Tippett's combination), calibrated on the *same* permutations: for
each of the P + 1 splits (observed first) every component's p-value is computed among all
P + 1 values of its statistic, and the combined p-value is the fraction of splits whose
smallest component p-value is at most the observed one. This is Westfall and Young's min-p
adjustment: an exact level-alpha test of "no component differs" under any dependence between the
components, and less conservative than Bonferroni (which would halve alpha for two components)
because it accounts for their correlation. p ≥ 1/(P + 1), never 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from scipy import stats

from serve_drift.detectors import mmd_native
from serve_drift.detectors import permutation as perm
from serve_drift.detectors.base import DetectorInputError, PermutationDetector
from serve_drift.detectors.classifier_native import discriminant_statistics
from serve_drift.detectors.validate import (
    as_compute_dtype,
    check_probabilities,
    check_window,
)
from serve_drift.messages import ComponentStatistic, DriftStatistic

COMPONENTS = ("classifier", "confidence", "mmd")
DEFAULT_COMPONENTS = ("classifier", "confidence")


class CombinedDetector(PermutationDetector):
    """Min-p combination of the ``components`` over shared permutations (see the module doc).

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> probs = rng.dirichlet(np.ones(3) * 0.3, size=200)
    >>> detector = CombinedDetector(
    ...     rng.normal(size=(200, 4)), reference_probabilities=probs, device="cpu")
    >>> result = detector.test(rng.normal(size=(50, 4)) + 1.0, probabilities=probs[:50])
    >>> [c.name for c in result.components], result.p_value < 0.05
    (['classifier', 'confidence'], True)
    """

    name = "combined"
    backend = "native"

    def __init__(
        self,
        reference: Any,
        *,
        reference_probabilities: Any | None = None,
        components: Sequence[str] = DEFAULT_COMPONENTS,
        p_value_threshold: float = 0.05,
        n_permutations: int = 500,
        ridge: float = 0.01,
        device: str | torch.device | None = None,
        seed: int | None = 0,
    ) -> None:
        super().__init__(
            reference,
            p_value_threshold=p_value_threshold,
            n_permutations=n_permutations,
            device=device,
        )
        self.components = _check_components(components)
        self.ridge = ridge
        self._x_ref = _tensor(self.reference, what="reference set", device=self.device)
        self._confidence_ref = _reference_confidence(
            reference_probabilities, rows=self.reference_size
        )
        self._mmd = (
            mmd_native.NativeMMD(self.reference, n_permutations=1, device=self.device)
            if "mmd" in self.components
            else None
        )
        self._generator = perm.make_generator(seed=seed, device=self.device)

    @property
    def num_classes(self) -> int | None:
        return None if self._confidence_ref is None else self._confidence_ref[1]

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """Run the components on ``window`` (M, d) and its softmax ``probabilities`` (M, C)."""
        y = _tensor(check_window(window, dim=self.dim), what="window", device=self.device)
        confidence = self._pooled_confidence(probabilities, rows=int(y.shape[0]))
        active = [c for c in self.components if c != "confidence" or confidence is not None]
        skipped = tuple(c for c in self.components if c not in active)
        if not active:
            raise DetectorInputError(
                f"none of the combined detector's components {self.components} can run: "
                "the confidence test needs softmax probabilities for the reference and window"
            )
        n, m = int(self._x_ref.shape[0]), int(y.shape[0])
        sides = perm.window_sides(
            self.n_permutations, n=n, m=m, generator=self._generator, device=self.device
        )
        statistics = {name: self._statistics(name, y, sides, confidence) for name in active}
        return _combine(statistics, skipped=skipped)

    def _statistics(
        self, name: str, y: torch.Tensor, sides: torch.Tensor, confidence: torch.Tensor | None
    ) -> torch.Tensor:
        n, m = int(self._x_ref.shape[0]), int(y.shape[0])
        if name == "classifier":
            weights = perm.mean_difference_weights(sides, n=n, m=m)
            return discriminant_statistics(
                torch.cat([self._x_ref, y]), weights=weights, ridge=self.ridge
            )
        if name == "confidence":
            assert confidence is not None
            # Mean rank of the reference minus that of the window: large when the window is
            # less confident. One-sided on purpose: lower confidence is the harmful direction,
            # and shifts that raise it move the embeddings, which the classifier component sees.
            return perm.mean_difference_weights(sides, n=n, m=m) @ confidence
        assert self._mmd is not None
        return _mmd_statistics(self._mmd, y, sides)

    def _pooled_confidence(self, probabilities: Any, *, rows: int) -> torch.Tensor | None:
        """Ranks (ties averaged) of the pooled top-class probabilities, or ``None``."""
        if "confidence" not in self.components or probabilities is None:
            return None
        if self._confidence_ref is None:
            return None
        window = check_probabilities(probabilities, rows=rows, what="window")
        reference, classes = self._confidence_ref
        if window.shape[1] != classes:
            raise DetectorInputError(
                f"window has {window.shape[1]} classes of probabilities, the reference set has "
                f"{classes}"
            )
        pooled = np.concatenate([reference, window.max(axis=1)])
        ranks = stats.rankdata(pooled)
        return torch.as_tensor(ranks, dtype=perm.DTYPE, device=self.device)


def _combine(statistics: dict[str, torch.Tensor], *, skipped: tuple[str, ...]) -> DriftStatistic:
    """Tippett's min-p over components, calibrated on the shared permutations."""
    total = next(iter(statistics.values())).numel()
    per_split = {name: perm.exceed_counts(values) for name, values in statistics.items()}
    smallest = torch.stack(list(per_split.values())).min(dim=0).values
    # Counts are integers: a split is at least as extreme when its smallest count is <=.
    combined = float((smallest <= smallest[0]).sum()) / total
    components = tuple(
        ComponentStatistic(
            name=name,
            p_value=float(per_split[name][0]) / total,
            statistic=float(values[0]),
        )
        for name, values in statistics.items()
    )
    return DriftStatistic(
        p_value=combined,
        distance=components[0].statistic,
        distance_threshold=None,
        components=components,
        skipped=skipped,
    )


def _mmd_statistics(
    mmd: mmd_native.NativeMMD, y: torch.Tensor, sides: torch.Tensor
) -> torch.Tensor:
    """Unbiased MMD² of every split, from the detector's cached reference block."""
    return mmd.split_mmd2(y, mmd.sides(sides, m=int(y.shape[0])))


def _check_components(components: Sequence[str]) -> tuple[str, ...]:
    chosen = tuple(components)
    unknown = [c for c in chosen if c not in COMPONENTS]
    if unknown or not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"combined components must be distinct and non-empty, from {', '.join(COMPONENTS)}; "
            f"got {chosen}"
        )
    return chosen


def _reference_confidence(probabilities: Any, *, rows: int) -> tuple[np.ndarray, int] | None:
    if probabilities is None:
        return None
    array = check_probabilities(probabilities, rows=rows, what="reference set")
    return array.max(axis=1).astype(np.float64), int(array.shape[1])


def _tensor(array: np.ndarray, *, what: str, device: torch.device) -> torch.Tensor:
    compute = as_compute_dtype(array, dtype=np.float64, what=what)
    return torch.as_tensor(compute, dtype=perm.DTYPE, device=device)
