"""From a request body and its ``Content-Type`` to images or a tensor batch, or a typed error."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from serve_drift.ingress.config import IngressConfig
from serve_drift.ingress.errors import IngressError
from serve_drift.ingress.images import DecodedImage, decode_image
from serve_drift.ingress.jsonscan import load_json
from serve_drift.ingress.tensors import decode_npy, tensor_from_json

IMAGE_MEDIA_TYPES = frozenset({"image/jpeg", "image/jpg", "image/png", "image/webp"})
JSON_MEDIA_TYPES = frozenset({"application/json"})
NPY_MEDIA_TYPES = frozenset({"application/x-npy", "application/npy"})
_JSON_KEYS = ("image", "images", "tensor")
_DATA_URL_PREFIX = "data:"


@dataclass(frozen=True)
class Payload:
    """Exactly one of ``images`` (decoded, normalised) or ``tensor`` (float32 batch) is set."""

    images: tuple[DecodedImage, ...] = ()
    tensor: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.images) if self.tensor is None else len(self.tensor)


def media_type(content_type: str) -> str:
    """``"Image/PNG; charset=x"`` -> ``"image/png"``."""
    return content_type.split(";", 1)[0].strip().lower()


def decode_payload(
    *,
    content_type: str,
    body: bytes,
    config: IngressConfig,
    input_shape: Sequence[int] | None = None,
) -> Payload:
    """Decode a body already read within the size limit; only ever raises ``IngressError``.

    ``input_shape`` (e.g. ``(3, 224, 224)``) enables tensor payloads; without it they get 415.

    >>> decode_payload(content_type="text/plain", body=b"hi", config=IngressConfig())
    Traceback (most recent call last):
    ...
    serve_drift.ingress.errors.IngressError: unsupported_media_type: send image/jpeg, \
image/png, image/webp or application/json
    """
    if not body:
        raise IngressError("empty_body", "the request body is empty")
    if len(body) > config.limits.max_body_bytes:
        raise IngressError(
            "body_too_large", f"the body exceeds {config.limits.max_body_bytes} bytes"
        )
    kind = media_type(content_type)
    if kind in IMAGE_MEDIA_TYPES:
        return Payload(images=(_image(body, config),))
    if kind in JSON_MEDIA_TYPES:
        return _json_payload(body, config=config, input_shape=input_shape)
    if kind in NPY_MEDIA_TYPES and input_shape is not None:
        return Payload(tensor=decode_npy(body, input_shape=input_shape, limits=config.limits))
    raise IngressError("unsupported_media_type", _accepted_types(input_shape))


def _accepted_types(input_shape: Sequence[int] | None) -> str:
    tensors = " or application/x-npy" if input_shape is not None else ""
    separator = "," if tensors else " or"
    return f"send image/jpeg, image/png, image/webp{separator} application/json{tensors}"


def _image(raw: bytes, config: IngressConfig) -> DecodedImage:
    return decode_image(raw, limits=config.limits, alpha_background=config.alpha_background)


def _json_payload(
    body: bytes, *, config: IngressConfig, input_shape: Sequence[int] | None
) -> Payload:
    payload = load_json(body, max_depth=config.limits.max_json_depth)
    key = _single_key(payload, tensors=input_shape is not None)
    if key == "tensor":
        assert input_shape is not None
        tensor = tensor_from_json(payload[key], input_shape=input_shape, limits=config.limits)
        return Payload(tensor=tensor)
    encoded = [payload[key]] if key == "image" else _batch(payload[key], config)
    return Payload(images=tuple(_image(_b64(item), config) for item in encoded))


def _single_key(payload: Any, *, tensors: bool) -> str:
    keys = _JSON_KEYS if tensors else _JSON_KEYS[:2]
    if isinstance(payload, dict) and len(payload) == 1 and next(iter(payload)) in keys:
        return str(next(iter(payload)))
    shapes = ['{"image": "<base64>"}', '{"images": ["<base64>", ...]}']
    if tensors:
        shapes.append('{"tensor": [[...]]}')
    raise IngressError("invalid_schema", f"send exactly one of {', '.join(shapes)}")


def _batch(items: object, config: IngressConfig) -> list[object]:
    limit = config.limits.max_batch
    if not isinstance(items, list) or not 1 <= len(items) <= limit:
        raise IngressError(
            "invalid_batch", f'"images" must be a list of 1 to {limit} base64 strings'
        )
    return items


def _b64(item: object) -> bytes:
    if not isinstance(item, str):
        raise IngressError("invalid_schema", "images must be base64 strings")
    if item.startswith(_DATA_URL_PREFIX):  # "data:image/png;base64,...." from browsers
        item = item.partition(",")[2]
    try:
        decoded = base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise IngressError("invalid_base64", "an image is not valid base64") from None
    if not decoded:
        raise IngressError("invalid_base64", "an image is empty")
    return decoded
