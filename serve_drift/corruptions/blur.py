"""Optical blur: an out-of-focus lens (a disk kernel) and camera or subject motion (a line).

Radii and lengths are shares of the image's shorter side, so a severity looks the same at any
resolution. A kernel is the blur shape as seen between pixels that each integrate over their
area (the shape convolved with a pixel-wide tent, by supersampling), so sub-pixel radii still
blur a little, and a zero radius is the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage

_SUPERSAMPLE = 8


def defocus_blur(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a disk of radius ``level`` times the shorter side."""
    return convolve(image, disk_kernel(level * min(image.shape[:2])))


def motion_blur(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Convolve with a line of length ``level`` times the shorter side at a random angle in
    [-45°, 45°] (drawn from ``rng``: one per image)."""
    length = level * min(image.shape[:2])
    angle = rng.uniform(-45.0, 45.0)
    return convolve(image, line_kernel(length, angle_deg=angle))


def convolve(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Each channel convolved with ``kernel``, edges extended (no dark frame at the border)."""
    return np.stack(
        [ndimage.convolve(image[:, :, c], kernel, mode="nearest") for c in range(image.shape[2])],
        axis=2,
    )


def disk_kernel(radius: float) -> np.ndarray:
    """The pixel-to-pixel weights of a disk of ``radius`` pixels (sums to 1).

    >>> disk_kernel(0.0).round(3).tolist()
    [[0.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]
    """
    return _kernel(radius, lambda x, y: x**2 + y**2 <= radius**2)


def line_kernel(length: float, *, angle_deg: float) -> np.ndarray:
    """The pixel-to-pixel weights of a segment of ``length`` pixels through the centre."""
    theta = np.deg2rad(angle_deg)
    dx, dy = np.cos(theta), np.sin(theta)

    def inside(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        along, across = x * dx + y * dy, -x * dy + y * dx
        return (np.abs(along) <= length / 2) & (np.abs(across) <= 0.5 / _SUPERSAMPLE)

    return _kernel(length / 2, inside)


def _kernel(reach: float, inside: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    half = int(np.ceil(reach)) + 1
    # Fine sample points over the shape, in pixels from the centre (the centre included, so
    # a zero-size shape is one point: the identity).
    ticks = np.arange(-half * _SUPERSAMPLE, half * _SUPERSAMPLE + 1) / _SUPERSAMPLE
    y, x = np.meshgrid(ticks, ticks, indexing="ij")
    weights = np.asarray(inside(x, y), dtype=np.float64)
    # Each sample spreads over the pixels around it by the tent of pixel-area integration.
    offsets = np.arange(-half, half + 1)
    tent = np.clip(1.0 - np.abs(offsets[None, :] - ticks[:, None]), 0.0, None)
    kernel = tent.T @ weights @ tent
    return kernel / kernel.sum()
