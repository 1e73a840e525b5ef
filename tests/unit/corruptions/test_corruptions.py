"""The corruption library: forms kept, deterministic under a seed, severities that grow, and
the statistic each corruption moves."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from serve_drift.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    SEVERITIES,
    CorruptionError,
    corrupt,
    corrupt_batch,
)

NAMES = sorted(CORRUPTIONS)
# Corruptions that draw from the generator (the others ignore it).
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "motion_blur", "occlusion", "rotation"}


def _scene(size: int = 48) -> np.ndarray:
    """A textured RGB test card: gradients, a smooth random texture, a bright disk (no period
    that a resampling factor could line up with)."""
    from scipy import ndimage

    y, x = np.mgrid[0:size, 0:size] / size
    noise = np.random.default_rng(0).normal(size=(size, size))
    texture = ndimage.gaussian_filter(noise, 1.5) * 150.0
    disk = ((x - 0.6) ** 2 + (y - 0.4) ** 2 < 0.04) * 90.0
    red = 40 + 120 * x + texture
    green = 30 + 100 * y + disk
    blue = 80 + 50 * (1 - x) + texture / 2
    return np.clip(np.stack([red, green, blue], axis=2), 0, 255).astype(np.uint8)


def _grey(size: int = 48) -> np.ndarray:
    return (_scene(size).astype(np.float64) @ [0.299, 0.587, 0.114]).astype(np.uint8)


def _laplacian_var(image: np.ndarray) -> float:
    g = image.astype(np.float64)
    if g.ndim == 3:
        g = g.mean(axis=2)
    lap = -4 * g[1:-1, 1:-1] + g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:]
    return float(lap.var())


FORMS = {
    "grey array": lambda: _grey(),
    "rgb array": lambda: _scene(),
    "grey PIL": lambda: Image.fromarray(_grey()),
    "rgb PIL": lambda: Image.fromarray(_scene()),
}


def test_the_library_covers_every_family_the_drills_need() -> None:
    assert {c.family for c in CORRUPTIONS.values()} == set(FAMILIES)
    for name in (
        "brightness",
        "contrast",
        "gaussian_noise",
        "defocus_blur",
        "motion_blur",
        "occlusion",
        "rotation",
        "zoom",
        "jpeg_compression",
        "colour_cast",
        "camera_swap",
    ):
        assert name in CORRUPTIONS
    assert all(len(c.levels) == len(SEVERITIES) for c in CORRUPTIONS.values())


@pytest.mark.parametrize("form", sorted(FORMS))
@pytest.mark.parametrize("name", NAMES)
def test_keeps_the_callers_form_and_leaves_the_input_alone(name: str, form: str) -> None:
    image = FORMS[form]()
    before = np.asarray(image).copy()
    out = corrupt(image, name, severity=5, seed=3)
    np.testing.assert_array_equal(np.asarray(image), before)
    if isinstance(image, Image.Image):
        assert isinstance(out, Image.Image) and out.mode == image.mode and out.size == image.size
    else:
        assert out.dtype == np.uint8 and out.shape == image.shape
    assert not np.array_equal(np.asarray(out), before), f"{name} left a {form} unchanged"


@pytest.mark.parametrize("name", NAMES)
def test_the_same_seed_gives_the_same_image(name: str) -> None:
    a = corrupt(_scene(), name, severity=3, seed=11)
    b = corrupt(_scene(), name, severity=3, seed=11)
    np.testing.assert_array_equal(a, b)
    other = corrupt(_scene(), name, severity=3, seed=12)
    assert np.array_equal(a, other) == (name not in RANDOM)


@pytest.mark.parametrize("name", NAMES)
def test_a_higher_severity_changes_the_image_more(name: str) -> None:
    clean = _scene().astype(np.float64)
    change = [
        np.mean(
            [np.abs(corrupt(_scene(), name, severity=s, seed=k) - clean).mean() for k in range(6)]
        )
        for s in SEVERITIES
    ]
    assert all(b > a for a, b in itertools.pairwise(change)), (name, change)


def test_a_batch_is_reproducible_and_each_image_is_corrupted() -> None:
    batch = np.stack([_grey(), _grey()[::-1]])
    a = corrupt_batch(batch, "occlusion", severity=3, seed=5)
    b = corrupt_batch(batch, "occlusion", severity=3, seed=5)
    np.testing.assert_array_equal(a, b)
    assert a.shape == batch.shape and a.dtype == np.uint8
    assert all(not np.array_equal(a[i], batch[i]) for i in range(2))
    # One generator draws for the images in order: the same as corrupting them one by one.
    rng = np.random.default_rng(5)
    one_by_one = [corrupt(img, "occlusion", severity=3, seed=rng) for img in batch]
    np.testing.assert_array_equal(a, np.stack(one_by_one))


@pytest.mark.parametrize("severity", [0, 6, 2.5, True, "3", None])
def test_severity_is_a_whole_number_from_1_to_5(severity: object) -> None:
    with pytest.raises(CorruptionError) as caught:
        corrupt(_grey(), "brightness", severity=severity)  # type: ignore[arg-type]
    assert caught.value.code == "invalid_corruption" and isinstance(caught.value, ValueError)


def test_errors_name_what_is_valid() -> None:
    with pytest.raises(CorruptionError, match="valid: brightness, camera_swap"):
        corrupt(_grey(), "fog", severity=1)
    with pytest.raises(CorruptionError, match="unknown options"):
        corrupt(_grey(), "brightness", severity=1, cast="warm")
    with pytest.raises(CorruptionError, match="cast must be one of"):
        corrupt(_scene(), "colour_cast", severity=1, cast="purple")
    with pytest.raises(CorruptionError, match="uint8"):
        corrupt(_grey().astype(np.float32), "brightness", severity=1)
    with pytest.raises(CorruptionError, match="seed"):
        corrupt(_grey(), "brightness", severity=1, seed=-1)


def test_other_pil_modes_come_back_as_rgb() -> None:
    rgba = Image.fromarray(_scene()).convert("RGBA")
    assert corrupt(rgba, "contrast", severity=2).mode == "RGB"
    assert corrupt(Image.fromarray(_scene()).convert("P"), "zoom", severity=2).mode == "RGB"


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    severity=st.sampled_from(SEVERITIES),
    seed=st.integers(0, 2**32 - 1),
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    channels=st.sampled_from([0, 3]),
)
def test_any_image_of_any_size_stays_a_valid_image(
    name: str, severity: int, seed: int, height: int, width: int, channels: int
) -> None:
    shape = (height, width) if channels == 0 else (height, width, channels)
    image = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    out = corrupt(image, name, severity=severity, seed=seed)
    assert out.dtype == np.uint8 and out.shape == image.shape


# --- what each corruption moves ---------------------------------------------------------------


def test_lighting_moves_mean_and_spread() -> None:
    image = _scene()
    assert corrupt(image, "brightness", severity=3).mean() > image.mean() + 40
    assert corrupt(image, "darkness", severity=3).mean() < image.mean() - 40
    flat = corrupt(image, "contrast", severity=3).astype(np.float64)
    assert flat.std() == pytest.approx(0.2 * image.std(), rel=0.05)
    assert flat.mean() == pytest.approx(image.mean(), abs=1.0)


def test_brightness_keeps_hue() -> None:
    out = corrupt(np.full((4, 4, 3), (100, 50, 25), dtype=np.uint8), "brightness", severity=1)
    r, g, b = out[0, 0].astype(float)
    assert (
        r > 100 and r / g == pytest.approx(2.0, rel=0.02) and g / b == pytest.approx(2.0, rel=0.05)
    )


def test_sensor_noise_has_its_own_signature() -> None:
    grey = np.full((64, 64), 128, dtype=np.uint8)
    noisy = corrupt(grey, "gaussian_noise", severity=3, seed=0).astype(np.float64)
    assert noisy.std() == pytest.approx(0.18 * 255, rel=0.05) and abs(noisy.mean() - 128) < 2
    dim, bright = np.full((64, 64), 40, np.uint8), np.full((64, 64), 200, np.uint8)
    # Photon noise grows with the signal (variance proportional to the mean).
    assert (
        corrupt(bright, "shot_noise", severity=3).std()
        > corrupt(dim, "shot_noise", severity=3).std()
    )
    salt = corrupt(grey, "impulse_noise", severity=4, seed=0)
    assert np.isin(salt, (0, 255)).mean() == pytest.approx(0.17, abs=0.02)


@pytest.mark.parametrize("name", ["defocus_blur", "motion_blur"])
def test_blur_removes_fine_detail(name: str) -> None:
    image = _grey(64)
    assert _laplacian_var(corrupt(image, name, severity=3, seed=0)) < 0.6 * _laplacian_var(image)


def test_blur_scales_with_the_image() -> None:
    # The same severity removes about the same share of detail at 64 px and at 128 px.
    small, large = _grey(64), np.kron(_grey(64), np.ones((2, 2), dtype=np.uint8))
    kept = [
        _laplacian_var(corrupt(img, "defocus_blur", severity=4)) / _laplacian_var(img)
        for img in (small, large)
    ]
    assert kept[1] < kept[0] * 1.5


def test_occlusion_covers_the_share_of_the_area_it_says() -> None:
    white = np.full((100, 100), 255, dtype=np.uint8)
    for severity, share in zip(SEVERITIES, CORRUPTIONS["occlusion"].levels, strict=True):
        out = corrupt(white, "occlusion", severity=severity, seed=severity, fill="black")
        assert (out == 0).mean() == pytest.approx(share, abs=0.02)


def test_rotation_and_zoom_move_the_geometry() -> None:
    bar = np.zeros((41, 41), dtype=np.uint8)
    bar[19:22, 5:36] = 255
    rotated = corrupt(bar, "rotation", severity=5, seed=0)
    rows = np.nonzero(rotated.max(axis=1) > 128)[0]
    assert rows.max() - rows.min() > 10  # a 3-row bar now spans many rows (30 degrees)
    zoomed = corrupt(bar, "zoom", severity=5)
    columns = np.nonzero(zoomed.max(axis=0) > 128)[0]
    assert columns.min() < 5 and zoomed[20, 20] == 255  # magnified about the centre


def test_compression_degrades_with_severity() -> None:
    image = _scene(64)
    error = [
        np.abs(corrupt(image, "jpeg_compression", severity=s).astype(float) - image).mean()
        for s in (1, 5)
    ]
    assert error[1] > error[0] > 0
    blocky = corrupt(image, "pixelate", severity=5)  # 0.25 of 64: 16 blocks of 4 px
    assert (blocky[:, ::4] == blocky[:, 1::4]).all() and (blocky[::4] == blocky[1::4]).all()


def test_colour_cast_tints_colour_and_brightens_grey() -> None:
    image = _scene()
    warm = corrupt(image, "colour_cast", severity=4).astype(np.float64)
    cool = corrupt(image, "colour_cast", severity=4, cast="cool").astype(np.float64)
    ratio = lambda img: img[..., 0].mean() / img[..., 2].mean()  # noqa: E731
    assert ratio(warm) > ratio(image.astype(np.float64)) > ratio(cool)
    grey = np.full((8, 8), 100, dtype=np.uint8)
    assert corrupt(grey, "colour_cast", severity=4)[0, 0] > 100


def test_a_camera_swap_softens_and_recolours_but_keeps_grey_grey() -> None:
    image = _scene(64)
    swapped = corrupt(image, "camera_swap", severity=3)
    assert _laplacian_var(swapped) < 0.7 * _laplacian_var(image)
    saturation = lambda img: (img.max(axis=2) - img.min(axis=2)).mean()  # noqa: E731
    assert saturation(swapped.astype(float)) > saturation(image.astype(float))
    grey_rgb = np.repeat(_grey(32)[:, :, None], 3, axis=2)
    out = corrupt(grey_rgb, "camera_swap", severity=5).astype(int)
    assert (
        np.abs(out[..., 0] - out[..., 1]).max() <= 1
        and np.abs(out[..., 1] - out[..., 2]).max() <= 1
    )
