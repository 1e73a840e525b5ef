"""The small interface every drift detector implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

from serve_drift._results import DriftStatistic


class DetectorInputError(ValueError):
    """A window or reference set a detector cannot test (too small, wrong shape, non-finite)."""

    code = "detector_input_invalid"


@runtime_checkable
class DriftDetector(Protocol):
    """A two-sample test of a window of embeddings against a fixed reference set.

    Implementations are built with the reference set and are reused for every window.
    ``test`` must never return a p-value of exactly 0 and must raise
    :class:`DetectorInputError` (not return a false alarm) for unusable input.
    """

    name: str
    backend: str

    def test(self, window: np.ndarray) -> DriftStatistic: ...
