"""Dimension reduction fitted on the reference set: PCA or a Gaussian random projection to k dims.

Reducing 512- or 2048-d embeddings to a few dozen dimensions makes kernel tests cheaper and,
for MMD with a median-heuristic bandwidth, often more powerful (distances in high dimension
concentrate). The reduction is fitted once on the reference set and applied to the reference and
to every window before the wrapped detector sees them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_drift.config import ReductionConfig
from serve_drift.detectors.base import DriftDetector
from serve_drift.detectors.validate import check_reference, check_window
from serve_drift.messages import DriftStatistic


@dataclass(frozen=True, eq=False)
class LinearReduction:
    """``(x - mean) @ projection``: PCA components or a random projection, (d, k)."""

    method: str
    mean: np.ndarray
    projection: np.ndarray

    @property
    def input_dim(self) -> int:
        return int(self.projection.shape[0])

    @property
    def output_dim(self) -> int:
        return int(self.projection.shape[1])

    def transform(self, rows: np.ndarray) -> np.ndarray:
        return (np.asarray(rows, dtype=np.float64) - self.mean) @ self.projection


def fit_reduction(config: ReductionConfig, *, reference: Any) -> LinearReduction:
    """Fit ``config`` on the reference embeddings (N, d).

    >>> import numpy as np
    >>> reference = np.random.default_rng(0).normal(size=(100, 16))
    >>> fit_reduction(ReductionConfig(method="pca", dim=4), reference=reference).output_dim
    4
    """
    x = check_reference(reference).astype(np.float64)
    rows, dim = x.shape
    limit = min(rows, dim) if config.method == "pca" else dim
    if config.dim > limit:
        raise ValueError(
            f"{config.method} to {config.dim} dimensions needs at most {limit} "
            f"(reference set: {rows} rows of dimension {dim})"
        )
    mean = x.mean(axis=0)
    if config.method == "pca":
        # Right singular vectors of the centred reference: its principal axes, largest first.
        _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
        return LinearReduction(method="pca", mean=mean, projection=vt[: config.dim].T.copy())
    rng = np.random.default_rng(config.seed)
    # Johnson-Lindenstrauss: Gaussian entries scaled by 1/sqrt(k) preserve distances on average.
    projection = rng.normal(size=(dim, config.dim)) / np.sqrt(config.dim)
    return LinearReduction(method="random_projection", mean=mean, projection=projection)


class ReducedDetector:
    """A detector that sees embeddings through a :class:`LinearReduction`.

    Windows are checked at their original dimension first, so errors name the real shape.
    """

    def __init__(self, detector: DriftDetector, reduction: LinearReduction) -> None:
        self.detector = detector
        self.reduction = reduction
        self.name = detector.name
        self.backend = detector.backend

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        rows = check_window(window, dim=self.reduction.input_dim)
        return self.detector.test(self.reduction.transform(rows), probabilities=probabilities)
