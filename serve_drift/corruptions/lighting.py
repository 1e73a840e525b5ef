"""Lighting: brighter or darker scenes, and flat (low-contrast) ones.

The shapes follow ImageNet-C (Hendrycks and Dietterich, 2019): brightness adds to HSV value,
contrast pulls every pixel toward the image mean. Darkness (under-exposure, not in ImageNet-C)
scales value down and steepens the tone curve, so shadows are crushed as on a sensor short of
light.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def brightness(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Add ``level`` (a share of full scale) to each pixel's HSV value, hue and saturation kept.

    >>> float(brightness(np.full((2, 2, 1), 100.0), 0.2, np.random.default_rng(0))[0, 0, 0])
    151.0
    """
    return _with_value(image, lambda value: value + 255.0 * level)


def darkness(image: np.ndarray, level: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """Scale HSV value by ``level[0]`` and raise it to the power ``level[1]`` (on 0..1)."""
    scale, gamma = level
    return _with_value(image, lambda value: 255.0 * (scale * value / 255.0) ** gamma)


def contrast(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Keep ``level`` of each pixel's distance from the image's mean grey level."""
    mean = image.mean()
    return (image - mean) * level + mean


def _with_value(image: np.ndarray, change: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Apply ``change`` to HSV value (the largest channel), scaling all channels with it, so
    hue and saturation are kept; a black pixel becomes the new grey."""
    value = image.max(axis=2, keepdims=True)
    new = np.clip(change(value), 0.0, 255.0)
    scale = np.divide(new, value, out=np.zeros_like(value), where=value > 0)
    return np.where(value > 0, image * scale, new)
