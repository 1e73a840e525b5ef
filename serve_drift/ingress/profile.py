"""Input profile: the range of simple pixel statistics the reference images showed.

A reference set holds embeddings only, so "statistics far outside what the reference saw" needs
its own small record, built from the same images the reference set was embedded from. It is a
JSON file (never a pickle). The embedded digits model builds one from its reference pool; for
your own model, build it once from your reference images::

    InputProfile.from_images(images, source="val-2026-10").save("/models/input-profile.json")

We chose the reference images over "the first N images served": the first traffic after a
deploy may itself be broken, and every replica would learn a different profile.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serve_drift.ingress.pixels import grey_pixels

# Quantiles, not min/max: one odd reference image should not widen the bounds for ever.
LOW_QUANTILE = 0.001
HIGH_QUANTILE = 0.999
SCHEMA = "serve-drift-input-profile/1"


@dataclass(frozen=True)
class InputProfile:
    """Quantile bounds of per-image grey mean and standard deviation (both in 0..1)."""

    mean_low: float
    mean_high: float
    std_low: float
    std_high: float
    count: int
    source: str

    @classmethod
    def from_images(
        cls, images: Iterable[Image.Image | np.ndarray], *, source: str
    ) -> InputProfile:
        """Images as PIL images or uint8 arrays (H, W) / (H, W, C).

        >>> imgs = [np.full((8, 8), v, dtype=np.uint8) for v in (0, 128, 255)]
        >>> round(InputProfile.from_images(imgs, source="doc").mean_high, 2)
        1.0
        """
        stats = np.array([_mean_std(grey_pixels(_as_pil(image))) for image in images])
        if len(stats) == 0:
            raise ValueError("an input profile needs at least one image")
        low, high = np.quantile(stats, [LOW_QUANTILE, HIGH_QUANTILE], axis=0)
        return cls(
            mean_low=float(low[0]),
            mean_high=float(high[0]),
            std_low=float(low[1]),
            std_high=float(high[1]),
            count=len(stats),
            source=source,
        )

    def excess(self, *, mean: float, std: float, margin: float) -> float:
        """How far outside the widened bounds, in units of the bounds' width (0: inside).

        Each range is widened by ``margin`` times its own width on both sides.
        """
        return max(
            _outside(mean, self.mean_low, self.mean_high, margin),
            _outside(std, self.std_low, self.std_high, margin),
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps({"schema": SCHEMA, **asdict(self)}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> InputProfile:
        data = json.loads(Path(path).read_text())
        if data.pop("schema", None) != SCHEMA:
            raise ValueError(f"{path} is not a serve-drift input profile ({SCHEMA})")
        return cls(**data)


def _as_pil(image: Image.Image | np.ndarray) -> Image.Image:
    return image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))


def _mean_std(pixels: np.ndarray) -> tuple[float, float]:
    as_float = pixels.astype(np.float32) / 255.0
    return float(as_float.mean()), float(as_float.std())


def _outside(value: float, low: float, high: float, margin: float) -> float:
    width = max(high - low, 1e-6)
    slack = margin * width
    if value < low - slack:
        return (low - slack - value) / width
    if value > high + slack:
        return (value - high - slack) / width
    return 0.0
