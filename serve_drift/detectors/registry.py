"""Build a detector from its config; backends are imported only when chosen."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from serve_drift.config import KIND_BACKENDS, DetectorConfig
from serve_drift.detectors.base import DriftDetector

# Valid backends per detector kind, in the order the README documents them (the first is the
# kind's default).
BACKENDS: Mapping[str, tuple[str, ...]] = KIND_BACKENDS

Builder = Callable[[DetectorConfig, np.ndarray, Any], DriftDetector]


def build_detector(
    config: DetectorConfig, *, reference: Any, reference_probabilities: Any | None = None
) -> DriftDetector:
    """Build the detector ``config`` describes, fitted to ``reference`` (N, d).

    ``reference_probabilities`` (N, C) are the model's softmax outputs on the reference
    images; BBSD needs them, the combined detector uses them for its confidence component.
    Raises ``ValueError`` naming the valid options for an unknown kind or backend, and
    :class:`~serve_drift.detectors.base.DetectorInputError` for an unusable reference set.

    >>> import numpy as np
    >>> reference = np.random.default_rng(0).normal(size=(50, 8))
    >>> build_detector(DetectorConfig(backend="native", device="cpu"), reference=reference).backend
    'native'
    """
    builder = _builder(kind=config.kind, backend=config.resolved_backend)
    if config.reduction is None:
        return builder(config, reference, reference_probabilities)
    from serve_drift.detectors.reduction import ReducedDetector, fit_reduction

    reduction = fit_reduction(config.reduction, reference=reference)
    inner = builder(config, reduction.transform(reference), reference_probabilities)
    return ReducedDetector(inner, reduction)


def _builder(*, kind: str, backend: str) -> Builder:
    if kind not in BACKENDS:
        raise ValueError(f"unknown detector kind {kind!r}; valid kinds: {', '.join(BACKENDS)}")
    if backend not in BACKENDS[kind]:
        valid = ", ".join(BACKENDS[kind])
        raise ValueError(
            f"unknown backend {backend!r} for detector kind {kind!r}; valid backends: {valid}"
        )
    return _BUILDERS[(kind, backend)]


def _permutation_test(config: DetectorConfig) -> dict[str, Any]:
    """The arguments every permutation-test detector takes, from its config."""
    return {
        "p_value_threshold": config.p_value_threshold,
        "n_permutations": config.resolved_n_permutations,
        "device": config.device,
        "seed": config.seed,
    }


def _native_mmd(config: DetectorConfig, reference: np.ndarray, _: Any) -> DriftDetector:
    from serve_drift.detectors.mmd_native import NativeMMD

    return NativeMMD(reference, **_permutation_test(config))


def _alibi_mmd(config: DetectorConfig, reference: np.ndarray, _: Any) -> DriftDetector:
    # Deferred: importing alibi-detect takes seconds and it is only needed for this backend.
    from serve_drift.detectors.mmd_alibi import AlibiMMD

    return AlibiMMD(reference, **_permutation_test(config))


def _native_classifier(config: DetectorConfig, reference: np.ndarray, _: Any) -> DriftDetector:
    from serve_drift.detectors.classifier_native import NativeClassifier

    return NativeClassifier(reference, ridge=config.ridge, **_permutation_test(config))


def _alibi_classifier(config: DetectorConfig, reference: np.ndarray, _: Any) -> DriftDetector:
    from serve_drift.detectors.classifier_alibi import AlibiClassifier

    return AlibiClassifier(
        reference,
        p_value_threshold=config.p_value_threshold,
        train_size=config.train_size,
        n_folds=config.n_folds,
        seed=config.seed,
    )


def _native_bbsd(config: DetectorConfig, _: np.ndarray, probabilities: Any) -> DriftDetector:
    from serve_drift.detectors.bbsd import NativeBBSD

    return NativeBBSD(
        reference_probabilities=probabilities, p_value_threshold=config.p_value_threshold
    )


def _alibi_bbsd(config: DetectorConfig, _: np.ndarray, probabilities: Any) -> DriftDetector:
    from serve_drift.detectors.bbsd_alibi import AlibiBBSD

    return AlibiBBSD(
        reference_probabilities=probabilities, p_value_threshold=config.p_value_threshold
    )


def _alibi_online_mmd(config: DetectorConfig, reference: np.ndarray, _: Any) -> DriftDetector:
    from serve_drift.detectors.mmd_online_alibi import AlibiOnlineMMD

    return AlibiOnlineMMD(
        reference,
        p_value_threshold=config.p_value_threshold,
        ert=config.ert,
        online_window_size=config.online_window_size,
        n_bootstraps=config.n_bootstraps,
        device=config.device,
        seed=config.seed,
    )


def _native_combined(
    config: DetectorConfig, reference: np.ndarray, probabilities: Any
) -> DriftDetector:
    from serve_drift.detectors.combined import CombinedDetector

    return CombinedDetector(
        reference,
        reference_probabilities=probabilities,
        components=config.components,
        ridge=config.ridge,
        **_permutation_test(config),
    )


_BUILDERS: Mapping[tuple[str, str], Builder] = {
    ("mmd", "native"): _native_mmd,
    ("mmd", "alibi"): _alibi_mmd,
    ("classifier", "native"): _native_classifier,
    ("classifier", "alibi"): _alibi_classifier,
    ("bbsd", "native"): _native_bbsd,
    ("bbsd", "alibi"): _alibi_bbsd,
    ("mmd_online", "alibi"): _alibi_online_mmd,
    ("combined", "native"): _native_combined,
}
