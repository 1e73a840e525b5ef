"""Framing: something in front of the lens, a camera knocked askew, a lens zoomed in."""

from __future__ import annotations

import numpy as np
from PIL import Image
from scipy import ndimage

from serve_drift.corruptions.base import CorruptionError, through_pil


def occlusion(
    image: np.ndarray, level: float, rng: np.random.Generator, *, fill: str = "random"
) -> np.ndarray:
    """Cover a rectangle of about ``level`` of the image's area, placed at random fully inside.

    Its aspect ratio is drawn from [0.5, 2]; ``fill`` is ``"random"`` (one flat grey level per
    image, a sticker or a hand), ``"black"`` or ``"noise"`` (uniform per pixel).
    """
    height, width = image.shape[:2]
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0)))
    area = level * height * width
    h = int(np.clip(round(np.sqrt(area * aspect)), 1, height))
    w = int(np.clip(round(area / h), 1, width))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    out = image.copy()
    out[top : top + h, left : left + w] = _fill(fill, (h, w, image.shape[2]), rng)
    return out


def _fill(kind: str, shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    if kind == "random":
        return np.full(shape, rng.uniform(0.0, 255.0))
    if kind == "black":
        return np.zeros(shape)
    if kind == "noise":
        return rng.uniform(0.0, 255.0, size=shape)
    raise CorruptionError(f"occlusion fill must be random, black or noise, got {kind!r}")


def rotation(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Rotate by ``level`` degrees about the centre, clockwise or not at random (one draw per
    image); bilinear, same size, the uncovered corners filled from the nearest edge pixel."""
    angle = level * rng.choice([-1.0, 1.0])
    return rotate(image, angle)


def rotate(image: np.ndarray, angle_deg: float, *, mode: str = "nearest") -> np.ndarray:
    """``image`` (``(H, W)`` or ``(H, W, C)``) rotated by ``angle_deg`` about its centre
    (bilinear, same size); ``mode`` fills the uncovered corners as :func:`scipy.ndimage.rotate`
    does (``"constant"``: with 0)."""
    return ndimage.rotate(image, angle_deg, axes=(1, 0), reshape=False, order=1, mode=mode)


def zoom(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Magnify ``level`` times about the centre: crop the central 1/``level`` and resize it back
    to the full size (bilinear), as a longer focal length or a closer camera would."""
    height, width = image.shape[:2]
    crop_h, crop_w = max(1, round(height / level)), max(1, round(width / level))
    top, left = (height - crop_h) / 2, (width - crop_w) / 2
    box = (left, top, left + crop_w, top + crop_h)
    return through_pil(
        image, lambda pil: pil.resize((width, height), Image.Resampling.BILINEAR, box=box)
    )
