"""Native detectors in detail: blockwise MMD, the classifier test, the combined default, BBSD.

Seeded statistical tests assert behaviour (validity, agreement with alibi-detect), never exact
p-values. No Ray here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from serve_drift.config import DetectorConfig, default_detectors
from serve_drift.detectors import (
    DetectorInputError,
    build_detector,
    mmd_native,
)
from serve_drift.detectors import permutation as perm
from serve_drift.detectors.bbsd import NativeBBSD
from serve_drift.detectors.classifier_native import NativeClassifier
from serve_drift.detectors.combined import CombinedDetector
from serve_drift.detectors.mmd_native import NativeMMD
from serve_drift.messages import DriftStatistic
from tests.unit.detectors.test_contract import sample

# --- native MMD: blockwise -------------------------------------------------------------


@pytest.mark.parametrize("shift", [0.0, 0.5])
def test_blockwise_mmd_equals_the_cached_one(shift: float, monkeypatch: pytest.MonkeyPatch) -> None:
    reference, window = sample(0, rows=300)[0], sample(1, rows=60, shift=shift)[0]
    cached = NativeMMD(reference, sigma=2.0, device="cpu").test(window)
    # 8-row kernel blocks: the (360 x 360) matrix is never whole.
    monkeypatch.setattr(mmd_native, "_BLOCK_BYTES", 8 * 360 * 8)
    blockwise = NativeMMD(reference, sigma=2.0, device="cpu", max_cached_rows=100)
    assert blockwise.blockwise
    result = blockwise.test(window)
    assert result.distance == pytest.approx(cached.distance, rel=1e-10, abs=1e-14)
    assert result.p_value == cached.p_value  # the same permutations, drawn the same way


def test_blockwise_bandwidth_comes_from_a_sample_of_large_references(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = sample(0, rows=400)[0]
    monkeypatch.setattr(mmd_native, "_MEDIAN_ROWS", 200)
    exact = NativeMMD(reference, device="cpu").sigma
    sampled = NativeMMD(reference, device="cpu", max_cached_rows=100).sigma
    assert sampled != exact and sampled == pytest.approx(exact, rel=0.05)


def test_native_and_alibi_p_values_agree_in_distribution() -> None:
    """Same statistic; alibi's k/P against our (1 + k)/(1 + P), over 40 null windows."""
    reference = sample(0, rows=100)[0]
    native = build_detector(DetectorConfig(backend="native", device="cpu"), reference=reference)
    alibi = build_detector(DetectorConfig(backend="alibi", device="cpu"), reference=reference)
    windows = [sample(seed, rows=30)[0] for seed in range(1, 41)]
    ours = [native.test(w).p_value for w in windows]
    theirs = [alibi.test(w).p_value for w in windows]
    assert stats.ks_2samp(ours, theirs).pvalue > 0.05
    assert min(ours) > 0  # theirs may be exactly 0; ours never
    assert abs(np.mean(ours) - np.mean(theirs)) < 0.1


# --- native classifier test ---------------------------------------------------------------


def test_classifier_statistic_is_the_unbiased_regularised_mahalanobis_distance() -> None:
    x, y = sample(0, rows=40)[0].astype(np.float64), sample(1, rows=15, shift=0.3)[0]
    detector = NativeClassifier(x, n_permutations=10, ridge=0.1, device="cpu")
    pooled = np.vstack([x, y.astype(np.float64)])
    centred = pooled - pooled.mean(axis=0)
    cov = centred.T @ centred / len(pooled)
    a_inv = np.linalg.inv(cov + 0.1 * np.trace(cov) / cov.shape[0] * np.eye(cov.shape[0]))
    w = np.r_[np.full(40, 1 / 40), np.full(15, -1 / 15)]
    gram = centred @ a_inv @ centred.T
    np.fill_diagonal(gram, 0.0)  # unbiased: no row paired with itself
    assert detector.test(y).distance == pytest.approx(w @ gram @ w, rel=1e-9)


def test_classifier_p_values_are_uniform_without_drift() -> None:
    p_values = []
    for seed in range(150):
        rng = np.random.default_rng(seed)
        detector = NativeClassifier(
            rng.normal(size=(25, 3)), n_permutations=99, seed=seed, device="cpu"
        )
        p_values.append(detector.test(rng.normal(size=(12, 3))).p_value)
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert min(p_values) >= 1 / 100


def test_classifier_refuses_a_bad_ridge() -> None:
    with pytest.raises(ValueError, match="ridge"):
        NativeClassifier(sample(0, rows=20)[0], ridge=0.0, device="cpu")


def test_classifier_handles_identical_rows_without_alarm() -> None:
    detector = NativeClassifier(np.ones((20, 3)), n_permutations=20, device="cpu")
    assert detector.test(np.ones((10, 3))).p_value == 1.0


# --- the combined default -----------------------------------------------------------------


def test_the_default_is_the_combined_detector() -> None:
    (default,) = default_detectors()
    assert (default.kind, default.resolved_backend) == ("combined", "native")
    assert default.components == ("classifier", "confidence")
    assert default.resolved_n_permutations == 500


def test_combined_p_values_are_valid_and_never_zero() -> None:
    p_values = []
    for seed in range(120):
        (x, p), (y, q) = sample(seed, rows=30), sample(seed + 1000, rows=15)
        detector = CombinedDetector(
            x, reference_probabilities=p, n_permutations=99, seed=seed, device="cpu"
        )
        p_values.append(detector.test(y, probabilities=q).p_value)
    assert min(p_values) >= 1 / 100
    assert stats.kstest(p_values, "uniform").pvalue > 0.01


def test_combined_with_one_component_is_that_components_test() -> None:
    x, y = sample(0, rows=60)[0], sample(1, rows=20, shift=0.3)[0]
    combined = CombinedDetector(x, components=("classifier",), n_permutations=99, device="cpu")
    alone = NativeClassifier(x, n_permutations=99, device="cpu")
    result = combined.test(y)
    assert result.p_value == alone.test(y).p_value
    assert result.components[0].p_value == result.p_value


def test_combined_min_p_is_at_most_bonferroni_and_at_least_the_smallest_component() -> None:
    (x, p), (y, q) = sample(0, rows=80), sample(1, rows=30, shift=0.25)
    result = CombinedDetector(
        x,
        reference_probabilities=p,
        components=("classifier", "confidence", "mmd"),
        n_permutations=200,
        device="cpu",
    ).test(y, probabilities=q)
    smallest = min(c.p_value for c in result.components)
    assert smallest <= result.p_value <= min(1.0, 3 * smallest) + 1e-12
    assert [c.name for c in result.components] == ["classifier", "confidence", "mmd"]


def test_combined_mmd_component_matches_native_mmd() -> None:
    x, y = sample(0, rows=60)[0], sample(1, rows=20, shift=0.3)[0]
    result = CombinedDetector(x, components=("mmd",), n_permutations=20, device="cpu").test(y)
    assert result.components[0].statistic == pytest.approx(
        NativeMMD(x, device="cpu").test(y).distance, rel=1e-10
    )


def test_combined_skips_confidence_without_probabilities() -> None:
    (x, p), (y, _) = sample(0, rows=60), sample(1, rows=20, shift=1.0)
    detector = CombinedDetector(x, reference_probabilities=p, device="cpu")
    result = detector.test(y)
    assert isinstance(result, DriftStatistic)
    assert result.skipped == ("confidence",) and result.p_value < 0.05
    no_reference_probs = CombinedDetector(x, device="cpu").test(y, probabilities=p[:20])
    assert no_reference_probs.skipped == ("confidence",)
    only = CombinedDetector(x, components=("confidence",), device="cpu")
    with pytest.raises(DetectorInputError, match="none of the combined detector's components"):
        only.test(y)


def test_combined_catches_lower_confidence_the_embeddings_hide() -> None:
    """Same embeddings, flattened probabilities: only the confidence component sees it."""
    (x, p), (y, q) = sample(0, rows=200), sample(1, rows=50)
    flat = 0.5 * q + 0.5 / q.shape[1]  # less confident, same ranking of classes
    detector = CombinedDetector(x, reference_probabilities=p, device="cpu")
    result = detector.test(y, probabilities=flat)
    by_name = {c.name: c.p_value for c in result.components}
    assert result.p_value < 0.01 and by_name["classifier"] > 0.05


def test_combined_refuses_unknown_components_and_mismatched_classes() -> None:
    x, p = sample(0, rows=60)
    with pytest.raises(ValueError, match="components"):
        CombinedDetector(x, components=("lsdd",), device="cpu")
    with pytest.raises(ValueError, match="components"):
        DetectorConfig(kind="combined", components=("classifier", "classifier"))
    detector = CombinedDetector(x, reference_probabilities=p, device="cpu")
    with pytest.raises(DetectorInputError, match="classes"):
        detector.test(x[:20], probabilities=np.full((20, 3), 1 / 3))


def test_exceed_counts_treat_near_ties_as_exceeding() -> None:
    values = torch.tensor([1.0, 1.0 + 1e-14, 0.5, 2.0], dtype=torch.float64)
    assert perm.exceed_counts(values).tolist() == [3, 3, 4, 1]
    assert perm.p_value(values) == 3 / 4


# --- BBSD --------------------------------------------------------------------------------


def test_native_and_alibi_bbsd_agree() -> None:
    (_, p), (_, q) = sample(0, rows=300), sample(1, rows=100, shift=0.3)
    x = np.zeros((100, 8))
    native = build_detector(DetectorConfig(kind="bbsd"), reference=x, reference_probabilities=p)
    alibi = build_detector(
        DetectorConfig(kind="bbsd", backend="alibi"), reference=x, reference_probabilities=p
    )
    ours, theirs = native.test(x, probabilities=q), alibi.test(x, probabilities=q)
    assert ours.distance == pytest.approx(theirs.distance, abs=1e-6)  # the largest KS statistic
    # Exact (ours) and asymptotic (alibi) KS p-values: close at these sizes.
    assert ours.p_value == pytest.approx(theirs.p_value, rel=0.25)


def test_bbsd_is_bonferroni_over_classes() -> None:
    (_, p), (_, q) = sample(0, rows=200), sample(1, rows=60, shift=0.2)
    result = NativeBBSD(reference_probabilities=p).test(np.zeros((60, 2)), probabilities=q)
    per_class = [stats.ks_2samp(p[:, c], q[:, c]).pvalue for c in range(p.shape[1])]
    assert result.p_value == pytest.approx(min(1.0, p.shape[1] * min(per_class)))


def test_probabilities_outside_zero_one_are_refused() -> None:
    _, p = sample(0, rows=100)
    detector = NativeBBSD(reference_probabilities=p)
    logits = np.random.default_rng(0).normal(size=(20, p.shape[1])) * 5
    with pytest.raises(DetectorInputError, match=r"\[0, 1\]"):
        detector.test(np.zeros((20, 2)), probabilities=logits)
    with pytest.raises(DetectorInputError, match="rows of probabilities for 20 embeddings"):
        detector.test(np.zeros((20, 2)), probabilities=p[:30])
