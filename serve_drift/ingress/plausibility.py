"""Plausibility checks on decoded images: blank, black, blown-out, blurred, unlike the reference.

All statistics are computed on 8-bit grey luminance, shrunk so its longer side is at most
``_pixels.STATS_MAX_SIDE`` (256) pixels: the cost is bounded whatever the upload size, and the
blur measure (variance of the Laplacian) is comparable between a 4000-pixel photo and a
400-pixel one.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from serve_drift.ingress.config import PlausibilityConfig
from serve_drift.ingress.pixels import grey_pixels
from serve_drift.ingress.profile import InputProfile
from serve_drift.ingress.stats import laplacian_variance


@dataclass(frozen=True)
class ImageStats:
    """What the checks look at, all on the 0..255 grey scale (``mean``/``std`` in 0..1)."""

    value_range: int
    dark_fraction: float
    saturated_fraction: float
    laplacian_var: float | None  # None: under 3x3, no interior pixel to judge blur by
    mean: float
    std: float


@dataclass(frozen=True)
class Finding:
    """One check that fired on one input; ``value`` is the measurement that made it fire."""

    check: str
    row: int
    value: float


def image_stats(pixels: np.ndarray, *, dark_level: int, saturated_level: int) -> ImageStats:
    as_float = pixels.astype(np.float32)
    return ImageStats(
        value_range=int(pixels.max()) - int(pixels.min()),
        dark_fraction=float((pixels <= dark_level).mean()),
        saturated_fraction=float((pixels >= saturated_level).mean()),
        laplacian_var=laplacian_variance(as_float),
        mean=float(as_float.mean() / 255.0),
        std=float(as_float.std() / 255.0),
    )


def evaluate(
    images: Iterable[Image.Image],
    *,
    config: PlausibilityConfig,
    profile: InputProfile | None,
) -> list[Finding]:
    """Every check on every image; checks with ``action: off`` are never reported."""
    findings: list[Finding] = []
    for row, image in enumerate(images):
        stats = image_stats(
            grey_pixels(image),
            dark_level=config.dark.level,
            saturated_level=config.saturated.level,
        )
        findings.extend(_findings(stats, row=row, config=config, profile=profile))
    return findings


def _findings(
    stats: ImageStats, *, row: int, config: PlausibilityConfig, profile: InputProfile | None
) -> list[Finding]:
    measured: dict[str, tuple[float, bool]] = {
        "constant": (stats.value_range, stats.value_range <= config.constant.max_range),
        "dark": (stats.dark_fraction, stats.dark_fraction >= config.dark.fraction),
        "saturated": (
            stats.saturated_fraction,
            stats.saturated_fraction >= config.saturated.fraction,
        ),
    }
    sharpness = stats.laplacian_var
    if sharpness is not None:  # an image without interior pixels is never "blurred"
        measured["blur"] = (sharpness, sharpness < config.blur.min_laplacian_var)
    if profile is not None:
        distance = profile.excess(
            mean=stats.mean, std=stats.std, margin=config.out_of_profile.margin
        )
        measured["out_of_profile"] = (distance, distance > 0)
    return [
        Finding(check=name, row=row, value=float(value))
        for name, (value, fired) in measured.items()
        if fired and config.check(name).action != "off"
    ]
