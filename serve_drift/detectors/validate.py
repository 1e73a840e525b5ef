"""Input checks shared by every detector backend.

A drift detector must refuse input it cannot test rather than report drift on it: a NaN or
infinite embedding would otherwise poison the kernel matrix and could raise a false alarm. All
checks raise :class:`DetectorInputError` with a message that says
what was wrong and where.

Minimum sizes: both the reference set and a window need at least 10 rows. The unbiased MMD²
estimator needs 2 rows per sample to be defined at all; below about 10 rows the median-heuristic
bandwidth is unstable and a permutation test has almost no power, so a "no drift" answer would be
meaningless. 10 is also the smallest window ``WindowConfig`` allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from serve_drift.errors import ServeDriftError

MIN_REFERENCE_ROWS = 10
MIN_WINDOW_ROWS = 10


class DetectorInputError(ServeDriftError, ValueError):
    """A window or reference set a detector cannot test (too small, wrong shape, non-finite)."""

    code = "detector_input_invalid"


def check_reference(reference: Any) -> np.ndarray:
    """Return ``reference`` as a 2-D float array, or raise :class:`DetectorInputError`."""
    return _check_embeddings(reference, what="reference set", min_rows=MIN_REFERENCE_ROWS)


def check_window(window: Any, *, dim: int) -> np.ndarray:
    """Return ``window`` as a 2-D float array of ``dim`` columns, or raise."""
    array = _check_embeddings(window, what="window", min_rows=MIN_WINDOW_ROWS)
    if array.shape[1] != dim:
        raise DetectorInputError(
            f"window has embedding dimension {array.shape[1]}, the reference set has {dim}"
        )
    return array


def as_compute_dtype(array: np.ndarray, *, dtype: type[np.floating[Any]], what: str) -> np.ndarray:
    """``array`` cast to the dtype a backend computes in, refusing overflowing magnitudes.

    Kernel distances expand ``|x - y|² = |x|² + |y|² - 2x·y``; a row whose squared norm
    overflows turns that into inf - inf = NaN, and a NaN statistic compares as "never
    exceeded", which alibi reports as p = 0: a false alarm from a finite input.
    """
    with np.errstate(over="ignore"):
        cast = array.astype(dtype, copy=False)
    _check_finite(cast, what=f"{what} (as {np.dtype(dtype).name})")
    if _norms_cannot_overflow(array, dtype=dtype):
        return cast
    with np.errstate(over="ignore"):
        squared_norms = np.square(cast).sum(axis=1)
    if not np.isfinite(squared_norms).all():
        row = int(np.flatnonzero(~np.isfinite(squared_norms))[0])
        raise DetectorInputError(
            f"{what} row {row} is too large: its squared norm is not finite in "
            f"{np.dtype(dtype).name}"
        )
    return cast


def _norms_cannot_overflow(array: np.ndarray, *, dtype: type[np.floating[Any]]) -> bool:
    """Whether no row of ``array``'s dtype can have a squared norm that overflows ``dtype``
    (float32 rows in float64: 512 x (3.4e38)² is far below 1.8e308), so none is computed."""
    if not np.issubdtype(array.dtype, np.floating):
        return False
    largest = float(np.finfo(array.dtype).max)
    return largest < 1e100 and largest**2 * array.shape[-1] < float(np.finfo(dtype).max)


def _check_embeddings(data: Any, *, what: str, min_rows: int) -> np.ndarray:
    array = _as_float_array(data, what=what)
    if array.ndim != 2:
        raise DetectorInputError(
            f"{what} must be a 2-D array (rows, embedding_dim), got shape {array.shape}"
        )
    rows, dim = array.shape
    if dim < 1:
        raise DetectorInputError(f"{what} has embedding dimension 0")
    if rows < min_rows:
        raise DetectorInputError(f"{what} has {rows} rows, at least {min_rows} are needed")
    _check_finite(array, what=what)
    return array


def _as_float_array(data: Any, *, what: str) -> np.ndarray:
    try:
        array = np.asarray(data)
    except (TypeError, ValueError) as exc:  # ragged nested lists, unconvertible objects
        raise DetectorInputError(f"{what} is not a numeric array: {exc}") from exc
    # Integers, booleans and objects are not embeddings; casting them silently would hide a
    # wiring mistake (e.g. class labels passed instead of features).
    if not np.issubdtype(array.dtype, np.floating):
        raise DetectorInputError(f"{what} must have a floating-point dtype, got {array.dtype}")
    return array


def _check_finite(array: np.ndarray, *, what: str) -> None:
    finite_rows = np.isfinite(array).all(axis=1)
    if finite_rows.all():
        return
    bad = np.flatnonzero(~finite_rows)
    raise DetectorInputError(
        f"{what} has {bad.size} row(s) with NaN or infinite values (first at row {bad[0]}); "
        "drift is never tested on non-finite embeddings"
    )


# Softmax outputs computed in float32 can land a few ulps outside [0, 1].
_PROBABILITY_SLACK = 1e-4


def check_probabilities(probabilities: Any, *, rows: int | None, what: str) -> np.ndarray:
    """Return ``probabilities`` as a 2-D float array (rows, classes) with values in [0, 1].

    ``rows`` is the number of rows it must have (the window's embeddings), or ``None``.
    """
    min_rows = 1 if rows is not None else MIN_REFERENCE_ROWS
    array = _check_embeddings(probabilities, what=f"{what} probabilities", min_rows=min_rows)
    if rows is not None and array.shape[0] != rows:
        raise DetectorInputError(
            f"{what} has {array.shape[0]} rows of probabilities for {rows} embeddings"
        )
    if array.shape[1] < 2:
        raise DetectorInputError(
            f"{what} probabilities need at least 2 classes, got {array.shape[1]}"
        )
    if array.min() < -_PROBABILITY_SLACK or array.max() > 1 + _PROBABILITY_SLACK:
        raise DetectorInputError(
            f"{what} probabilities must lie in [0, 1] (softmax outputs), got values in "
            f"[{array.min():.4g}, {array.max():.4g}]"
        )
    return array


def require_probabilities(
    probabilities: Any, *, rows: int, classes: int, detector: str
) -> np.ndarray:
    """The window's probabilities for a detector that cannot run without them."""
    if probabilities is None:
        raise DetectorInputError(
            f"the {detector} detector needs the model's softmax probabilities for every row; "
            "this window has none (the replica did not capture logits)"
        )
    array = check_probabilities(probabilities, rows=rows, what="window")
    if array.shape[1] != classes:
        raise DetectorInputError(
            f"window has {array.shape[1]} classes of probabilities, the reference set has {classes}"
        )
    return array
