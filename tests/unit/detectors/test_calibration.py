"""Calibrated p-values: the fitted model, the wrapper, and the level held for one reference."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from serve_drift.config import CalibrationConfig, DetectorConfig
from serve_drift.detectors import build_detector
from serve_drift.detectors.calibration import (
    CalibratedDetector,
    CalibrationMap,
    calibration_key,
    calibration_target,
    cannot_alarm_warning,
    draw_nulls,
    fit_calibration,
    null_p_values,
    smallest_p_value,
    window_ratio_warning,
)

ALPHA = 0.05


def model_null(
    *, center: float, spread: float, scale: float, references: int = 40, windows: int = 50
) -> np.ndarray:
    """Null p-values of the model the calibration fits: Phi(N(m_s, scale)), m_s ~ N(c, spread)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(center, spread, size=(references, 1))
    return stats.norm.cdf(rng.normal(centres, scale, size=(references, windows)))


def test_the_fit_recovers_how_unlucky_references_can_be() -> None:
    null = model_null(center=-0.3, spread=0.25, scale=1.1, references=200, windows=100)
    fitted = fit_calibration(null, quantile=0.99, window_size=100, reference_size=400)
    assert fitted.scale == pytest.approx(1.1, rel=0.1)
    assert fitted.mean_center == pytest.approx(-0.3, abs=0.06)
    assert fitted.spread == pytest.approx(0.25, abs=0.06)
    # The 99 % reference's rate at raw p < 0.05, and the raw threshold that brings it to 0.05.
    worst = stats.norm.ppf(0.01, loc=-0.3, scale=0.25)
    truth = stats.norm.cdf((stats.norm.ppf(ALPHA) - worst) / 1.1)
    assert fitted.false_alarm_rate(ALPHA) == pytest.approx(truth, rel=0.2)
    assert fitted.calibrate(fitted.raw_threshold(ALPHA)) == pytest.approx(ALPHA, rel=1e-6)


def test_references_that_do_not_vary_cost_almost_nothing() -> None:
    uniform = np.random.default_rng(1).uniform(size=(40, 50))
    fitted = fit_calibration(uniform, quantile=0.99, window_size=20, reference_size=1000)
    assert ALPHA <= fitted.calibrate(ALPHA) < 0.08
    assert fitted.raw_threshold(ALPHA) > 0.03


@settings(max_examples=50, deadline=None)
@given(
    center=st.floats(-1.5, 1.5),
    scale=st.floats(0.2, 3.0),
    p=st.floats(0.0, 1.0),
    q=st.floats(0.0, 1.0),
)
def test_calibrated_p_values_are_monotone_and_never_below_the_raw_one(
    center: float, scale: float, p: float, q: float
) -> None:
    fitted = CalibrationMap(
        center=center,
        scale=scale,
        spread=0.1,
        mean_center=center,
        quantile=0.99,
        window_size=10,
        reference_size=100,
        references=40,
        windows=50,
    )
    low, high = sorted((p, q))
    assert fitted.calibrate(low) <= fitted.calibrate(high)
    assert fitted.calibrate(p) >= p and 0.0 <= fitted.calibrate(p) <= 1.0
    threshold = fitted.raw_threshold(ALPHA)
    assert threshold <= ALPHA
    if threshold > 0:  # 0: no raw p-value can alarm
        assert fitted.calibrate(threshold * 0.999) < ALPHA <= fitted.calibrate(threshold * 1.001)


def test_the_fit_refuses_too_few_draws() -> None:
    with pytest.raises(ValueError, match="at least 2 x 5"):
        fit_calibration(np.full((1, 50), 0.5), quantile=0.99, window_size=10, reference_size=50)


# --- the level for one fixed reference ------------------------------------------------------


DIM, N, M = 8, 100, 50  # M/N = 0.5: a reference's own deviation matters
CLASSIFIER = DetectorConfig(kind="classifier", backend="native", device="cpu")


def _clean(rng: np.random.Generator, rows: int) -> np.ndarray:
    return rng.normal(size=(rows, DIM))


def _rate(detector: object, *, windows: int, seed: int) -> int:
    rng = np.random.default_rng(seed)
    return sum(detector.test(_clean(rng, M)).p_value < ALPHA for _ in range(windows))  # type: ignore[attr-defined]


def _unlucky_reference() -> np.ndarray:
    """Of ten seeded references, the one whose uncalibrated test alarms most on clean data."""
    candidates = [_clean(np.random.default_rng(100 + i), N) for i in range(10)]
    return max(
        candidates,
        key=lambda ref: _rate(build_detector(CLASSIFIER, reference=ref), windows=150, seed=1),
    )


def test_calibration_holds_the_level_for_a_reference_whose_raw_test_does_not() -> None:
    reference = _unlucky_reference()
    plan = CalibrationConfig()
    (draws,) = draw_nulls(
        [CLASSIFIER],
        embeddings=reference,
        probabilities=None,
        window_size=M,
        plan=plan,
        reference_hash="sha256:test",
    )
    fitted = fit_calibration(
        draws.null_p_values, quantile=plan.quantile, window_size=M, reference_size=N
    )
    detector = build_detector(CLASSIFIER, reference=reference)
    calibrated = CalibratedDetector(detector, calibrate=lambda _: fitted, window_size=M)
    windows = 1000
    raw = _rate(detector, windows=windows, seed=2)
    held = _rate(calibrated, windows=windows, seed=2)  # the same windows
    assert stats.binomtest(raw, windows, ALPHA, alternative="greater").pvalue < 1e-3, raw
    assert stats.binomtest(held, windows, ALPHA, alternative="greater").pvalue >= 1e-3, held


def test_the_wrapper_keeps_the_raw_p_value_and_components() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.ones(3), size=60)
    inner = build_detector(
        DetectorConfig(kind="combined", device="cpu"),
        reference=rng.normal(size=(60, 4)),
        reference_probabilities=probs,
    )
    fitted = fit_calibration(
        model_null(center=-0.5, spread=0.2, scale=1.0),
        quantile=0.99,
        window_size=20,
        reference_size=60,
    )
    twin = build_detector(  # the same seed: the same permutations as `inner`
        DetectorConfig(kind="combined", device="cpu"),
        reference=inner.reference,
        reference_probabilities=probs,
    )
    calibrated = CalibratedDetector(twin, calibrate=lambda _: fitted, window_size=20)
    window = rng.normal(size=(20, 4))
    raw = inner.test(window, probabilities=probs[:20])
    result = calibrated.test(window, probabilities=probs[:20])
    assert result.uncalibrated_p_value == raw.p_value
    assert result.p_value == fitted.calibrate(raw.p_value) > raw.p_value
    assert result.components == raw.components and calibrated.name == "combined"


def test_the_wrapper_calibrates_once_per_window_size_and_lazily() -> None:
    sizes: list[int] = []

    def calibrate(size: int) -> CalibrationMap | None:
        sizes.append(size)
        return None  # uncalibrated: the raw statistic passes through

    rng = np.random.default_rng(4)
    inner = build_detector(
        DetectorConfig(backend="native", device="cpu"), reference=rng.normal(size=(40, 2))
    )
    wrapper = CalibratedDetector(inner, calibrate=calibrate, window_size=20)
    assert sizes == []
    for _ in range(2):
        assert wrapper.test(rng.normal(size=(20, 2))).uncalibrated_p_value is None
    wrapper.window_size = 30
    wrapper.test(rng.normal(size=(30, 2)))
    assert sizes == [20, 30]


# --- what is drawn, and when it stops -------------------------------------------------------


def test_alibi_mmd_is_calibrated_through_native_mmd() -> None:
    alibi = DetectorConfig(kind="mmd", backend="alibi", device="cpu")
    target, transform = calibration_target(alibi)
    assert target.resolved_backend == "native" and target.kind == "mmd"
    assert transform(0.0) == pytest.approx(1 / 101) and transform(0.04) == pytest.approx(5 / 101)
    plan = CalibrationConfig()
    key = calibration_key(alibi, window_size=50, plan=plan, reference_hash="h")
    native = DetectorConfig(kind="mmd", backend="native", p_value_threshold=0.01, device="cuda")
    assert key == calibration_key(native, window_size=50, plan=plan, reference_hash="h")
    changed = [
        calibration_key(alibi, window_size=60, plan=plan, reference_hash="h"),
        calibration_key(
            alibi, window_size=50, plan=plan.model_copy(update={"seed": 1}), reference_hash="h"
        ),
        calibration_key(alibi, window_size=50, plan=plan, reference_hash="other"),
    ]
    assert key not in changed and len(set(changed)) == 3


def test_drawing_stops_when_the_budget_would_be_overrun() -> None:
    ticks = itertools.count(step=10.0)  # every clock reading: ten seconds later
    plan = CalibrationConfig(references=20, windows=5, budget_s=45.0)
    null = null_p_values(
        DetectorConfig(backend="native", device="cpu"),
        embeddings=np.random.default_rng(5).normal(size=(30, 2)),
        probabilities=None,
        window_size=10,
        plan=plan,
        clock=lambda: next(ticks),
    )
    # Ten seconds per reference: after four (40 s) a fifth would end at 50 s, past 45 s.
    assert null.shape == (4, 5)


def test_a_window_too_large_for_the_reference_is_named() -> None:
    assert window_ratio_warning(window_size=100, reference_size=400, max_ratio=0.5) is None
    warning = window_ratio_warning(window_size=300, reference_size=400, max_ratio=0.5)
    assert warning is not None and "M/N = 0.75 > 0.5" in warning


def test_a_detector_too_coarse_to_alarm_after_calibration_is_named() -> None:
    strict = CalibrationMap(
        center=-1.0,  # the raw threshold for 0.05 becomes Phi(-1 - 1.645) = 0.004
        scale=1.0,
        spread=0.3,
        mean_center=-0.3,
        quantile=0.99,
        window_size=200,
        reference_size=449,
        references=40,
        windows=50,
    )
    assert strict.raw_threshold(ALPHA) == pytest.approx(0.0041, abs=1e-4)
    coarse = DetectorConfig(kind="mmd", backend="native")  # 100 permutations: p >= 1/101
    warning = cannot_alarm_warning(coarse, strict, alpha=ALPHA)
    assert warning is not None and "raise n_permutations" in warning
    assert smallest_p_value(coarse) == pytest.approx(1 / 101)
    fine = DetectorConfig(kind="mmd", backend="native", n_permutations=500)
    assert cannot_alarm_warning(fine, strict, alpha=ALPHA) is None
    assert cannot_alarm_warning(DetectorConfig(kind="bbsd"), strict, alpha=ALPHA) is None
