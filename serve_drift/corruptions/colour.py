"""Colour: a white balance that is off (a warm, cool, green or magenta cast).

A cast multiplies each channel by a gain; ``level`` is the strength. On a grey image the cast
acts through luma, as on a grey camera behind a tinted window.
"""

from __future__ import annotations

import numpy as np

from serve_drift.corruptions.base import CorruptionError, luma

# Per unit of strength: the gain added to (R, G, B). Warm = lower colour temperature.
CASTS = {
    "warm": np.array([1.0, 0.1, -1.0]),
    "cool": np.array([-1.0, 0.1, 1.0]),
    "green": np.array([-0.5, 1.0, -0.5]),
    "magenta": np.array([0.5, -1.0, 0.5]),
}


def colour_cast(
    image: np.ndarray, level: float, rng: np.random.Generator, *, cast: str = "warm"
) -> np.ndarray:
    """Multiply (R, G, B) by ``1 + level * CASTS[cast]``."""
    if cast not in CASTS:
        raise CorruptionError(f"cast must be one of {', '.join(CASTS)}, got {cast!r}")
    gains = np.clip(1.0 + level * CASTS[cast], 0.0, None)
    if image.shape[2] == 1:
        return luma(image * gains)
    return image * gains
