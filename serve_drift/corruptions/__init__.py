"""Image corruptions for drift drills: what cameras and pipelines do to images in production.

Fifteen corruptions in eight families, each with severities 1 (mild) to 5 (severe) in the
spirit of ImageNet-C (Hendrycks and Dietterich, 2019), on PIL images and uint8 arrays, and
deterministic with a seed:

- **lighting**: ``brightness``, ``darkness``, ``contrast``;
- **noise**: ``gaussian_noise``, ``shot_noise``, ``impulse_noise``;
- **blur**: ``defocus_blur``, ``motion_blur``;
- **occlusion**: ``occlusion``;
- **geometry**: ``rotation``, ``zoom``;
- **compression**: ``jpeg_compression``, ``pixelate``;
- **colour**: ``colour_cast`` (white balance);
- **camera**: ``camera_swap`` (resolution, colour matrix and tone curve at once).

Spatial sizes (blur radii, streak lengths) are shares of the image's shorter side, so a
severity means the same on an 8-pixel digit and a 1080p frame. ``CORRUPTIONS[name].levels``
lists each severity's parameter.

>>> from PIL import Image
>>> photo = Image.new("RGB", (64, 48), (120, 80, 40))
>>> corrupt(photo, "colour_cast", severity=3, cast="cool").getpixel((0, 0))
(84, 82, 52)
>>> sorted(CORRUPTIONS) == sorted(CORRUPTION_NAMES)
True
"""

from serve_drift.corruptions.base import FAMILIES, SEVERITIES, Corruption, CorruptionError
from serve_drift.corruptions.registry import CORRUPTIONS, corrupt, corrupt_batch, get_corruption

CORRUPTION_NAMES = tuple(CORRUPTIONS)

__all__ = [
    "CORRUPTIONS",
    "CORRUPTION_NAMES",
    "FAMILIES",
    "SEVERITIES",
    "Corruption",
    "CorruptionError",
    "corrupt",
    "corrupt_batch",
    "get_corruption",
]
