"""Contract suite over every detector backend, plus native-MMD specifics (no Ray here)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from serve_drift.config import DetectorConfig
from serve_drift.detectors import (
    BACKENDS,
    DetectorInputError,
    DriftDetector,
    build_detector,
    mmd_native,
)
from serve_drift.detectors.device import resolve_device
from serve_drift.detectors.mmd_native import NativeMMD
from serve_drift.messages import DriftStatistic

MMD_BACKENDS = BACKENDS["mmd"]
DIM = 8


def _detector(backend: str, reference: np.ndarray, *, seed: int = 0) -> DriftDetector:
    config = DetectorConfig.model_validate(
        {"backend": backend, "device": "cpu", "n_permutations": 100, "seed": seed}
    )
    return build_detector(config, reference=reference)


def _sample(seed: int, *, rows: int, shift: float = 0.0, dim: int = DIM) -> np.ndarray:
    return np.random.default_rng(seed).normal(loc=shift, size=(rows, dim)).astype(np.float32)


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return _sample(10_000, rows=150)


# --- contract: every backend -------------------------------------------------------------


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_builds_a_drift_detector(backend: str, reference: np.ndarray) -> None:
    detector = _detector(backend, reference)
    assert isinstance(detector, DriftDetector)
    assert (detector.name, detector.backend) == ("mmd", backend)
    result = detector.test(_sample(1, rows=50))
    assert isinstance(result, DriftStatistic)
    assert 0.0 <= result.p_value <= 1.0 and np.isfinite(result.distance)


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_no_drift_on_the_reference_distribution(backend: str, reference: np.ndarray) -> None:
    detector = _detector(backend, reference)
    p_values = [detector.test(_sample(seed, rows=50)).p_value for seed in range(20)]
    # 20 tests at alpha 0.05 expect one false alarm; P(>= 5) is about 0.003 for a valid test,
    # and the seeds are fixed, so this cannot flake but still fails for a broken statistic.
    assert sum(p < 0.05 for p in p_values) <= 4


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_drift_on_shifted_samples(backend: str, reference: np.ndarray) -> None:
    detector = _detector(backend, reference)
    p_values = [detector.test(_sample(seed, rows=50, shift=0.75)).p_value for seed in range(5)]
    assert all(p < 0.05 for p in p_values)


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_seeded_results_are_reproducible(backend: str, reference: np.ndarray) -> None:
    windows = [_sample(seed, rows=30, shift=0.1) for seed in range(3)]
    first = [_detector(backend, reference, seed=7).test(w) for w in windows]
    second = [_detector(backend, reference, seed=7).test(w) for w in windows]
    assert first == second


def test_alibi_seeding_leaves_the_global_rng_alone(reference: np.ndarray) -> None:
    detector = _detector("alibi", reference)
    state = torch.get_rng_state()
    detector.test(_sample(1, rows=30))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("backend", MMD_BACKENDS)
@pytest.mark.parametrize("bad_value", [np.nan, np.inf, -np.inf])
def test_non_finite_window_is_refused_not_alarmed(
    backend: str, bad_value: float, reference: np.ndarray
) -> None:
    window = _sample(1, rows=30)
    window[17, 3] = bad_value
    with pytest.raises(
        DetectorInputError, match=r"1 row\(s\) with NaN or infinite values \(first at row 17\)"
    ):
        _detector(backend, reference).test(window)


@pytest.mark.parametrize("backend", MMD_BACKENDS)
@pytest.mark.parametrize(
    ("window", "message"),
    [
        (_sample(1, rows=30, dim=DIM + 1), "dimension 9, the reference set has 8"),
        (_sample(1, rows=9), "9 rows, at least 10"),
        (_sample(1, rows=30)[0], "2-D"),
        (np.ones((30, DIM), dtype=np.int64), "floating-point dtype"),
        ([[1.0, 2.0], [3.0]], "not a numeric array|floating-point dtype"),
    ],
    ids=["wrong-dim", "too-small", "1-d", "integer", "ragged"],
)
def test_unusable_window_is_refused(
    backend: str, window: object, message: str, reference: np.ndarray
) -> None:
    with pytest.raises(DetectorInputError, match=message):
        _detector(backend, reference).test(window)  # type: ignore[arg-type]


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_unusable_reference_is_refused(backend: str, reference: np.ndarray) -> None:
    bad = reference.copy()
    bad[3, 0] = np.nan
    with pytest.raises(DetectorInputError, match="reference set has 1 row"):
        _detector(backend, bad)
    with pytest.raises(DetectorInputError, match="reference set has 5 rows"):
        _detector(backend, reference[:5])


# --- registry ----------------------------------------------------------------------------


def test_unknown_backend_lists_the_valid_ones(reference: np.ndarray) -> None:
    config = DetectorConfig.model_construct(kind="mmd", backend="keops")
    with pytest.raises(ValueError, match=r"'keops'.*valid backends: alibi, native"):
        build_detector(config, reference=reference)


def test_unknown_kind_lists_the_valid_ones(reference: np.ndarray) -> None:
    config = DetectorConfig.model_construct(kind="lsdd", backend="native")
    with pytest.raises(ValueError, match=r"'lsdd'.*valid kinds: mmd"):
        build_detector(config, reference=reference)


def test_native_backend_does_not_import_alibi() -> None:
    code = (
        "import sys, numpy as np\n"
        "from serve_drift.config import DetectorConfig\n"
        "from serve_drift.detectors import build_detector\n"
        "build_detector(DetectorConfig(backend='native', device='cpu'),"
        " reference=np.random.default_rng(0).normal(size=(20, 3)))\n"
        "assert 'alibi_detect' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-W", "error", "-c", code], check=True, timeout=120)


def test_resolve_device_refuses_unknown_devices() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="invalid torch device"):
        resolve_device("tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")


# --- native MMD against alibi-detect -----------------------------------------------------


def _alibi_float64(reference: np.ndarray) -> object:
    from serve_drift.detectors.mmd_alibi import _import_mmd_drift

    return _import_mmd_drift()(
        reference.astype(np.float64), backend="pytorch", device=torch.device("cpu")
    )


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_native_statistic_equals_alibi_with_the_same_sigma(
    shift: float, reference: np.ndarray
) -> None:
    """float64 alibi with alibi's (float32-stored) sigma: equal to rel 1e-6."""
    alibi = _alibi_float64(reference)
    sigma = float(alibi._detector.kernel.sigma[0])  # type: ignore[attr-defined]
    native = NativeMMD(reference, sigma=sigma, device="cpu")
    window = _sample(3, rows=60, shift=shift)
    expected = alibi.predict(window.astype(np.float64))["data"]["distance"]  # type: ignore[attr-defined]
    assert native.test(window).distance == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("shift", [0.0, 0.2, 1.0])
def test_native_statistic_matches_the_alibi_backend(shift: float, reference: np.ndarray) -> None:
    """The alibi backend computes in float32: equal within 1e-6 absolute (MMD² is O(1e-3))."""
    window = _sample(4, rows=60, shift=shift)
    alibi = _detector("alibi", reference)
    native = _detector("native", reference)
    assert native.sigma == pytest.approx(alibi.sigma, rel=1e-6)  # type: ignore[attr-defined]
    assert native.test(window).distance == pytest.approx(alibi.test(window).distance, abs=1e-6)


def test_permuted_statistics_equal_alibis_formula_on_permuted_matrices() -> None:
    from serve_drift.detectors.mmd_alibi import _import_mmd_drift

    _import_mmd_drift()  # imports alibi with its import-time warning filtered
    from alibi_detect.utils.pytorch.distance import mmd2_from_kernel_matrix

    from serve_drift.detectors import permutation as perm

    n, m = 25, 15
    x = torch.as_tensor(_sample(5, rows=n + m), dtype=torch.float64)
    detector = NativeMMD(x[:n].numpy(), sigma=2.0 * 2**0.5, device="cpu")
    kernel = torch.exp(-(torch.cdist(x, x) ** 2) / 16).fill_diagonal_(0.0)
    cpu = torch.device("cpu")
    sides = perm.window_sides(8, n=n, m=m, generator=torch.Generator().manual_seed(0), device=cpu)
    ours = detector.split_mmd2(x[n:], detector.sides(sides, m=m))
    for side, value in zip(sides, ours, strict=True):
        rest = torch.as_tensor(np.setdiff1d(np.arange(n + m), side.numpy()))
        order = torch.cat([rest, side])
        permuted = kernel[order][:, order]
        assert float(value) == pytest.approx(float(mmd2_from_kernel_matrix(permuted, m)), abs=1e-12)


# --- native p-values ---------------------------------------------------------------------


def test_native_p_value_is_never_zero(reference: np.ndarray) -> None:
    result = NativeMMD(reference, n_permutations=200, device="cpu").test(reference[:40] + 1e3)
    assert result.p_value == 1 / 201
    assert result.distance > result.distance_threshold  # type: ignore[operator]


def test_native_p_values_are_uniform_without_drift() -> None:
    p_values = []
    for seed in range(200):
        rng = np.random.default_rng(seed)
        detector = NativeMMD(rng.normal(size=(20, 2)), n_permutations=99, seed=seed, device="cpu")
        p_values.append(detector.test(rng.normal(size=(15, 2))).p_value)
    # Fixed seeds, so no flakes; a statistic or p-value formula that is off fails both checks.
    assert stats.kstest(p_values, "uniform").pvalue > 0.01
    assert abs(np.mean(p_values) - 0.5) < 0.05


def test_native_chunking_does_not_change_results(
    reference: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    window = _sample(6, rows=40, shift=0.1)
    whole = NativeMMD(reference, device="cpu").test(window)
    monkeypatch.setattr(mmd_native, "_CHUNK_BYTES", 1)  # one permutation per chunk
    chunked = NativeMMD(reference, device="cpu").test(window)
    # Same permutations (the generator stream does not depend on the chunking); products of
    # differently shaped matrices may differ in the last bit, which the tie tolerance absorbs.
    assert chunked.p_value == whole.p_value
    assert chunked.distance == pytest.approx(whole.distance, rel=1e-12)
    assert chunked.distance_threshold == pytest.approx(whole.distance_threshold, rel=1e-12)


def test_native_refuses_a_degenerate_reference() -> None:
    with pytest.raises(DetectorInputError, match="bandwidth is 0"):
        NativeMMD(np.ones((20, 3)), device="cpu")


@settings(max_examples=40, deadline=None)
@given(
    window=hnp.arrays(
        np.float64,
        st.tuples(st.integers(10, 25), st.just(3)),
        elements=st.floats(-100, 100, allow_nan=False),
    )
)
def test_native_p_value_is_a_valid_permutation_p_value(window: np.ndarray) -> None:
    detector = NativeMMD(_sample(0, rows=30, dim=3), n_permutations=50, device="cpu")
    result = detector.test(window)
    assert 0 < result.p_value <= 1
    assert (result.p_value * 51) == pytest.approx(round(result.p_value * 51))
    assert np.isfinite(result.distance)


@pytest.mark.parametrize("backend", MMD_BACKENDS)
def test_overflowing_window_is_refused_not_alarmed(backend: str, reference: np.ndarray) -> None:
    """Finite in float64 but overflowing in the backend's arithmetic: an error, never drift.

    (One such row alone is harmless for native: its kernel values underflow to exactly 0, the
    right answer for a point that far away. Two of them make inf - inf = NaN distances.)
    """
    window = _sample(1, rows=30).astype(np.float64)
    window[[4, 9], 0] = 1e200
    with pytest.raises(DetectorInputError, match=r"infinite|not finite"):
        _detector(backend, reference).test(window)
