"""Grey pixels for statistics, at a bounded size whatever the upload size."""

from __future__ import annotations

import numpy as np
from PIL import Image

STATS_MAX_SIDE = 256


def grey_pixels(image: Image.Image) -> np.ndarray:
    """uint8 luminance with the longer side at most ``STATS_MAX_SIDE``.

    >>> grey_pixels(Image.new("RGB", (1000, 500))).shape
    (128, 256)
    """
    grey = image if image.mode == "L" else image.convert("L")
    if max(grey.size) > STATS_MAX_SIDE:
        grey = grey.copy()
        grey.thumbnail((STATS_MAX_SIDE, STATS_MAX_SIDE), Image.Resampling.BILINEAR)
    return np.asarray(grey, dtype=np.uint8)
