"""What every corruption shares: the image forms it accepts, its severity table, its errors.

Corruptions work on one image at a time, as a float array ``(H, W, C)`` of grey levels in
[0, 255] with ``C`` 1 (grey) or 3 (RGB); :func:`as_float` and :func:`restore` convert PIL images
and uint8 arrays to and from that form, so a corruption never sees the caller's type.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from PIL import Image

from serve_drift.errors import ServeDriftError

SEVERITIES = (1, 2, 3, 4, 5)
FAMILIES = (
    "lighting",
    "noise",
    "blur",
    "occlusion",
    "geometry",
    "compression",
    "colour",
    "camera",
)
# BT.601 luma weights: what a grey camera (or the digits model's preprocessing) sees of RGB.
LUMA = np.array([0.299, 0.587, 0.114])

# fn(image (H, W, C) float in [0, 255], level, rng, **options) -> float (H, W, C)
CorruptionFn = Callable[..., np.ndarray]


class CorruptionError(ServeDriftError, ValueError):
    """A corruption asked for with a wrong name, severity, image or option."""

    code = "invalid_corruption"


@dataclass(frozen=True)
class Corruption:
    """One corruption: its family, what its parameter means, and the value at each severity.

    ``levels[s - 1]`` is the parameter at severity ``s``; ``relative`` says the parameter is a
    fraction of the image's shorter side (so a severity means the same on 8 px and 1080 px).
    """

    name: str
    family: str
    description: str
    parameter: str
    levels: tuple[Any, ...]
    fn: CorruptionFn = field(repr=False, compare=False)
    relative: bool = False
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise CorruptionError(f"{self.name}: family {self.family!r} not in {FAMILIES}")
        if len(self.levels) != len(SEVERITIES):
            raise CorruptionError(f"{self.name}: one level per severity 1..5")

    def level(self, severity: int) -> Any:
        """The parameter at ``severity`` (1..5)."""
        return self.levels[check_severity(severity) - 1]


def check_severity(severity: Any) -> int:
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer):
        raise CorruptionError(f"severity must be a whole number 1..5, got {severity!r}")
    if int(severity) not in SEVERITIES:
        raise CorruptionError(f"severity must be 1..5, got {severity!r}")
    return int(severity)


def make_rng(seed: int | np.random.Generator) -> np.random.Generator:
    """A generator from a seed; a generator passed in is used as it is (and advanced)."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise CorruptionError(f"seed must be a non-negative int or a Generator, got {seed!r}")
    return np.random.default_rng(int(seed))


def as_float(image: Image.Image | np.ndarray) -> np.ndarray:
    """``(H, W, C)`` float64 grey levels of a PIL image or a uint8 ``(H, W[, C])`` array."""
    if isinstance(image, Image.Image):
        image = np.asarray(_rgb_or_grey(image))
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        kind = getattr(image, "dtype", type(image).__name__)
        raise CorruptionError(f"expected a PIL image or a uint8 array, got {kind}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3) or min(image.shape[:2]) < 1:
        raise CorruptionError(f"expected a grey (H, W) or RGB (H, W, 3) image, got {image.shape}")
    return image.astype(np.float64)


def restore(values: np.ndarray, *, like: Image.Image | np.ndarray) -> Image.Image | np.ndarray:
    """``values`` back in the caller's form: a PIL image of the same mode, or a uint8 array of
    the same number of dimensions."""
    pixels = to_uint8(values)
    if isinstance(like, Image.Image):
        grey = _rgb_or_grey(like).mode == "L"
        return Image.fromarray(pixels[:, :, 0] if grey else pixels)
    return pixels[:, :, 0] if like.ndim == 2 else pixels


def to_uint8(values: np.ndarray) -> np.ndarray:
    """Round and clip to uint8 (what a camera or an encoder would write)."""
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _rgb_or_grey(image: Image.Image) -> Image.Image:
    # Grey stays grey, everything else (palette, RGBA, CMYK, 16-bit) becomes RGB: alpha and
    # ICC profiles are not something a camera corruption acts on.
    if image.mode == "L":
        return image
    if image.mode in ("1", "I;16", "I"):
        return image.convert("L") if image.mode == "1" else _sixteen_to_grey(image)
    return image.convert("RGB")


def _sixteen_to_grey(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.float64) / 257.0  # as ingress does: scaled, not clipped
    return Image.fromarray(to_uint8(values))


def shorter_side(image: np.ndarray) -> int:
    return int(min(image.shape[:2]))


def luma(image: np.ndarray) -> np.ndarray:
    """``(H, W, 1)`` luma of an ``(H, W, C)`` image (grey is its own luma)."""
    if image.shape[2] == 1:
        return image
    return (image @ LUMA)[:, :, None]


def through_pil(image: np.ndarray, work: Callable[[Image.Image], Image.Image]) -> np.ndarray:
    """Run a Pillow operation on ``image`` and come back to ``(H', W', C)`` floats."""
    pixels = to_uint8(image)
    pil = Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels)
    out = np.asarray(work(pil), dtype=np.float64)
    return out[:, :, None] if out.ndim == 2 else out


def resample(
    image: np.ndarray, *, scale: float, down: Image.Resampling, up: Image.Resampling
) -> np.ndarray:
    """Shrink ``image`` to ``scale`` of its size with filter ``down`` and enlarge it back to
    its own size with ``up``: detail below the smaller size is lost, as on a smaller sensor."""
    height, width = image.shape[:2]
    small = (max(1, round(width * scale)), max(1, round(height * scale)))
    return through_pil(image, lambda pil: pil.resize(small, down).resize((width, height), up))


def frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))
