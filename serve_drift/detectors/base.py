"""The small interface every drift detector implements, and the opening they all share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from serve_drift.detectors.device import resolve_device
from serve_drift.detectors.validate import (
    MIN_WINDOW_ROWS,
    DetectorInputError,
    check_probabilities,
    check_reference,
    require_probabilities,
)
from serve_drift.messages import DriftStatistic

__all__ = [
    "DetectorInputError",
    "DriftDetector",
    "EmbeddingDetector",
    "OnlineStatistic",
    "PermutationDetector",
    "ProbabilityDetector",
]


@runtime_checkable
class DriftDetector(Protocol):
    """A two-sample test of a window against a fixed reference set.

    Implementations are built with the reference set (its embeddings and, for the detectors
    that use them, the model's softmax probabilities) and reused for every window.
    ``test`` receives the window's embeddings ``(M, d)`` and, keyword-only, its softmax
    probabilities ``(M, C)`` or ``None`` when the replica did not send them. Detectors that
    need probabilities raise :class:`DetectorInputError` without them; the others ignore them.
    ``test`` must never return a p-value of exactly 0 (except alibi-detect's own, reported as
    alibi computes it) and must raise :class:`DetectorInputError`, not return a false alarm,
    for unusable input.
    """

    name: str
    backend: str

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic: ...


def _check_threshold(p_value_threshold: float) -> float:
    if not 0 < p_value_threshold < 1:
        raise ValueError(f"p_value_threshold must be in (0, 1), got {p_value_threshold}")
    return p_value_threshold


class EmbeddingDetector:
    """The opening of every detector of embeddings: a threshold, a device, a checked reference.

    ``reference`` is kept as the checked 2-D float array; subclasses turn it into what they
    compute with (a tensor on ``device``, a float32 copy for alibi-detect).
    """

    name: str
    backend: str

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float,
        device: str | torch.device | None = None,
    ) -> None:
        self.p_value_threshold = _check_threshold(p_value_threshold)
        self.device = resolve_device(device)
        self.reference = check_reference(reference)

    @property
    def reference_size(self) -> int:
        return int(self.reference.shape[0])

    @property
    def dim(self) -> int:
        return int(self.reference.shape[1])


class PermutationDetector(EmbeddingDetector):
    """An embedding detector whose p-value comes from ``n_permutations`` random splits."""

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float,
        n_permutations: int,
        device: str | torch.device | None = None,
    ) -> None:
        if n_permutations < 1:
            raise ValueError(f"n_permutations must be at least 1, got {n_permutations}")
        super().__init__(reference, p_value_threshold=p_value_threshold, device=device)
        self.n_permutations = n_permutations


class ProbabilityDetector:
    """The opening of detectors of softmax outputs (BBSD): a threshold and the reference's."""

    name: str
    backend: str

    def __init__(self, *, reference_probabilities: Any, p_value_threshold: float = 0.05) -> None:
        if reference_probabilities is None:
            raise DetectorInputError(
                f"the {self.name} detector needs the reference set's softmax probabilities; "
                "build the reference with `serve-drift reference build` to include them"
            )
        self.p_value_threshold = _check_threshold(p_value_threshold)
        self.reference_probabilities = check_probabilities(
            reference_probabilities, rows=None, what="reference set"
        )

    @property
    def num_classes(self) -> int:
        return int(self.reference_probabilities.shape[1])

    def window_probabilities(self, window: Any, probabilities: Any) -> np.ndarray:
        """The window's checked probabilities; ``window`` (its embeddings) only sets the rows."""
        return require_probabilities(
            probabilities, rows=_rows(window), classes=self.num_classes, detector=self.name
        )

    def bonferroni(self, p_values: np.ndarray) -> float:
        """One p-value for the ``num_classes`` tests: ``min(1, C · min_c p_c)``."""
        return float(min(1.0, self.num_classes * p_values.min()))


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


@dataclass(frozen=True)
class OnlineStatistic(DriftStatistic):
    """A streaming detector's result: the step of the first detection in the window, if any."""

    detected_at: int | None = None
    expected_run_time: float = 0.0
