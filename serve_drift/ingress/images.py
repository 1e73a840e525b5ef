"""Image decoding: an explicit format allow-list, header limits, deterministic colour modes.

Colour handling (documented in the README, the same for every format):

- grey modes (``1``, ``L``, ``I``, ``I;16*``) become 8-bit grey ``L``; 16- and 32-bit integer
  grey is scaled from 0..65535 to 0..255 (Pillow's own conversion clips instead of scaling);
- alpha (``RGBA``, ``LA``, ``PA``, palette with a transparent colour) is composited onto a
  configured background grey level, so hidden pixels under transparency never leak in;
- palette and every other colour mode become ``RGB`` (``CMYK`` by Pillow's plain formula,
  without colour management: ICC profiles are ignored);
- the EXIF orientation tag is applied (phones store pictures rotated and say so there);
- an animated PNG or WebP is read as its first frame only.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from serve_drift.ingress.config import LimitsConfig
from serve_drift.ingress.errors import IngressError

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
_EXIF_ORIENTATION = 0x0112
_GREY_MODES = {"1", "L", "I", "I;16", "I;16L", "I;16B", "I;16N"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16L", "I;16B", "I;16N"}
# Magic numbers of formats we recognise only to name them in a 415: their decoders never run.
_DISALLOWED_MAGIC = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"BM", "BMP"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"8BPS", "PSD"),
    (b"%PDF", "PDF"),
    (b"\x00\x00\x00\x0cjP  ", "JPEG 2000"),
    (b"<", "SVG or XML"),
)


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image in ``L`` or ``RGB`` mode plus what it was before normalisation."""

    image: Image.Image
    format: str
    source_mode: str
    frames: int
    raw: bytes


def decode_image(raw: bytes, *, limits: LimitsConfig, alpha_background: int) -> DecodedImage:
    """Decode one JPEG, PNG or WebP; raise :class:`IngressError` for anything else.

    >>> from serve_drift.ingress import LimitsConfig
    >>> decode_image(b"GIF89a...", limits=LimitsConfig(), alpha_background=0)
    Traceback (most recent call last):
    ...
    serve_drift.ingress.errors.IngressError: unsupported_image_format: GIF images are not \
accepted; send JPEG, PNG or WebP
    """
    image = _open(raw)
    _check_size(image, limits)
    frames = int(getattr(image, "n_frames", 1) or 1)
    _load_first_frame(image)
    source_mode = image.mode
    normalised = normalise_mode(_oriented(image), background=alpha_background)
    return DecodedImage(
        image=normalised, format=str(image.format), source_mode=source_mode, frames=frames, raw=raw
    )


def _open(raw: bytes) -> Image.Image:
    disallowed = next((name for magic, name in _DISALLOWED_MAGIC if raw.startswith(magic)), None)
    if disallowed is not None:
        raise IngressError(
            "unsupported_image_format",
            f"{disallowed} images are not accepted; send JPEG, PNG or WebP",
        )
    try:
        # Pillow warns (or raises) about decompression bombs from the header alone; either
        # way the answer is the same as our own, stricter, pixel limit.
        return Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _too_large("the image has too many pixels") from None
    except Exception:
        raise IngressError(
            "image_decode_failed", "the image could not be decoded as JPEG, PNG or WebP"
        ) from None


def _too_large(message: str) -> IngressError:
    return IngressError("image_too_large", message)


def _check_size(image: Image.Image, limits: LimitsConfig) -> None:
    """From the header only: nothing has been decompressed yet."""
    width, height = image.size
    if width < 1 or height < 1:
        raise IngressError("image_decode_failed", "the image has no pixels")
    if max(width, height) > limits.max_side:
        raise _too_large(f"the image is larger than {limits.max_side} pixels on a side")
    if width * height > limits.max_pixels:
        raise _too_large(f"the image has more than {limits.max_pixels} pixels")


def _load_first_frame(image: Image.Image) -> None:
    try:
        image.seek(0)
        image.load()
    except Exception:
        raise IngressError(
            "image_decode_failed", "the image data is truncated or corrupt"
        ) from None


def _oriented(image: Image.Image) -> Image.Image:
    try:
        orientation = image.getexif().get(_EXIF_ORIENTATION, 1)
        if orientation in range(2, 9):
            return ImageOps.exif_transpose(image) or image
    except Exception:  # a corrupt EXIF block: keep the pixels as stored
        pass
    return image


def normalise_mode(image: Image.Image, *, background: int) -> Image.Image:
    """``L`` for grey sources, ``RGB`` for everything else; see the module docstring.

    >>> normalise_mode(Image.new("I;16", (2, 2), 65535), background=0).getpixel((0, 0))
    255
    """
    if image.mode in _WIDE_GREY_MODES:
        return _wide_grey_to_l(image)
    if image.mode in _GREY_MODES:
        return image.convert("L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        return _composite(image, background=background)
    return image if image.mode == "RGB" else image.convert("RGB")


def _wide_grey_to_l(image: Image.Image) -> Image.Image:
    values = np.asarray(image, dtype=np.int64)
    scaled = np.clip(values, 0, 65535) * 255 // 65535
    return Image.fromarray(scaled.astype(np.uint8))  # uint8 2-D: "L"


def _composite(image: Image.Image, *, background: int) -> Image.Image:
    grey = image.mode in ("LA", "La")
    rgba = image.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (background, background, background, 255))
    flat = Image.alpha_composite(base, rgba)
    return flat.convert("L" if grey else "RGB")
