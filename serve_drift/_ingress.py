"""Decoding request payloads into images, with typed errors that map to HTTP answers."""

from __future__ import annotations

import base64
import binascii
import io
import json
from dataclasses import dataclass

from PIL import Image

ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP")
IMAGE_CONTENT_TYPES = {"image/jpeg", "image/jpg", "image/png", "image/webp"}
MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PIXELS = 40_000_000
MAX_BATCH = 64


@dataclass
class IngressError(Exception):
    """A rejected request: ``status`` and a stable machine-readable ``code``."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


def decode_images(*, content_type: str, body: bytes) -> list[Image.Image]:
    """Raw image bytes, or JSON ``{"image": b64}`` / ``{"images": [b64, ...]}``."""
    if not body:
        raise IngressError(400, "empty_body", "the request body is empty")
    if len(body) > MAX_BODY_BYTES:
        raise IngressError(413, "body_too_large", f"the body exceeds {MAX_BODY_BYTES} bytes")
    media_type = content_type.split(";")[0].strip().lower()
    if media_type in IMAGE_CONTENT_TYPES:
        return [decode_image_bytes(body)]
    if media_type == "application/json":
        return [decode_image_bytes(raw) for raw in _json_images(body)]
    raise IngressError(
        415, "unsupported_media_type", "send image/jpeg, image/png, image/webp or application/json"
    )


def _json_images(body: bytes) -> list[bytes]:
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError):
        raise IngressError(400, "invalid_json", "the body is not valid JSON") from None
    if not isinstance(payload, dict) or ("image" in payload) == ("images" in payload):
        raise IngressError(
            422, "invalid_schema", 'send {"image": "<base64>"} or {"images": ["<base64>", ...]}'
        )
    encoded = [payload["image"]] if "image" in payload else payload["images"]
    if not isinstance(encoded, list) or not encoded or len(encoded) > MAX_BATCH:
        raise IngressError(
            422, "invalid_batch", f'"images" must be a list of 1 to {MAX_BATCH} base64 strings'
        )
    return [_b64(item) for item in encoded]


def _b64(item: object) -> bytes:
    if not isinstance(item, str):
        raise IngressError(422, "invalid_schema", "images must be base64 strings")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise IngressError(400, "invalid_base64", "an image is not valid base64") from None


def decode_image_bytes(raw: bytes) -> Image.Image:
    """Open with an explicit decoder allow-list; check the size from the header before decoding."""
    try:
        image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
    except Exception:
        raise IngressError(
            400, "image_decode_failed", "the image could not be decoded as JPEG, PNG or WebP"
        ) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise IngressError(413, "image_too_large", f"the image has more than {MAX_PIXELS} pixels")
    try:
        image.load()
    except Exception:
        raise IngressError(
            400, "image_decode_failed", "the image data is truncated or corrupt"
        ) from None
    return image
