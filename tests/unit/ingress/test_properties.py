"""Property tests: whatever the bytes or JSON, the decoder returns inputs or raises our typed
error, never anything else, and decoded inputs always have the documented form."""

from __future__ import annotations

import base64
import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from serve_drift.ingress import (
    STATUS_BY_CODE,
    IngressConfig,
    IngressError,
    Payload,
    decode_payload,
)
from serve_drift.ingress.jsonscan import nesting_depth

CONFIG = IngressConfig.model_validate({"limits": {"max_pixels": 1_000_000}})
INPUT_SHAPE = (1, 4, 4)
CONTENT_TYPES = st.sampled_from(
    ["image/png", "image/jpeg", "image/webp", "application/json", "application/x-npy", "text/x"]
)
PROPERTY_SETTINGS = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


def _decode(content_type: str, body: bytes) -> Payload | IngressError:
    try:
        return decode_payload(
            content_type=content_type, body=body, config=CONFIG, input_shape=INPUT_SHAPE
        )
    except IngressError as error:
        return error


def _assert_well_formed(outcome: Payload | IngressError) -> None:
    if isinstance(outcome, IngressError):
        assert STATUS_BY_CODE[outcome.code] == outcome.status and outcome.message
        return
    assert len(outcome) >= 1
    if outcome.tensor is not None:
        assert outcome.tensor.dtype == np.float32 and np.isfinite(outcome.tensor).all()
        assert outcome.tensor.shape[1:] == INPUT_SHAPE
    for decoded in outcome.images:
        assert decoded.image.mode in ("L", "RGB")
        assert decoded.image.width * decoded.image.height <= CONFIG.limits.max_pixels


def _valid_image(draw: st.DrawFn) -> bytes:
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "LA"]))
    size = (draw(st.integers(1, 12)), draw(st.integers(1, 12)))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "WEBP"]))
    image = Image.new(mode, size)
    if fmt == "JPEG" and mode not in ("L", "RGB"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@st.composite
def mutated_images(draw: st.DrawFn) -> bytes:
    """Real image files with random bytes flipped, cut or appended: the hard cases."""
    raw = bytearray(_valid_image(draw))
    for _ in range(draw(st.integers(0, 4))):
        position = draw(st.integers(0, len(raw) - 1))
        raw[position] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(raw)))
    return bytes(raw[:cut]) + draw(st.binary(max_size=16))


JSON_LEAVES = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(st.sampled_from(["image", "images", "tensor", "x"]), children, max_size=3)
    ),
    max_leaves=40,
)


@PROPERTY_SETTINGS
@given(content_type=CONTENT_TYPES, body=st.binary(max_size=2048))
def test_random_bytes_give_inputs_or_a_typed_error(content_type: str, body: bytes) -> None:
    _assert_well_formed(_decode(content_type, body))


@PROPERTY_SETTINGS
@given(content_type=st.sampled_from(["image/png", "image/jpeg"]), body=mutated_images())
def test_damaged_images_give_inputs_or_a_typed_error(content_type: str, body: bytes) -> None:
    _assert_well_formed(_decode(content_type, body))


@PROPERTY_SETTINGS
@given(value=JSON_VALUES)
def test_random_json_gives_inputs_or_a_typed_error(value: object) -> None:
    _assert_well_formed(_decode("application/json", json.dumps(value).encode()))


@PROPERTY_SETTINGS
@given(
    value=st.lists(
        st.lists(st.lists(st.floats(width=32) | st.integers(-5, 5), min_size=4, max_size=4),
                 min_size=4, max_size=4),
        min_size=1, max_size=1,
    )
)  # fmt: skip
def test_json_tensors_are_finite_float32_or_refused(value: list[object]) -> None:
    _assert_well_formed(_decode("application/json", json.dumps({"tensor": value}).encode()))


@PROPERTY_SETTINGS
@given(images=st.lists(mutated_images(), min_size=1, max_size=3))
def test_base64_batches_of_damaged_images(images: list[bytes]) -> None:
    body = json.dumps({"images": [base64.b64encode(raw).decode() for raw in images]}).encode()
    _assert_well_formed(_decode("application/json", body))


@PROPERTY_SETTINGS
@given(value=JSON_VALUES)
def test_nesting_depth_matches_the_parsed_structure(value: object) -> None:
    def depth(node: object) -> int:
        if isinstance(node, list):
            return 1 + max((depth(child) for child in node), default=0)
        if isinstance(node, dict):
            return 1 + max((depth(child) for child in node.values()), default=0)
        return 0

    assert nesting_depth(json.dumps(value).encode()) == depth(value)
