"""Encode uint8 arrays as real image bytes (PNG, JPEG), e.g. for the demo client's HTTP requests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def encode_png(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a uint8 grey (H, W) or RGB (H, W, 3) image.

    >>> encode_png(np.zeros((8, 8), dtype=np.uint8))[:4]
    b'\\x89PNG'
    """
    return _encode(image, format="PNG")


def encode_jpeg(image: np.ndarray, quality: int = 95) -> bytes:
    """JPEG bytes of a uint8 grey (H, W) or RGB (H, W, 3) image (lossy; ``quality`` 1..95).

    >>> encode_jpeg(np.zeros((8, 8), dtype=np.uint8))[:2]
    b'\\xff\\xd8'
    """
    # Pillow documents values above 95 as pointless (bigger files, no visible gain).
    if not 1 <= quality <= 95:
        raise ValueError(f"quality must be in 1..95, got {quality!r}")
    return _encode(image, format="JPEG", quality=quality)


def _encode(image: np.ndarray, *, format: str, **params: int) -> bytes:
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format=format, **params)
    return buffer.getvalue()


def _to_pil(image: np.ndarray) -> Image.Image:
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]  # (H, W, 1) is grey
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return Image.fromarray(image)  # uint8 (H, W) -> "L", (H, W, 3) -> "RGB"
    raise ValueError(f"expected a grey (H, W) or RGB (H, W, 3) image, got shape {image.shape}")
