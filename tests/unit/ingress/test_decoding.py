"""Decoding and limits, table-driven. ``BAD_INPUTS`` is also sent over HTTP by the integration
test, so the unit and end-to-end answers are checked against the same table."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from serve_drift.ingress import (
    STATUS_BY_CODE,
    IngressConfig,
    IngressError,
    decode_payload,
    evaluate,
)
from serve_drift.ingress.jsonscan import nesting_depth

INPUT_SHAPE = (1, 8, 8)
# The integration app runs with this config too: white frames are blocked, to cover 422.
TABLE_CONFIG = {"plausibility": {"saturated": {"action": "block"}}}


def encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def grey(seed: int = 0, size: tuple[int, int] = (8, 8)) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, size=size[::-1], dtype=np.uint8)
    return Image.fromarray(pixels)


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming ``width`` x ``height``, with a tiny IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def corrupt_png() -> bytes:
    raw = bytearray(encode(grey(size=(32, 32))))
    start = raw.index(b"IDAT") + 8
    raw[start : start + 16] = b"\xff" * 16  # damage the compressed data, keep the length
    return bytes(raw)


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=array.dtype.hasobject)
    return buffer.getvalue()


def npy_header_claiming(shape: tuple[int, ...]) -> bytes:
    """A ``.npy`` header for a huge float32 array, followed by almost no data."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue() + b"\0" * 16


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def as_json(value: object) -> bytes:
    return json.dumps(value).encode()


GOOD_PNG = encode(grey())


@dataclass(frozen=True)
class BadInput:
    name: str
    content_type: str
    body: Callable[[], bytes]
    code: str

    @property
    def status(self) -> int:
        return STATUS_BY_CODE[self.code]


PNG, JPEG, JSON, NPY = "image/png", "image/jpeg", "application/json", "application/x-npy"
BAD_INPUTS = [
    # empty and oversized
    BadInput("empty-image", PNG, lambda: b"", "empty_body"),
    BadInput("empty-json", JSON, lambda: b"", "empty_body"),
    BadInput("body-over-10MiB", PNG, lambda: b"\0" * (10 * 1024 * 1024 + 1), "body_too_large"),
    # wrong type
    BadInput("text-plain", "text/plain", lambda: b"hello", "unsupported_media_type"),
    BadInput("no-content-type", "", lambda: GOOD_PNG, "unsupported_media_type"),
    BadInput("gif-as-png", PNG, lambda: encode(grey(), "GIF"), "unsupported_image_format"),
    BadInput("bmp-as-png", PNG, lambda: encode(grey(), "BMP"), "unsupported_image_format"),
    BadInput("tiff-as-jpeg", JPEG, lambda: encode(grey(), "TIFF"), "unsupported_image_format"),
    BadInput(
        "svg-as-png",
        PNG,
        lambda: b"<svg xmlns='http://www.w3.org/2000/svg'/>",
        "unsupported_image_format",
    ),
    # truncated and corrupt files
    BadInput(
        "random-bytes", JPEG, lambda: np.random.default_rng(1).bytes(500), "image_decode_failed"
    ),
    BadInput(
        "truncated-png", PNG, lambda: encode(grey(size=(64, 64)))[:-40], "image_decode_failed"
    ),
    BadInput(
        "truncated-jpeg",
        JPEG,
        lambda: encode(grey(size=(64, 64)), "JPEG")[:300],
        "image_decode_failed",
    ),
    BadInput("corrupt-png-idat", PNG, corrupt_png, "image_decode_failed"),
    BadInput("png-signature-only", PNG, lambda: b"\x89PNG\r\n\x1a\n", "image_decode_failed"),
    # decompression bombs: sizes come from the header, nothing is decompressed
    BadInput("bomb-100k-square", PNG, lambda: png_header_only(100_000, 100_000), "image_too_large"),
    BadInput("bomb-41-megapixels", PNG, lambda: png_header_only(6_400, 6_400), "image_too_large"),
    BadInput("bomb-long-side", PNG, lambda: png_header_only(20_000, 10), "image_too_large"),
    # JSON and base64
    BadInput("json-malformed", JSON, lambda: b'{"image": ', "invalid_json"),
    BadInput("json-not-utf8", JSON, lambda: b'{"image": "\xff\xfe"}', "invalid_json"),
    BadInput("json-too-deep", JSON, lambda: b"[" * 5000 + b"]" * 5000, "json_too_deep"),
    BadInput("json-list", JSON, lambda: as_json([b64(GOOD_PNG)]), "invalid_schema"),
    BadInput("json-unknown-key", JSON, lambda: as_json({"img": b64(GOOD_PNG)}), "invalid_schema"),
    BadInput("json-two-keys", JSON, lambda: as_json({"image": "", "images": []}), "invalid_schema"),
    BadInput("json-image-number", JSON, lambda: as_json({"image": 42}), "invalid_schema"),
    BadInput("base64-malformed", JSON, lambda: as_json({"image": "not*base64!"}), "invalid_base64"),
    BadInput(
        "base64-not-image", JSON, lambda: as_json({"image": b64(b"hello")}), "image_decode_failed"
    ),
    # batch sizes
    BadInput("batch-empty", JSON, lambda: as_json({"images": []}), "invalid_batch"),
    BadInput("batch-65", JSON, lambda: as_json({"images": [b64(GOOD_PNG)] * 65}), "invalid_batch"),
    BadInput("batch-not-list", JSON, lambda: as_json({"images": b64(GOOD_PNG)}), "invalid_batch"),
    BadInput(
        "batch-one-bad", JSON, lambda: as_json({"images": [b64(GOOD_PNG), "@@"]}), "invalid_base64"
    ),
    # tensors: shapes, dtypes, non-finite numbers
    BadInput(
        "tensor-wrong-shape",
        JSON,
        lambda: as_json({"tensor": np.zeros((3, 8, 8)).tolist()}),
        "invalid_shape",
    ),
    BadInput(
        "tensor-ragged",
        JSON,
        lambda: as_json({"tensor": [[[0.0] * 8] * 7 + [[0.0] * 7]]}),
        "invalid_shape",
    ),
    BadInput(
        "tensor-nan",
        JSON,
        lambda: as_json({"tensor": np.full((1, 8, 8), np.nan).tolist()}),
        "non_finite_values",
    ),
    BadInput(
        "tensor-infinity",
        JSON,
        lambda: as_json({"tensor": np.full((1, 8, 8), np.inf).tolist()}),
        "non_finite_values",
    ),
    BadInput(
        "tensor-strings", JSON, lambda: as_json({"tensor": [[["0.5"] * 8] * 8]}), "invalid_schema"
    ),
    BadInput(
        "tensor-bools", JSON, lambda: as_json({"tensor": [[[True] * 8] * 8]}), "invalid_schema"
    ),
    BadInput(
        "tensor-huge-values",
        JSON,
        lambda: as_json({"tensor": np.full((1, 8, 8), 1e300).tolist()}),
        "tensor_out_of_range",
    ),
    BadInput(
        "npy-int64", NPY, lambda: npy(np.zeros((1, 8, 8), dtype=np.int64)), "unsupported_dtype"
    ),
    BadInput(
        "npy-object-pickle",
        NPY,
        lambda: npy(np.array([None] * 64, dtype=object).reshape(1, 8, 8)),
        "unsupported_dtype",
    ),
    BadInput(
        "npy-truncated",
        NPY,
        lambda: npy(np.zeros((1, 8, 8), dtype=np.float32))[:-7],
        "invalid_tensor",
    ),
    BadInput("npy-garbage", NPY, lambda: b"\x93NUMPY garbage", "invalid_tensor"),
    BadInput(
        "npy-header-claims-1e9",
        NPY,
        lambda: npy_header_claiming((1_000_000, 1, 1000)),
        "tensor_too_large",
    ),
    BadInput(
        "npy-nan",
        NPY,
        lambda: npy(np.full((1, 8, 8), np.nan, dtype=np.float32)),
        "non_finite_values",
    ),
    BadInput(
        "npy-batch-65", NPY, lambda: npy(np.zeros((65, 1, 8, 8), dtype=np.float32)), "invalid_batch"
    ),
    # plausibility with a blocking policy
    BadInput(
        "white-frame-blocked", PNG, lambda: encode(Image.new("L", (8, 8), 255)), "implausible_input"
    ),
]


@pytest.mark.parametrize("case", BAD_INPUTS, ids=lambda c: c.name)
def test_bad_input_gets_its_typed_error(case: BadInput) -> None:
    config = IngressConfig.model_validate(TABLE_CONFIG)
    with pytest.raises(IngressError) as caught:
        payload = decode_payload(
            content_type=case.content_type, body=case.body(), config=config, input_shape=INPUT_SHAPE
        )
        # Plausibility blocks come after decoding: run the same decision the gate makes.
        from serve_drift.ingress.policy import decide

        images = [d.image for d in payload.images]
        findings = evaluate(images, config=config.plausibility, profile=None)
        if decide(findings, rows=len(payload), config=config.plausibility).blocked:
            raise IngressError("implausible_input", "blocked")
    assert (caught.value.code, caught.value.status) == (case.code, case.status)


def test_table_covers_every_client_error_code() -> None:
    covered = {case.code for case in BAD_INPUTS}
    # Not payload-shaped: 408/400 on the wire, routing, the monitor, the catch-all.
    elsewhere = {
        "body_timeout",
        "client_disconnected",
        "invalid_query",
        "not_found",
        "internal_error",
        "monitor_unavailable",
        # POST /labels (tests/integration/test_event_log.py)
        "invalid_labels",
        "too_many_labels",
        "event_store_unavailable",
        # admin credential (tests/unit/apps/test_ingress_app.py, tests/integration/test_admin.py)
        "unauthorized",
        "admin_disabled",
        # /admin/maintenance (tests/unit/apps/test_admin_alerts.py)
        "invalid_maintenance",
        "method_not_allowed",
    }
    assert covered | elsewhere == set(STATUS_BY_CODE)


def _decode_one(body: bytes, content_type: str = PNG) -> Image.Image:
    payload = decode_payload(content_type=content_type, body=body, config=IngressConfig())
    (decoded,) = payload.images
    return decoded.image


@pytest.mark.parametrize(
    ("image", "fmt", "mode", "pixel"),
    [
        (Image.new("1", (4, 4), 1), "PNG", "L", 255),
        (Image.new("L", (4, 4), 77), "PNG", "L", 77),
        (Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)), "PNG", "L", 255),
        (Image.fromarray(np.full((4, 4), 32896, dtype=np.uint16)), "PNG", "L", 128),  # scaled
        (Image.new("LA", (4, 4), (200, 0)), "PNG", "L", 0),  # transparent -> background
        (Image.new("RGBA", (4, 4), (255, 0, 0, 255)), "PNG", "RGB", (255, 0, 0)),
        (Image.new("RGBA", (4, 4), (255, 0, 0, 0)), "PNG", "RGB", (0, 0, 0)),
        (Image.new("RGB", (4, 4), (10, 20, 30)), "WEBP", "RGB", None),
        (Image.new("CMYK", (4, 4), (0, 0, 0, 0)), "JPEG", "RGB", None),
    ],
    ids=[
        "1-bit",
        "L",
        "16-bit-max",
        "16-bit-mid",
        "LA",
        "RGBA-opaque",
        "RGBA-clear",
        "webp",
        "cmyk",
    ],
)
def test_colour_modes_are_normalised_deterministically(
    image: Image.Image, fmt: str, mode: str, pixel: object
) -> None:
    decoded = _decode_one(encode(image, fmt, **({"lossless": True} if fmt == "WEBP" else {})))
    assert decoded.mode == mode
    if pixel is not None:
        assert decoded.getpixel((1, 1)) == pixel
    if fmt == "JPEG":  # CMYK white -> RGB white (JPEG is lossy: near, not equal)
        assert min(decoded.getpixel((1, 1))) > 240


def test_palette_with_transparency_is_composited() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    decoded = _decode_one(encode(palette, transparency=1))
    assert decoded.mode == "RGB" and decoded.getpixel((0, 0)) == (0, 0, 0)


def test_alpha_background_is_configurable() -> None:
    config = IngressConfig(alpha_background=255)
    body = encode(Image.new("RGBA", (4, 4), (255, 0, 0, 0)))
    (decoded,) = decode_payload(content_type=PNG, body=body, config=config).images
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)


def test_animated_png_decodes_its_first_frame() -> None:
    frames = [Image.new("L", (4, 4), value) for value in (10, 200, 90)]
    body = encode(frames[0], save_all=True, append_images=frames[1:])
    payload = decode_payload(content_type=PNG, body=body, config=IngressConfig())
    assert payload.images[0].frames == 3 and payload.images[0].image.getpixel((0, 0)) == 10


def test_exif_orientation_is_applied() -> None:
    image = Image.new("L", (6, 2), 0)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    decoded = _decode_one(encode(image, "JPEG", exif=exif.tobytes()), JPEG)
    assert decoded.size == (2, 6)


def test_content_type_parameters_and_case_are_ignored() -> None:
    assert _decode_one(GOOD_PNG, "Image/PNG; charset=binary").size == (8, 8)


def test_declared_type_may_differ_from_the_allowed_format_sent() -> None:
    assert _decode_one(encode(grey(), "JPEG"), PNG).mode == "L"


def test_json_batch_and_data_url() -> None:
    url = "data:image/png;base64," + b64(GOOD_PNG)
    body = as_json({"images": [b64(GOOD_PNG), url]})
    assert len(decode_payload(content_type=JSON, body=body, config=IngressConfig())) == 2


def test_tensors_need_an_input_shape() -> None:
    body = npy(np.zeros(INPUT_SHAPE, dtype=np.float32))
    with pytest.raises(IngressError, match="unsupported_media_type"):
        decode_payload(content_type=NPY, body=body, config=IngressConfig())
    payload = decode_payload(
        content_type=NPY, body=body, config=IngressConfig(), input_shape=INPUT_SHAPE
    )
    assert payload.tensor is not None and payload.tensor.shape == (1, *INPUT_SHAPE)


def test_float16_and_fortran_order_npy_are_accepted() -> None:
    array = np.asfortranarray(np.ones((2, *INPUT_SHAPE), dtype=np.float16))
    payload = decode_payload(
        content_type=NPY, body=npy(array), config=IngressConfig(), input_shape=INPUT_SHAPE
    )
    assert payload.tensor is not None and payload.tensor.dtype == np.float32


def test_limits_are_configurable() -> None:
    config = IngressConfig.model_validate(
        {"limits": {"max_pixels": 50, "max_batch": 1, "max_json_depth": 2}}
    )
    for body, content_type, code in [
        (GOOD_PNG, PNG, "image_too_large"),  # 64 pixels
        (as_json({"images": [b64(GOOD_PNG)] * 2}), JSON, "invalid_batch"),
        (as_json({"image": [[1]]}), JSON, "json_too_deep"),
    ]:
        with pytest.raises(IngressError) as caught:
            decode_payload(content_type=content_type, body=body, config=config)
        assert caught.value.code == code


@pytest.mark.parametrize(
    ("body", "depth"),
    [
        (b"1", 0),
        (b"[]", 1),
        (b'{"a": [[1], "]]]"]}', 3),
        (b'["\\"[[[[", [[]]]', 3),
        (b'"[[[["', 0),
    ],
)
def test_nesting_depth_ignores_brackets_in_strings(body: bytes, depth: int) -> None:
    assert nesting_depth(body) == depth


def test_error_codes_map_to_the_documented_statuses() -> None:
    assert {status for status in STATUS_BY_CODE.values()} == {
        400, 401, 403, 404, 405, 408, 413, 415, 422, 500, 503
    }  # fmt: skip
    with pytest.raises(ValueError, match="unknown ingress error code"):
        IngressError("made_up", "x")
