"""The native detectors' numba kernels, compiled on first use (never at import).

numba is optional: :func:`kernels` returns ``None`` without it, and every caller then takes
its torch path. The kernels are cached on disk where numba finds a writable place, so only
the first process on a machine pays the ~2 s compile.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Kernels:
    """Compiled kernels: see the plain functions of the same names below."""

    row_index: Callable[..., Any]
    pair_sums: Callable[..., Any]
    upper_band: Callable[..., Any]


@functools.cache
def kernels() -> Kernels | None:
    """The compiled kernels (compiled lazily on their first call); ``None`` without numba."""
    try:
        import numba
    except ImportError:
        return None
    # Reassociation lets the compiler vectorise the gathered sums; the order stays fixed for
    # a given machine, so results are reproducible there.
    fast = {"reassoc", "nsz", "contract"}
    return Kernels(
        row_index=_compile(numba, row_index, fastmath=False),
        pair_sums=_compile(numba, pair_sums, fastmath=fast),
        upper_band=_compile(numba, upper_band, fastmath=False),
    )


def _compile(numba: Any, function: Callable[..., Any], *, fastmath: Any) -> Callable[..., Any]:
    """``function`` compiled on first call, cached on disk where numba finds a place for it.

    The disk cache (next to this file or in the user's cache folder) saves the compile in
    every later process; where neither is writable numba refuses to cache, and the kernel
    is compiled in every process instead.
    """
    try:
        return numba.njit(nogil=True, cache=True, fastmath=fastmath)(function)
    except RuntimeError:  # "cannot cache function ...: no locator available"
        return numba.njit(nogil=True, cache=False, fastmath=fastmath)(function)


# --- the kernels, plain Python until compiled -------------------------------------------


def row_index(
    ordered: np.ndarray, n_total: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """For every pooled row, the splits whose window side holds it and its position there."""
    count, m = ordered.shape
    row_ptr = np.zeros(n_total + 1, dtype=np.int64)
    for split in range(count):
        for a in range(m):
            row_ptr[ordered[split, a] + 1] += 1
    for i in range(n_total):
        row_ptr[i + 1] += row_ptr[i]
    fill = row_ptr[:-1].copy()
    row_split = np.empty(count * m, dtype=np.int64)
    row_pos = np.empty(count * m, dtype=np.int64)
    for split in range(count):
        for a in range(m):
            i = ordered[split, a]
            row_split[fill[i]] = split
            row_pos[fill[i]] = a
            fill[i] += 1
    return row_ptr, row_split, row_pos


def pair_sums(
    block: np.ndarray,
    row_start: int,
    col_start: int,
    ordered: np.ndarray,
    row_ptr: np.ndarray,
    row_split: np.ndarray,
    row_pos: np.ndarray,
    upper: bool,
    lo_row: int,
    hi_row: int,
    out: np.ndarray,
) -> None:  # pragma: no cover - compiled
    """Add, for rows ``lo_row:hi_row`` of K, the block's elements in each split's S x S
    (with ``upper``, only those with j > i)."""
    count = ordered.shape[0]
    cols = block.shape[1]
    first = np.empty(count, dtype=np.int64)
    last = np.empty(count, dtype=np.int64)
    for split in range(count):
        first[split] = np.searchsorted(ordered[split], col_start)
        last[split] = np.searchsorted(ordered[split], col_start + cols)
    for i in range(lo_row, hi_row):
        row = block[i - row_start]
        for entry in range(row_ptr[i], row_ptr[i + 1]):
            split = row_split[entry]
            side = ordered[split]
            start = first[split]
            if upper:
                start = max(start, row_pos[entry] + 1)
            total = 0.0
            for b in range(start, last[split]):
                # Unsigned: the offset is never negative, and numba then skips its
                # negative-index wraparound, which keeps the gather vectorised.
                total += row[np.uint64(side[b] - col_start)]
            out[split] += total


def upper_band(
    matrix: np.ndarray, low: float, high: float, out: np.ndarray
) -> tuple[int, int]:  # pragma: no cover - compiled
    """One pass over the strict upper triangle: how many entries are below ``low``, and the
    entries in ``[low, high]`` copied to ``out`` (their count; more than fit means overflow)."""
    n = matrix.shape[0]
    below = 0
    kept = 0
    for i in range(n):
        row = matrix[i]
        for j in range(i + 1, n):
            value = row[j]
            if value < low:
                below += 1
            elif value <= high:
                if kept < out.shape[0]:
                    out[kept] = value
                kept += 1
    return below, kept
