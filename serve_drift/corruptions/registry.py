"""The corruptions by name, with their severity tables, and the functions that apply them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from serve_drift.corruptions import blur, camera, colour, compression, geometry, lighting, noise
from serve_drift.corruptions.base import (
    Corruption,
    CorruptionError,
    as_float,
    frozen,
    make_rng,
    restore,
    to_uint8,
)

ImageT = TypeVar("ImageT", Image.Image, np.ndarray)

_TABLE = (
    Corruption(
        "brightness",
        "lighting",
        "a brighter scene: HSV value raised",
        "added value (share of full scale)",
        (0.1, 0.2, 0.3, 0.4, 0.5),
        lighting.brightness,
    ),
    Corruption(
        "darkness",
        "lighting",
        "an under-exposed scene: value scaled down, shadows crushed",
        "(value scale, gamma)",
        ((0.8, 1.1), (0.65, 1.2), (0.5, 1.35), (0.4, 1.5), (0.3, 1.7)),
        lighting.darkness,
    ),
    Corruption(
        "contrast",
        "lighting",
        "a flat, hazy scene: pixels pulled toward the mean",
        "contrast kept",
        (0.4, 0.3, 0.2, 0.1, 0.05),
        lighting.contrast,
    ),
    Corruption(
        "gaussian_noise",
        "noise",
        "sensor read noise",
        "standard deviation (share of full scale)",
        (0.08, 0.12, 0.18, 0.26, 0.38),
        noise.gaussian_noise,
    ),
    Corruption(
        "shot_noise",
        "noise",
        "photon (Poisson) noise of a sensor short of light",
        "photons at full scale",
        (60, 25, 12, 5, 3),
        noise.shot_noise,
    ),
    Corruption(
        "impulse_noise",
        "noise",
        "dead and hot pixels (salt and pepper)",
        "share of pixel values hit",
        (0.03, 0.06, 0.09, 0.17, 0.27),
        noise.impulse_noise,
    ),
    Corruption(
        "defocus_blur",
        "blur",
        "an out-of-focus lens (disk kernel)",
        "disk radius (share of the shorter side)",
        (0.013, 0.018, 0.027, 0.036, 0.045),
        blur.defocus_blur,
        relative=True,
    ),
    Corruption(
        "motion_blur",
        "blur",
        "camera or subject motion (a line kernel at a random angle)",
        "streak length (share of the shorter side)",
        (0.03, 0.05, 0.07, 0.1, 0.13),
        blur.motion_blur,
        relative=True,
    ),
    Corruption(
        "occlusion",
        "occlusion",
        "something in front of the lens: a flat rectangle",
        "share of the area covered",
        (0.05, 0.1, 0.2, 0.3, 0.45),
        geometry.occlusion,
        options=frozen({"fill": "random"}),
    ),
    Corruption(
        "rotation",
        "geometry",
        "a camera knocked askew, either way",
        "degrees",
        (5.0, 10.0, 15.0, 22.5, 30.0),
        geometry.rotation,
    ),
    Corruption(
        "zoom",
        "geometry",
        "a lens zoomed in, or a camera moved closer",
        "magnification",
        (1.1, 1.2, 1.35, 1.5, 1.75),
        geometry.zoom,
    ),
    Corruption(
        "jpeg_compression",
        "compression",
        "a low JPEG quality setting",
        "JPEG quality",
        (25, 18, 15, 10, 7),
        compression.jpeg_compression,
    ),
    Corruption(
        "pixelate",
        "compression",
        "a pipeline that downsamples and upsamples",
        "size kept",
        (0.6, 0.5, 0.4, 0.3, 0.25),
        compression.pixelate,
    ),
    Corruption(
        "colour_cast",
        "colour",
        "white balance off: a warm, cool, green or magenta cast",
        "channel gain strength",
        (0.1, 0.2, 0.3, 0.4, 0.5),
        colour.colour_cast,
        options=frozen({"cast": "warm"}),
    ),
    Corruption(
        "camera_swap",
        "camera",
        "a new camera: lower resolution, other colour matrix and tone",
        "(resolution scale, colour-matrix strength, gamma)",
        ((0.8, 0.2, 1.05), (0.65, 0.35, 1.1), (0.5, 0.5, 1.2), (0.4, 0.7, 1.3), (0.3, 0.9, 1.45)),
        camera.camera_swap,
    ),
)

CORRUPTIONS: Mapping[str, Corruption] = frozen({c.name: c for c in _TABLE})


def get_corruption(name: str) -> Corruption:
    """The corruption called ``name``; the error lists the valid names."""
    try:
        return CORRUPTIONS[name]
    except (KeyError, TypeError):
        valid = ", ".join(sorted(CORRUPTIONS))
        raise CorruptionError(f"unknown corruption {name!r}; valid: {valid}") from None


def corrupt(
    image: ImageT,
    name: str,
    *,
    severity: int,
    seed: int | np.random.Generator = 0,
    **options: Any,
) -> ImageT:
    """``image`` (a PIL image, or a uint8 ``(H, W)`` / ``(H, W, 3)`` array) with corruption
    ``name`` at ``severity`` 1..5, returned in the same form; the same seed gives the same
    result. ``options`` are the corruption's own (``cast`` for ``colour_cast``, ``fill`` for
    ``occlusion``).

    >>> grey = np.full((16, 16), 100, dtype=np.uint8)
    >>> int(corrupt(grey, "brightness", severity=2).mean())
    151
    >>> a = corrupt(grey, "gaussian_noise", severity=3, seed=7)
    >>> b = corrupt(grey, "gaussian_noise", severity=3, seed=7)
    >>> bool((a == b).all()), a.dtype.name, a.shape
    (True, 'uint8', (16, 16))
    """
    corruption = get_corruption(name)
    level = corruption.level(severity)
    unknown = set(options) - set(corruption.options)
    if unknown:
        valid = ", ".join(corruption.options) or "none"
        raise CorruptionError(f"{name}: unknown options {sorted(unknown)}; valid: {valid}")
    values = corruption.fn(as_float(image), level, make_rng(seed), **options)
    result: ImageT = restore(values, like=image)  # type: ignore[assignment]
    return result


def corrupt_batch(
    images: np.ndarray,
    name: str,
    *,
    severity: int,
    seed: int | np.random.Generator = 0,
    **options: Any,
) -> np.ndarray:
    """A uint8 batch ``(N, H, W)`` or ``(N, H, W, 3)``, every image corrupted; one generator
    seeded once draws for the images in order, so the whole batch is reproducible.

    >>> batch = np.zeros((3, 8, 8), dtype=np.uint8)
    >>> corrupt_batch(batch, "occlusion", severity=5, seed=1, fill="black").shape
    (3, 8, 8)
    """
    if not isinstance(images, np.ndarray) or images.ndim not in (3, 4):
        raise CorruptionError(
            f"expected a batch (N, H, W[, 3]), got {getattr(images, 'shape', images)}"
        )
    rng = make_rng(seed)
    if len(images) == 0:
        return images.copy()
    return np.stack(
        [
            to_uint8(np.asarray(corrupt(img, name, severity=severity, seed=rng, **options)))
            for img in images
        ]
    )
