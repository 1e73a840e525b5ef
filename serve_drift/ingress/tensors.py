"""Tensors from clients that preprocess themselves: ``.npy`` bytes or JSON nested lists.

Either way the result is a float32 batch ``(B, *input_shape)``: a single ``input_shape`` tensor
becomes a batch of one. The ``.npy`` header is read first, so dtype, shape and element count
are checked before any array data is touched, and ``allow_pickle=False`` means an object
array is refused rather than unpickled.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from serve_drift.ingress.config import LimitsConfig
from serve_drift.ingress.errors import IngressError

ALLOWED_DTYPES = ("float16", "float32", "float64")


def _invalid(message: str) -> IngressError:
    return IngressError("invalid_tensor", message)


def decode_npy(raw: bytes, *, input_shape: Sequence[int], limits: LimitsConfig) -> np.ndarray:
    """An ``application/x-npy`` body as a checked float32 batch."""
    stream = io.BytesIO(raw)
    shape, dtype = _npy_header(stream)
    _check_dtype(dtype)
    _check_count(shape, limits)
    batch_shape = _batch_shape(shape, input_shape=input_shape, limits=limits)
    if len(raw) - stream.tell() != math.prod(shape) * dtype.itemsize:
        raise _invalid("the .npy data does not match its header (truncated or padded)")
    try:
        array = np.load(io.BytesIO(raw), allow_pickle=False)
    except Exception:
        raise _invalid("the body is not a readable .npy array") from None
    return checked_values(np.asarray(array).reshape(batch_shape), limits=limits)


def _npy_header(stream: io.BytesIO) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, _fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version in ((2, 0), (3, 0)):
            shape, _fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError("unknown .npy version")
    except Exception:
        raise _invalid("the body is not a .npy array") from None
    return tuple(int(n) for n in shape), np.dtype(dtype)


def _check_dtype(dtype: np.dtype) -> None:
    if dtype.hasobject or dtype.name not in ALLOWED_DTYPES:
        raise IngressError(
            "unsupported_dtype",
            f"tensor dtype {_dtype_label(dtype)} is not accepted; send {', '.join(ALLOWED_DTYPES)}",
        )


def _dtype_label(dtype: np.dtype) -> str:
    return "object" if dtype.hasobject else dtype.name


def _check_count(shape: Sequence[int], limits: LimitsConfig) -> None:
    if math.prod(shape) > limits.max_tensor_elements:
        raise IngressError(
            "tensor_too_large", f"the tensor has more than {limits.max_tensor_elements} elements"
        )


def _batch_shape(
    shape: Sequence[int], *, input_shape: Sequence[int], limits: LimitsConfig
) -> tuple[int, ...]:
    expected = tuple(input_shape)
    if tuple(shape) == expected:
        return (1, *expected)
    if len(shape) == len(expected) + 1 and tuple(shape[1:]) == expected:
        if not 1 <= shape[0] <= limits.max_batch:
            raise IngressError(
                "invalid_batch", f"a tensor batch must hold 1 to {limits.max_batch} inputs"
            )
        return tuple(shape)
    wanted = "x".join(map(str, expected))
    raise IngressError(
        "invalid_shape",
        f"the tensor shape must be {wanted} or Nx{wanted}, got {'x'.join(map(str, shape))}",
    )


def checked_values(array: np.ndarray, *, limits: LimitsConfig) -> np.ndarray:
    """float32, all finite, within ``max_abs_tensor_value`` (checked before the cast, so a
    float64 1e39 is out of range rather than an infinity made by us)."""
    wide = array.astype(np.float64)
    if not np.isfinite(wide).all():
        raise IngressError("non_finite_values", "the tensor holds NaN or infinite values")
    bound = min(limits.max_abs_tensor_value, float(np.finfo(np.float32).max))
    if wide.size and float(np.abs(wide).max()) > bound:
        raise IngressError("tensor_out_of_range", f"tensor values must lie within ±{bound:g}")
    return wide.astype(np.float32)


def tensor_from_json(
    value: object, *, input_shape: Sequence[int], limits: LimitsConfig
) -> np.ndarray:
    """JSON nested lists of numbers (a rectangular array) as a checked float32 batch."""
    shape, leaves = _flatten(value, limits=limits)
    batch_shape = _batch_shape(shape, input_shape=input_shape, limits=limits)
    try:
        array = np.asarray(leaves, dtype=np.float64)
    except (OverflowError, ValueError):  # an integer beyond float range
        raise IngressError(
            "tensor_out_of_range", "a tensor value is too large to represent"
        ) from None
    return checked_values(array.reshape(batch_shape), limits=limits)


def _flatten(value: object, *, limits: LimitsConfig) -> tuple[tuple[int, ...], list[object]]:
    """Level by level, without recursion: every list at a level must have the same length."""
    shape: list[int] = []
    level: list[object] = [value]
    while level and isinstance(level[0], list):
        width = len(level[0])
        if any(not isinstance(item, list) or len(item) != width for item in level):
            raise IngressError(
                "invalid_shape", "the tensor is ragged: nested lists must be rectangular"
            )
        shape.append(width)
        _check_count(shape, limits)
        level = [element for item in level for element in item]  # type: ignore[attr-defined]
    if not shape:
        raise IngressError("invalid_schema", '"tensor" must be nested lists of numbers')
    if any(isinstance(leaf, bool) or not isinstance(leaf, (int, float)) for leaf in level):
        raise IngressError("invalid_schema", "tensor elements must be numbers")
    return tuple(shape), level
