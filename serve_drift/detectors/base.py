"""The small interface every drift detector implements, and the typed extras some return."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from serve_drift._results import DriftStatistic


class DetectorInputError(ValueError):
    """A window or reference set a detector cannot test (too small, wrong shape, non-finite)."""

    code = "detector_input_invalid"


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


@dataclass(frozen=True)
class ComponentStatistic:
    """One test inside a combined detector: its own (uncorrected) p-value and statistic."""

    name: str
    p_value: float
    statistic: float


@dataclass(frozen=True)
class CombinedStatistic(DriftStatistic):
    """A combined detector's result: ``p_value`` is corrected for testing several components.

    ``components`` holds each component's marginal p-value, for explaining an alarm; compare
    only ``p_value`` with the threshold. ``skipped`` names components that could not run on
    this window (e.g. ``confidence`` without softmax probabilities).
    """

    components: tuple[ComponentStatistic, ...] = ()
    skipped: tuple[str, ...] = ()


@dataclass(frozen=True)
class OnlineStatistic(DriftStatistic):
    """A streaming detector's result: the step of the first detection in the window, if any."""

    detected_at: int | None = None
    expected_run_time: float = 0.0
