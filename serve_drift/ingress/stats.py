"""Image statistics, computed once here for everyone: plausibility checks and the event log.

:func:`laplacian_variance` is the one blur measure; :func:`compute_input_stats` summarises an
image for the event log (:class:`~serve_drift.messages.InputStats`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_drift.messages import InputStats

# BT.601 luma: the usual brightness weighting of R, G, B.
_LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114], dtype=np.float32)


def laplacian_variance(pixels: np.ndarray) -> float | None:
    """Variance of the 4-neighbour Laplacian over interior pixels; ``None`` if there are none.

    A sharp edge gives large second derivatives; blur flattens them. An image under 3x3 has no
    interior pixel: its sharpness is unknown, neither sharp nor blurred. The value is on the
    scale of ``pixels`` squared (grey levels², or 0..1 intensities²).

    >>> laplacian_variance(np.zeros((2, 5))) is None
    True
    >>> laplacian_variance(np.eye(3))
    0.0
    """
    if min(pixels.shape[:2]) < 3:
        return None
    lap = (
        pixels[1:-1, :-2]
        + pixels[1:-1, 2:]
        + pixels[:-2, 1:-1]
        + pixels[2:, 1:-1]
        - 4.0 * pixels[1:-1, 1:-1]
    )
    return float(lap.var())


def compute_input_stats(image: np.ndarray, *, max_side: int = 256) -> InputStats:
    """Statistics of a decoded uint8 image, ``(H, W)`` or ``(H, W, C)``.

    Cheap by construction: images larger than ``max_side`` on their long side are subsampled
    with a stride first (width and height are still the original ones). About 0.1 ms for an
    8x8 digit and 0.4-1 ms for a 224x224 RGB image on one core (``benchmarks/event_store.py``
    measures it). Sharpness is measured at the subsampled scale, so compare it between inputs
    of similar size.

    >>> stats = compute_input_stats(np.full((4, 6, 3), 255, dtype=np.uint8))
    >>> (stats.width, stats.height, stats.brightness, stats.sharpness)
    (6, 4, 1.0, 0.0)
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or 0 in image.shape:
        raise ValueError(
            f"expected a non-empty uint8 (H, W) or (H, W, C) image, got {image.dtype} {image.shape}"
        )
    height, width = image.shape[:2]
    pixels = image if image.ndim == 3 else image[:, :, None]
    step = max(1, -(-max(height, width) // max_side))  # ceil division
    small = pixels[::step, ::step].astype(np.float32) * np.float32(1.0 / 255.0)
    luma = _luma(small)
    sharpness = laplacian_variance(luma)
    return InputStats(
        width=int(width),
        height=int(height),
        channels=int(pixels.shape[2]),
        brightness=_round(luma.mean()),
        contrast=_round(luma.std()),
        # Schema v1 stores a number: 0.0 when the thumbnail has no interior pixel to judge.
        sharpness=0.0 if sharpness is None else _round(sharpness),
        channel_means=tuple(_round(m) for m in _channel_means(small)),
    )


def _channel_means(pixels: np.ndarray) -> np.ndarray:
    flat = pixels.reshape(-1, pixels.shape[2])
    # A matrix product instead of mean(axis=0): numpy's strided reduction over the channel-last
    # layout is ~30x slower than BLAS here (0.8 ms against 0.03 ms for 224x224x3).
    sums = np.ones(len(flat), dtype=np.float32) @ flat
    return sums.astype(np.float64) / len(flat)


def _luma(pixels: np.ndarray) -> np.ndarray:
    if pixels.shape[2] >= 3:  # RGB or RGBA: alpha does not contribute to brightness
        return pixels[:, :, :3] @ _LUMA_WEIGHTS
    return pixels[:, :, 0]  # grey, or grey + alpha


def _round(value: float | np.floating[Any]) -> float:
    # Six decimals are far below any drift that matters and keep stored JSON short.
    return round(float(value), 6)
