"""A camera swap: another sensor's resolution, colour matrix and tone curve at once."""

from __future__ import annotations

import numpy as np
from PIL import Image

from serve_drift.corruptions.base import luma, resample

# A plausible other sensor's colour matrix (rows sum to 1, so grey stays grey): more
# saturated reds, bluer greens. Mixed with the identity by the severity's strength.
SENSOR_MATRIX = np.array(
    [
        [1.35, -0.25, -0.10],
        [-0.15, 1.05, 0.10],
        [0.05, -0.35, 1.30],
    ]
)


def camera_swap(
    image: np.ndarray, level: tuple[float, float, float], rng: np.random.Generator
) -> np.ndarray:
    """``level`` is (resolution scale, colour-matrix strength, gamma): the image is captured at
    ``scale`` of the resolution and upscaled back by the pipeline (bicubic), seen through the
    identity mixed with :data:`SENSOR_MATRIX` by ``strength``, with a tone curve ``x**gamma``."""
    scale, strength, gamma = level
    # Area-averaged down (the smaller sensor), bicubic up (the pipeline's scaler).
    resampled = resample(
        image, scale=scale, down=Image.Resampling.BILINEAR, up=Image.Resampling.BICUBIC
    )
    matrix = (1.0 - strength) * np.eye(3) + strength * SENSOR_MATRIX
    if image.shape[2] == 3:
        coloured = resampled @ matrix.T
    else:  # a grey camera sees the luma of the new sensor's response to grey light
        coloured = luma(np.repeat(resampled, 3, axis=2) @ matrix.T)
    return 255.0 * (np.clip(coloured, 0.0, 255.0) / 255.0) ** gamma
