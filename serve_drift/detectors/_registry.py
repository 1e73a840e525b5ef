"""Build a detector from its config; backends are imported only when chosen."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import numpy as np

from serve_drift._config import DetectorConfig
from serve_drift.detectors.base import DriftDetector

# Valid backends per detector kind, in the order the README documents them.
BACKENDS: Mapping[str, tuple[str, ...]] = MappingProxyType({"mmd": ("alibi", "native")})


def build_detector(config: DetectorConfig, *, reference: np.ndarray) -> DriftDetector:
    """Build the detector ``config`` describes, fitted to ``reference`` (N, d).

    Raises ``ValueError`` naming the valid options for an unknown kind or backend, and
    :class:`~serve_drift.detectors.base.DetectorInputError` for an unusable reference set.

    >>> import numpy as np
    >>> reference = np.random.default_rng(0).normal(size=(50, 8))
    >>> build_detector(DetectorConfig(backend="native", device="cpu"), reference=reference).backend
    'native'
    """
    return _builder(kind=config.kind, backend=config.backend)(config, reference)


def _builder(*, kind: str, backend: str) -> Callable[[DetectorConfig, np.ndarray], DriftDetector]:
    if kind not in BACKENDS:
        raise ValueError(f"unknown detector kind {kind!r}; valid kinds: {', '.join(BACKENDS)}")
    if backend not in BACKENDS[kind]:
        valid = ", ".join(BACKENDS[kind])
        raise ValueError(
            f"unknown backend {backend!r} for detector kind {kind!r}; valid backends: {valid}"
        )
    return _BUILDERS[(kind, backend)]


def _build_native_mmd(config: DetectorConfig, reference: np.ndarray) -> DriftDetector:
    from serve_drift.detectors.mmd_native import NativeMMD

    return NativeMMD(
        reference,
        p_value_threshold=config.p_value_threshold,
        n_permutations=config.n_permutations,
        device=config.device,
        seed=config.seed,
    )


def _build_alibi_mmd(config: DetectorConfig, reference: np.ndarray) -> DriftDetector:
    # Deferred: importing alibi-detect takes seconds and it is only needed for this backend.
    from serve_drift.detectors.mmd_alibi import AlibiMMD

    return AlibiMMD(
        reference,
        p_value_threshold=config.p_value_threshold,
        n_permutations=config.n_permutations,
        device=config.device,
        seed=config.seed,
    )


_BUILDERS: Mapping[tuple[str, str], Callable[[DetectorConfig, np.ndarray], DriftDetector]] = {
    ("mmd", "native"): _build_native_mmd,
    ("mmd", "alibi"): _build_alibi_mmd,
}
