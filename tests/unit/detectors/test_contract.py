"""Contract suite: every detector (kind x backend), built from config, behaves the same way.

No drift on samples from the reference distribution, drift on clearly shifted samples, seeded
determinism, clear errors on bad input. Embeddings are 8-d Gaussians; "softmax outputs" come
from a fixed linear head on them, so a shift of the embeddings moves the probabilities too.
No Ray here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from serve_drift.config import KIND_BACKENDS, DetectorConfig
from serve_drift.detectors import DetectorInputError, DriftDetector, build_detector
from serve_drift.messages import DriftStatistic

DIM, CLASSES = 8, 4
HEAD = np.random.default_rng(99).normal(size=(DIM, CLASSES)) * 1.5
PAIRS = [(kind, backend) for kind, backends in KIND_BACKENDS.items() for backend in backends]
# Small, fast settings; the online detector gets a short ERT so that its thresholds configure
# in about a second (an alarm in the first 5 rows of a window is then significant at 5 %).
SETTINGS: dict[str, dict[str, Any]] = {
    "mmd_online": {"ert": 100, "online_window_size": 5, "n_bootstraps": 1000},
    "combined": {"n_permutations": 200},
}


def softmax(embeddings: np.ndarray) -> np.ndarray:
    logits = embeddings @ HEAD
    logits -= logits.max(axis=1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=1, keepdims=True)


def sample(seed: int, *, rows: int, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    x = np.random.default_rng(seed).normal(loc=shift, size=(rows, DIM)).astype(np.float32)
    return x, softmax(x.astype(np.float64))


def config(kind: str, backend: str, **extra: Any) -> DetectorConfig:
    fields = {"kind": kind, "backend": backend, "device": "cpu", **SETTINGS.get(kind, {})}
    return DetectorConfig.model_validate({**fields, **extra})


@pytest.fixture(scope="module")
def reference() -> tuple[np.ndarray, np.ndarray]:
    return sample(10_000, rows=150)


@pytest.fixture(scope="module")
def detectors(reference: tuple[np.ndarray, np.ndarray]) -> dict[tuple[str, str], DriftDetector]:
    """One detector per pair, built once: building alibi's online MMD takes a second."""
    x, p = reference
    return {
        pair: build_detector(config(*pair), reference=x, reference_probabilities=p)
        for pair in PAIRS
    }


def test_every_kind_and_backend_is_covered() -> None:
    assert {kind for kind, _ in PAIRS} == {"mmd", "classifier", "bbsd", "mmd_online", "combined"}
    assert len(PAIRS) == 8


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_builds_a_drift_detector(
    pair: tuple[str, str], detectors: dict[tuple[str, str], DriftDetector]
) -> None:
    detector = detectors[pair]
    assert isinstance(detector, DriftDetector)
    assert (detector.name, detector.backend) == pair
    x, p = sample(1, rows=50)
    result = detector.test(x, probabilities=p)
    assert isinstance(result, DriftStatistic)
    assert 0.0 <= result.p_value <= 1.0 and np.isfinite(result.distance)


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_no_drift_on_the_reference_distribution(
    pair: tuple[str, str], detectors: dict[tuple[str, str], DriftDetector]
) -> None:
    detector = detectors[pair]
    windows = [sample(seed, rows=50) for seed in range(20)]
    p_values = [detector.test(x, probabilities=p).p_value for x, p in windows]
    # 20 tests at 5 % expect one false alarm; P(>= 5) is about 0.003 for a valid test, and the
    # seeds are fixed, so this cannot flake but still fails for a broken statistic.
    assert sum(p < 0.05 for p in p_values) <= 4


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_drift_on_shifted_samples(
    pair: tuple[str, str], detectors: dict[tuple[str, str], DriftDetector]
) -> None:
    detector = detectors[pair]
    windows = [sample(seed, rows=50, shift=1.0) for seed in range(5)]
    assert all(detector.test(x, probabilities=p).p_value < 0.05 for x, p in windows)


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_seeded_results_are_reproducible(
    pair: tuple[str, str], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    x_ref, p_ref = reference
    windows = [sample(seed, rows=30, shift=0.2) for seed in range(3)]

    def run() -> list[DriftStatistic]:
        detector = build_detector(
            config(*pair, seed=7), reference=x_ref, reference_probabilities=p_ref
        )
        return [detector.test(x, probabilities=p) for x, p in windows]

    assert run() == run()


BAD_WINDOWS = {
    "non-finite": (
        lambda x: np.where(np.arange(x.size).reshape(x.shape) == 17, np.nan, x),
        "NaN or infinite",
    ),
    "too-small": (lambda x: x[:9], "9 rows, at least 10"),
    "1-d": (lambda x: x[0], "2-D"),
}


@pytest.mark.parametrize("bad", list(BAD_WINDOWS))
@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_unusable_window_is_refused_not_alarmed(
    pair: tuple[str, str], bad: str, detectors: dict[tuple[str, str], DriftDetector]
) -> None:
    make, message = BAD_WINDOWS[bad]
    x, p = sample(1, rows=30)
    window = make(x.astype(np.float64))
    if bad == "non-finite" and pair[0] == "bbsd":
        # BBSD tests the probabilities, not the embeddings: poison those instead.
        p = p.copy()
        p[3, 1] = np.nan
        window = x
    probabilities = p[: len(window)] if np.ndim(window) == 2 else p
    with pytest.raises(DetectorInputError, match=message):
        detectors[pair].test(window, probabilities=probabilities)


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_wrong_dimension_is_refused(
    pair: tuple[str, str], detectors: dict[tuple[str, str], DriftDetector]
) -> None:
    x, p = sample(1, rows=30)
    if pair[0] == "bbsd":  # its input is the probabilities
        with pytest.raises(DetectorInputError, match="classes"):
            detectors[pair].test(x, probabilities=p[:, :3] / p[:, :3].sum(1, keepdims=True))
        return
    wide = np.hstack([x, x[:, :1]])
    with pytest.raises(DetectorInputError, match="dimension 9, the reference set has 8"):
        detectors[pair].test(wide, probabilities=p)


@pytest.mark.parametrize("pair", [p for p in PAIRS if p[0] == "bbsd"], ids="/".join)
def test_bbsd_needs_probabilities(
    pair: tuple[str, str],
    detectors: dict[tuple[str, str], DriftDetector],
    reference: tuple[np.ndarray, np.ndarray],
) -> None:
    x, _ = sample(1, rows=30)
    with pytest.raises(DetectorInputError, match="softmax probabilities"):
        detectors[pair].test(x)
    with pytest.raises(DetectorInputError, match="reference set's softmax probabilities"):
        build_detector(config(*pair), reference=reference[0])


@pytest.mark.parametrize("pair", PAIRS, ids="/".join)
def test_unusable_reference_is_refused(
    pair: tuple[str, str], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    x, p = reference
    with pytest.raises(DetectorInputError, match=r"5 rows|at least"):
        build_detector(config(*pair), reference=x[:5], reference_probabilities=p[:5])


@pytest.mark.parametrize("pair", [p for p in PAIRS if p[0] in ("mmd", "classifier")], ids="/".join)
def test_dimension_reduction_wraps_any_embedding_detector(
    pair: tuple[str, str], reference: tuple[np.ndarray, np.ndarray]
) -> None:
    x_ref, _ = reference
    for method in ("pca", "random_projection"):
        detector = build_detector(
            config(*pair, reduction={"method": method, "dim": 3}), reference=x_ref
        )
        assert (detector.name, detector.backend) == pair
        assert detector.test(sample(3, rows=50, shift=1.0)[0]).p_value < 0.05
        with pytest.raises(DetectorInputError, match="dimension 9"):
            detector.test(np.ones((20, 9)))
