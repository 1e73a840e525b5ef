"""Compression artefacts: a low JPEG quality (blocks, ringing), and pixelation (a video
pipeline that downsamples and upsamples). Levels follow ImageNet-C's."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from serve_drift.corruptions.base import resample, through_pil


def jpeg_compression(image: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
    """Encode as JPEG at quality ``level`` and decode again."""

    def round_trip(pil: Image.Image) -> Image.Image:
        buffer = io.BytesIO()
        pil.save(buffer, format="JPEG", quality=int(level))
        return Image.open(io.BytesIO(buffer.getvalue())).convert(pil.mode)

    return through_pil(image, round_trip)


def pixelate(image: np.ndarray, level: float, rng: np.random.Generator) -> np.ndarray:
    """Shrink to ``level`` of the size (box filter) and enlarge back (box filter)."""
    return resample(image, scale=level, down=Image.Resampling.BOX, up=Image.Resampling.BOX)
