"""Synthetic covariate shifts for uint8 image batches, to exercise drift detection.

Superseded by :mod:`serve_drift.corruptions` (fifteen corruptions, severities 1 to 5, PIL
images and arrays), whose primitives these use. This module stays for the demo and the
benchmarks, whose recorded figures use its continuous severities in [0, 1].

Every shift is a pure function ``f(images, *, severity, rng) -> images``: ``images`` is uint8
(N, H, W) or (N, H, W, C), ``severity`` in [0, 1] (0 is the identity), ``rng`` a
:class:`numpy.random.Generator`; the result is a new uint8 array of the same shape.
:func:`apply_shift` applies one to a chosen fraction of a batch.

>>> rng = np.random.default_rng(0)
>>> batch = np.full((4, 8, 8), 100, dtype=np.uint8)
>>> float(apply_shift("brightness", batch, severity=0.5, fraction=0.5, rng=rng).mean())
132.0
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Protocol

import numpy as np
from scipy import ndimage

from serve_drift.corruptions.base import to_uint8 as _to_uint8
from serve_drift.corruptions.geometry import rotate
from serve_drift.corruptions.noise import add_gaussian

# Severity 1 maps to these; chosen so severity 1 is blatant on 8x8 digits yet still an image.
MAX_NOISE_STD = 64.0  # grey levels
MAX_BRIGHTNESS_DELTA = 128.0  # grey levels
MAX_BLUR_SIGMA = 2.0  # pixels
MAX_ROTATION_DEG = 45.0


class ShiftFn(Protocol):
    def __call__(
        self, images: np.ndarray, *, severity: float, rng: np.random.Generator
    ) -> np.ndarray: ...


def gaussian_noise(
    images: np.ndarray, *, severity: float, rng: np.random.Generator, max_std: float = MAX_NOISE_STD
) -> np.ndarray:
    """Add i.i.d. Gaussian noise with std ``severity * max_std`` grey levels, then clip."""
    _check(images, severity)
    if severity == 0:
        return images.copy()
    return _to_uint8(add_gaussian(images, std=severity * max_std, rng=rng))


def brightness(
    images: np.ndarray,
    *,
    severity: float,
    rng: np.random.Generator,
    max_delta: float = MAX_BRIGHTNESS_DELTA,
    sign: int = 1,
) -> np.ndarray:
    """Add ``sign * severity * max_delta`` grey levels to every pixel, then clip.

    ``sign=-1`` darkens (also registered as the ``"darken"`` shift). ``rng`` is unused: the
    shift is deterministic, but the signature matches every other shift.
    """
    _check(images, severity)
    if sign not in (1, -1):
        raise ValueError(f"sign must be 1 or -1, got {sign!r}")
    return _to_uint8(images.astype(np.float64) + sign * severity * max_delta)


def darken(images: np.ndarray, *, severity: float, rng: np.random.Generator) -> np.ndarray:
    """:func:`brightness` with ``sign=-1``."""
    return brightness(images, severity=severity, rng=rng, sign=-1)


def occlusion(images: np.ndarray, *, severity: float, rng: np.random.Generator) -> np.ndarray:
    """Zero one square patch per image, placed uniformly at random fully inside the image.

    The side is ``round(sqrt(severity) * min(H, W))``, so the patch covers about ``severity``
    of a square image's area (exactly, up to rounding); all channels are zeroed.
    """
    _check(images, severity)
    out = images.copy()
    height, width = images.shape[1:3]
    side = round(np.sqrt(severity) * min(height, width))
    if side == 0:
        return out
    tops = rng.integers(0, height - side + 1, size=len(images))
    lefts = rng.integers(0, width - side + 1, size=len(images))
    for i, (top, left) in enumerate(zip(tops, lefts, strict=True)):
        out[i, top : top + side, left : left + side] = 0
    return out


def blur(
    images: np.ndarray,
    *,
    severity: float,
    rng: np.random.Generator,
    max_sigma: float = MAX_BLUR_SIGMA,
) -> np.ndarray:
    """Gaussian blur with sigma ``severity * max_sigma`` pixels over H and W (reflect borders).

    ``rng`` is unused (the blur is deterministic) but keeps the common signature.
    """
    _check(images, severity)
    if severity == 0:
        return images.copy()
    sigma = severity * max_sigma
    # Blur only the spatial axes: never across images in the batch or across colour channels.
    sigmas = (0.0, sigma, sigma) + ((0.0,) if images.ndim == 4 else ())
    return _to_uint8(ndimage.gaussian_filter(images.astype(np.float64), sigma=sigmas))


def rotation(
    images: np.ndarray,
    *,
    severity: float,
    rng: np.random.Generator,
    max_degrees: float = MAX_ROTATION_DEG,
) -> np.ndarray:
    """Rotate each image by ``severity * max_degrees``, direction drawn at random per image.

    Bilinear interpolation about the centre, same size, corners filled with 0.
    """
    _check(images, severity)
    if severity == 0:
        return images.copy()
    # A random direction keeps the mean orientation unchanged; only its spread shifts.
    angles = severity * max_degrees * rng.choice([-1.0, 1.0], size=len(images))
    rotated = [
        rotate(img.astype(np.float64), angle, mode="constant")
        for img, angle in zip(images, angles, strict=True)
    ]
    return _to_uint8(np.stack(rotated))


SHIFTS: Mapping[str, ShiftFn] = MappingProxyType(
    {
        "gaussian_noise": gaussian_noise,
        "brightness": brightness,
        "darken": darken,
        "occlusion": occlusion,
        "blur": blur,
        "rotation": rotation,
    }
)


def shift_mask(n: int, *, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask selecting exactly ``round(fraction * n)`` of ``n`` images at random."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction!r}")
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=round(fraction * n), replace=False)] = True
    return mask


def apply_shift(
    name: str,
    images: np.ndarray,
    *,
    severity: float,
    fraction: float = 1.0,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
    **options: Any,
) -> np.ndarray:
    """Apply shift ``name`` to a random ``fraction`` of ``images`` (or to those in ``mask``).

    Pass a ``mask`` from :func:`shift_mask` to know which images were shifted. ``options`` go
    to the shift function (e.g. ``max_sigma=3.0`` for ``"blur"``).

    >>> imgs, rng = np.zeros((10, 8, 8), dtype=np.uint8), np.random.default_rng(0)
    >>> out = apply_shift("brightness", imgs, severity=1.0, fraction=0.1, rng=rng)
    >>> int((out.reshape(10, -1).max(axis=1) > 0).sum())
    1
    """
    fn = _lookup(name)
    _check(images, severity)
    if mask is None:
        mask = shift_mask(len(images), fraction=fraction, rng=rng)
    elif mask.shape != (len(images),) or mask.dtype != np.bool_:
        raise ValueError(
            f"mask must be bool of shape ({len(images)},), got {mask.dtype} {mask.shape}"
        )
    out = images.copy()
    if mask.any():
        out[mask] = fn(images[mask], severity=severity, rng=rng, **options)
    return out


def _lookup(name: str) -> Callable[..., np.ndarray]:
    try:
        return SHIFTS[name]
    except KeyError:
        valid = ", ".join(sorted(SHIFTS))
        raise ValueError(f"unknown shift {name!r}; valid shifts: {valid}") from None


def _check(images: np.ndarray, severity: float) -> None:
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim not in (3, 4):
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"expected uint8 images (N, H, W) or (N, H, W, C), got {dtype} {shape}")
    if not 0.0 <= severity <= 1.0:
        raise ValueError(f"severity must be in [0, 1], got {severity!r}")
