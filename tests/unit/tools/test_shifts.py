"""Synthetic covariate shifts: contracts shared by all, and the statistic each one targets."""

from __future__ import annotations

import numpy as np
import pytest

from serve_drift.models.digits import load_digits_images
from serve_drift.tools.shifts import SHIFTS, apply_shift, shift_mask


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return load_digits_images()[0][:200]


@pytest.fixture(params=["grey", "rgb"])
def batch(request: pytest.FixtureRequest, digits: np.ndarray) -> np.ndarray:
    if request.param == "grey":
        return digits
    return np.stack([digits, digits // 2, 255 - digits], axis=-1)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_keeps_dtype_shape_and_input(name: str, batch: np.ndarray) -> None:
    before = batch.copy()
    out = SHIFTS[name](batch, severity=0.7, rng=_rng())
    assert out.dtype == np.uint8 and out.shape == batch.shape
    np.testing.assert_array_equal(batch, before)  # pure: the input is untouched
    assert not np.array_equal(out, batch)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_severity_zero_is_identity(name: str, batch: np.ndarray) -> None:
    np.testing.assert_array_equal(SHIFTS[name](batch, severity=0.0, rng=_rng()), batch)


@pytest.mark.parametrize("name", sorted(SHIFTS))
def test_deterministic_under_seed(name: str, digits: np.ndarray) -> None:
    a = apply_shift(name, digits, severity=0.5, fraction=0.5, rng=_rng(3))
    b = apply_shift(name, digits, severity=0.5, fraction=0.5, rng=_rng(3))
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("fraction", [0.1, 0.5, 1.0])
def test_fraction_selects_that_share(fraction: float, digits: np.ndarray) -> None:
    out = apply_shift("brightness", digits, severity=1.0, fraction=fraction, rng=_rng())
    changed = np.any(out != digits, axis=(1, 2))
    assert changed.sum() == round(fraction * len(digits))


def test_explicit_mask_is_honoured(digits: np.ndarray) -> None:
    mask = shift_mask(len(digits), fraction=0.25, rng=_rng(1))
    out = apply_shift("occlusion", digits, severity=0.5, rng=_rng(), mask=mask)
    np.testing.assert_array_equal(out[~mask], digits[~mask])
    assert np.all(np.any(out[mask] != digits[mask], axis=(1, 2)) | (digits[mask] == 0).all())


def test_brightness_changes_mean(digits: np.ndarray) -> None:
    brighter = SHIFTS["brightness"](digits, severity=0.5, rng=_rng())
    darker = SHIFTS["darken"](digits, severity=0.5, rng=_rng())
    # Digits are mostly black background, so darkening clips there; the mean still drops.
    assert brighter.mean() > digits.mean() + 30
    assert darker.mean() < digits.mean() - 20


def test_noise_changes_std_not_mean_of_midgrey() -> None:
    grey = np.full((50, 8, 8), 128, dtype=np.uint8)
    out = SHIFTS["gaussian_noise"](grey, severity=0.5, rng=_rng())
    assert out.std() == pytest.approx(32, rel=0.1)
    assert abs(out.mean() - 128) < 2


def test_occlusion_zeroes_about_severity_of_the_area() -> None:
    white = np.full((20, 8, 8), 255, dtype=np.uint8)
    for severity in (0.25, 0.5, 1.0):
        out = SHIFTS["occlusion"](white, severity=severity, rng=_rng())
        zero_share = (out == 0).mean(axis=(1, 2))
        assert np.all(np.abs(zero_share - severity) <= 0.15)


def _high_frequency_energy(images: np.ndarray) -> float:
    x = images.astype(np.float64)
    return float((np.diff(x, axis=1) ** 2).mean() + (np.diff(x, axis=2) ** 2).mean())


def test_blur_lowers_high_frequency_energy(digits: np.ndarray) -> None:
    out = SHIFTS["blur"](digits, severity=0.5, rng=_rng())
    assert _high_frequency_energy(out) < 0.5 * _high_frequency_energy(digits)


def test_rotation_moves_mass_but_keeps_a_centred_blob() -> None:
    bar = np.zeros((10, 9, 9), dtype=np.uint8)
    bar[:, :, 4] = 255  # vertical bar through the centre
    out = SHIFTS["rotation"](bar, severity=1.0, rng=_rng())
    assert np.all(out[:, 4, 4] > 200)  # the centre stays put
    assert np.all(out[:, 0, 4] < 128)  # the ends of the bar moved off the vertical


def test_invalid_arguments_raise_clear_errors(digits: np.ndarray) -> None:
    with pytest.raises(ValueError, match="valid shifts: blur, brightness"):
        apply_shift("fog", digits, severity=0.5, rng=_rng())
    with pytest.raises(ValueError, match="severity"):
        apply_shift("blur", digits, severity=1.5, rng=_rng())
    with pytest.raises(ValueError, match="fraction"):
        apply_shift("blur", digits, severity=0.5, fraction=2.0, rng=_rng())
    with pytest.raises(ValueError, match="uint8"):
        SHIFTS["blur"](digits.astype(np.float32), severity=0.5, rng=_rng())
