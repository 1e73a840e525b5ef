"""Image statistics: the event log's summary and the one blur measure the checks share."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from serve_drift.ingress.config import PlausibilityConfig
from serve_drift.ingress.plausibility import evaluate
from serve_drift.ingress.stats import compute_input_stats, laplacian_variance
from tests.support.eventlog_helpers import rng_images


def test_input_stats_measure_what_they_say() -> None:
    flat = compute_input_stats(np.full((32, 32, 3), 128, dtype=np.uint8))
    assert flat.brightness == pytest.approx(128 / 255, abs=1e-6)
    assert flat.contrast == 0.0 and flat.sharpness == 0.0
    image = rng_images()
    sharp = compute_input_stats(image)
    blurred = compute_input_stats(_box_blur(image))
    assert blurred.sharpness < sharp.sharpness / 5
    assert (sharp.width, sharp.height, sharp.channels) == (224, 224, 3)
    red = np.zeros((10, 20, 3), dtype=np.uint8)
    red[..., 0] = 255
    stats = compute_input_stats(red)
    assert stats.channel_means == (1.0, 0.0, 0.0)
    assert stats.brightness == pytest.approx(0.299, abs=1e-5)
    grey = compute_input_stats(np.zeros((5, 7), dtype=np.uint8))
    assert (grey.width, grey.height, grey.channels) == (7, 5, 1)
    large = compute_input_stats(np.zeros((3000, 4000, 3), dtype=np.uint8))
    assert (large.width, large.height) == (4000, 3000)
    with pytest.raises(ValueError, match="uint8"):
        compute_input_stats(np.zeros((4, 4), dtype=np.float32))


def _box_blur(image: np.ndarray) -> np.ndarray:
    f = image.astype(np.float32)
    out = sum(
        np.roll(np.roll(f, dy, 0), dx, 1) for dy in (-2, -1, 0, 1, 2) for dx in (-2, -1, 0, 1, 2)
    )
    return (out / 25).astype(np.uint8)


def test_an_image_without_interior_pixels_has_no_blur_measure() -> None:
    """Under 3x3 there is no Laplacian: the checks do not call it blurred, the log records 0."""
    tiny = np.array([[0, 255], [255, 0]], dtype=np.uint8)
    assert laplacian_variance(tiny.astype(np.float32)) is None
    assert compute_input_stats(tiny).sharpness == 0.0
    checks = PlausibilityConfig.model_validate({"blur": {"action": "flag"}})
    findings = evaluate([Image.fromarray(tiny)], config=checks, profile=None)
    assert "blur" not in {f.check for f in findings}
    flat = Image.fromarray(np.full((8, 8), 128, dtype=np.uint8))
    assert "blur" in {f.check for f in evaluate([flat], config=checks, profile=None)}
