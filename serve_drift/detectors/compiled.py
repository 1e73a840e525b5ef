"""The native detectors' numba kernels, compiled on first use (never at import).

numba is optional: :func:`kernels` returns ``None`` without it, and every caller then takes
its torch path. The kernels are cached on disk where numba finds a writable place, so only
the first process on a machine pays the ~2 s compile. :func:`run_parallel` runs a kernel's
calls on the caller's intra-op threads (the kernels release the GIL).
"""

from __future__ import annotations

import functools
import itertools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass(frozen=True)
class Kernels:
    """Compiled kernels: see the plain functions of the same names below."""

    row_index: Callable[..., Any]
    pair_sums: Callable[..., Any]
    upper_band: Callable[..., Any]
    top_subsets: Callable[..., Any]
    tied_subset: Callable[..., Any]
    window_sums: Callable[..., Any]
    upper_row_sums: Callable[..., Any]
    mt19937_uniform: Callable[..., Any]


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
        top_subsets=_compile(numba, top_subsets, fastmath=False),
        tied_subset=_compile(numba, tied_subset, fastmath=False),
        window_sums=_compile(numba, window_sums, fastmath=fast),
        upper_row_sums=_compile(numba, upper_row_sums, fastmath=fast),
        mt19937_uniform=_compile(numba, mt19937_uniform, fastmath=False),
    )


def require_kernels() -> Kernels:
    """:func:`kernels`, for callers that chose the numba engine (it needs them)."""
    found = kernels()
    if found is None:
        raise RuntimeError("the numba engine needs numba; use engine='torch'")
    return found


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


def run_parallel(kernel: Callable[..., object], calls: list[tuple[object, ...]]) -> None:
    """``kernel(*args)`` for every ``args`` in ``calls``, all finished on return.

    Up to the caller's intra-op thread budget (``torch.set_num_threads``) run them: this
    thread and the pool's (the kernels release the GIL), each taking the next call as soon as
    it is free. A call writes only outputs of its own, so the results do not depend on which
    thread ran it. Taking calls in turn, not one fixed share each, matters where torch's
    OpenMP workers still spin for milliseconds after an operation: a thread that shares its
    core with one simply takes fewer calls.
    """
    remaining = iter(calls)  # next() on a list iterator is atomic under the GIL

    def work() -> None:
        for args in remaining:
            kernel(*args)

    helpers = [_pool().submit(work) for _ in range(min(torch.get_num_threads(), len(calls)) - 1)]
    work()
    for helper in helpers:
        helper.result()


def chunk_count(units: float) -> int:
    """How many calls to split a job of ``units`` call-sized parts into: at least one, at most
    ``_MAX_CHUNKS``; the same on every machine, so that sums come out the same."""
    return max(1, min(_MAX_CHUNKS, int(units)))


def work_ranges(cumulative: np.ndarray, *, start: int, parts: int) -> list[tuple[int, int]]:
    """Consecutive ranges of ``start + arange(len(cumulative))`` with about equal work, given
    the cumulative work per item; empty ranges are dropped."""
    size = int(cumulative.shape[0])
    if parts <= 1 or size == 0:
        return [(start, start + size)]
    targets = cumulative[-1] * np.arange(1, parts) / parts
    cuts = start + np.searchsorted(cumulative, targets)
    edges = [start, *(int(c) for c in cuts), start + size]
    return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


def triangle_ranges(n: int, *, parts: int) -> list[tuple[int, int]]:
    """Row ranges of an n x n matrix's upper triangle with about equal numbers of entries."""
    return work_ranges(np.cumsum(np.arange(n, 0, -1, dtype=np.float64)), start=0, parts=parts)


# Jobs are split into at most this many calls (their outputs are summed in call order).
_MAX_CHUNKS = 16


@functools.cache
def _pool() -> ThreadPoolExecutor:
    # Created on first use.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="kernels")


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
    matrix: np.ndarray, low: float, high: float, lo_row: int, hi_row: int, out: np.ndarray
) -> tuple[int, int]:  # pragma: no cover - compiled
    """One pass over rows ``lo_row:hi_row`` of the strict upper triangle: how many entries are
    below ``low``, and the entries in ``[low, high]`` copied to ``out`` (their count; more
    than fit means overflow)."""
    n = matrix.shape[0]
    # One comparison, false for all but a few percent of the entries, is a branch the CPU
    # predicts; "low <= value" alone is true for half of them at random. Its bound is a little
    # wide of the band's, so that rounding never drops an entry; the exact test follows.
    middle = 0.5 * (low + high)
    reach = 0.5 * (high - low) + 1e-15 * max(abs(low), abs(high))
    below = 0
    kept = 0
    for i in range(lo_row, hi_row):
        row = matrix[i]
        for j in range(np.uint64(i + 1), np.uint64(n)):
            value = row[j]
            below += value < low
            if abs(value - middle) <= reach and low <= value <= high:
                if kept < out.shape[0]:
                    out[kept] = value
                kept += 1
    return below, kept


def top_subsets(
    keys: np.ndarray, m: int, lo_row: int, hi_row: int, out: np.ndarray, cuts: np.ndarray
) -> None:  # pragma: no cover - compiled
    """For rows ``lo_row:hi_row`` of ``keys`` (count, n), the columns of the row's ``m`` largest
    keys in increasing order, written to the same rows of ``out`` (count, m); a row whose m-th
    largest key has an equal one left out gets ``out[r, 0] = -1`` and its m-th largest key in
    ``cuts[r]``, for :func:`tied_subset`.

    The same subsets as ``keys.topk(m).indices`` (as sets), without sorting a row. The keys are
    uniform on [0, 1), so the m-th largest lies, but for odds of about 1e-9, in a band of six
    binomial standard deviations either side of ``1 - m/n``. One branch-free pass keeps the
    keys above the band's floor (the candidates) and copies those inside it; a histogram of
    the band finds the bucket holding the m-th largest, which is selected among that bucket's
    few keys; the candidates at or above it are the subset, already in column order. Outside
    the band the m-th largest is selected among all keys. Equal keys at the boundary have odds
    of about n²·2⁻⁵⁴ per row.
    """
    n = keys.shape[1]
    if m <= 0 or m > n:
        return
    share = m / n
    spread = 6.0 * np.sqrt(n * share * (1.0 - share)) + 1.0
    high = 1.0 - (m - spread) / n
    low = 1.0 - (m + spread) / n
    buckets = max(1, int(2.0 * spread))
    scale = buckets / (high - low)
    candidate_keys = np.empty(n + 1)
    candidates = np.empty(n + 1, dtype=np.int64)
    band = np.empty(n + 1)
    counts = np.empty(buckets, dtype=np.int64)
    chosen = np.empty(n + 1, dtype=np.int64)
    for r in range(lo_row, hi_row):
        row = keys[r]
        found = 0
        kept = 0
        for j in range(n):  # branch-free: a rejected key's slot is overwritten by the next
            value = row[j]
            candidate_keys[found] = value
            candidates[found] = j
            found += value > low
            band[kept] = value
            kept += (value > low) & (value <= high)
        need = m - (found - kept)  # of the band's keys, the largest ``need`` belong
        if 0 < need <= kept:
            counts[:] = 0
            for k in range(kept):
                counts[min(int((band[k] - low) * scale), buckets - 1)] += 1
            bucket = buckets - 1
            while counts[bucket] < need:
                need -= counts[bucket]
                bucket -= 1
            inside = 0
            for k in range(kept):
                value = band[k]
                band[inside] = value
                inside += min(int((value - low) * scale), buckets - 1) == bucket
            cut = np.sort(band[:inside])[inside - need]
        else:
            cut = np.sort(row)[n - m]
        count = 0
        for k in range(found):
            chosen[count] = candidates[k]
            count += candidate_keys[k] >= cut
        if count == m:
            out[r, :] = chosen[:m]
        else:
            out[r, 0] = -1
            cuts[r] = cut


def tied_subset(
    row: np.ndarray, m: int, cut: float, out: np.ndarray
) -> None:  # pragma: no cover - compiled
    """``out``: the columns of ``row``'s keys above ``cut`` and, lowest columns first, as many
    of those equal to it as make ``m``."""
    ties = m
    for j in range(row.shape[0]):
        ties -= row[j] > cut
    count = 0
    for j in range(row.shape[0]):
        value = row[j]
        if value > cut or (value == cut and ties > 0):
            ties -= value == cut
            out[count] = j
            count += 1


def window_sums(
    k_xx: np.ndarray,
    k_xy: np.ndarray,
    k_yy: np.ndarray,
    ordered: np.ndarray,
    row_ptr: np.ndarray,
    row_split: np.ndarray,
    row_pos: np.ndarray,
    reference_side: np.ndarray,
    stream: bool,
    lo_row: int,
    hi_row: int,
    rows: np.ndarray,
    column_sums: np.ndarray,
    within: np.ndarray,
) -> float:  # pragma: no cover - compiled
    """One pass over the pooled rows ``lo_row:hi_row`` of K = [[K_xx, K_xy], [K_yx, K_yy]].

    For a reference row i: ``rows[i]`` gets the sum of K_xy's row i, ``column_sums`` K_xy's
    row i added, and every split whose window side holds i the sum of K_xx's and K_xy's
    elements in that window side's columns after i (K_xx is read above its diagonal only). For
    a window row the same from K_yy. ``reference_side[split]`` is how many of the split's
    (sorted) window-side rows are reference rows.

    With ``stream``, a reference row's part of K_xx after the diagonal is first read in order,
    one element per cache line, so that the hardware prefetcher streams it from memory and the
    gathers then find it in the cache (rows too long for the L1 cache gather about 20 % faster
    so). Returns the sum of those reads, which only keeps the compiler from dropping them.
    """
    n = k_xx.shape[0]
    m = k_xy.shape[1]
    touched = 0.0
    for i in range(lo_row, hi_row):
        if stream and i < n:
            ahead = k_xx[i]
            for j in range(np.uint64((i + 8) // 8), np.uint64(n // 8)):
                touched += ahead[j * 8]
        reference = i < n
        fresh = k_xy[i] if reference else k_yy[i - n]
        total = 0.0
        if reference:
            for j in range(m):
                total += fresh[j]
                column_sums[j] += fresh[j]
        else:
            for j in range(m):
                total += fresh[j]
        rows[i] = total
        cached = k_xx[i] if reference else k_xx[0]
        for entry in range(row_ptr[i], row_ptr[i + 1]):
            split = row_split[entry]
            side = ordered[split]
            start = row_pos[entry] + 1
            edge = max(start, reference_side[split])
            acc = 0.0
            # Unsigned offsets: never negative, and numba then skips its negative-index
            # wraparound, which keeps the gathers vectorised.
            for b in range(start, edge):
                acc += cached[np.uint64(side[b])]
            for b in range(edge, m):
                acc += fresh[np.uint64(side[b] - n)]
            within[split] += acc
    return touched


def upper_row_sums(
    matrix: np.ndarray, lo_row: int, hi_row: int, rows: np.ndarray, columns: np.ndarray
) -> None:  # pragma: no cover - compiled
    """For rows ``lo_row:hi_row`` of a symmetric matrix's strict upper triangle: each row's
    entries after the diagonal added to ``rows``, and to ``columns`` by column (the same
    entries' share of the rows below, which are read nowhere)."""
    n = matrix.shape[0]
    for i in range(lo_row, hi_row):
        row = matrix[i]
        total = 0.0
        for j in range(np.uint64(i + 1), np.uint64(n)):
            total += row[j]
            columns[j] += row[j]
        rows[i] += total


def mt19937_uniform(
    state: np.ndarray, left: int, position: int, out: np.ndarray, words: np.ndarray
) -> tuple[int, int]:  # pragma: no cover - compiled
    """Fill ``out`` with the float64 uniforms torch's CPU generator draws from this mt19937
    state, and return the state's new ``left`` and ``position`` (``state`` is updated).

    The same arithmetic as ``at::mt19937`` and ``uniform_real_distribution<double>``: each
    double takes two 32-bit outputs (the first the high half) and keeps 53 bits. The state
    (624 words) is regenerated when ``left`` reaches 1, as torch does before the word it needs.
    ``words`` is scratch space for ``2 * len(out)`` outputs.
    """
    n_words, shift = 624, 397
    upper, lower, twist, one = (
        np.uint32(0x80000000),
        np.uint32(0x7FFFFFFF),
        np.uint32(0x9908B0DF),
        np.uint32(1),
    )
    total = out.shape[0] * 2
    done = 0
    while done < total:
        if left == 1:  # mt19937's next state, in two loops that vectorise
            for i in range(n_words - shift):
                y = (state[i] & upper) | (state[i + 1] & lower)
                state[i] = state[i + shift] ^ (y >> one) ^ (twist * (state[i + 1] & one))
            for i in range(n_words - shift, n_words - 1):
                y = (state[i] & upper) | (state[i + 1] & lower)
                state[i] = state[i + shift - n_words] ^ (y >> one) ^ (twist * (state[i + 1] & one))
            y = (state[n_words - 1] & upper) | (state[0] & lower)
            state[n_words - 1] = state[shift - 1] ^ (y >> one) ^ (twist * (state[0] & one))
            position = 0
            left = n_words + 1
        take = min(left - 1, total - done)
        source = state[position : position + take]
        target = words[done : done + take]
        for k in range(take):  # mt19937's tempering
            y = source[k]
            y ^= y >> np.uint32(11)
            y ^= (y << np.uint32(7)) & np.uint32(0x9D2C5680)
            y ^= (y << np.uint32(15)) & np.uint32(0xEFC60000)
            y ^= y >> np.uint32(18)
            target[k] = y
        done += take
        position += take
        left -= take
    scale = 1.0 / 9007199254740992.0  # 2^-53
    mask = np.uint64(0x1FFFFFFFFFFFFF)
    for k in range(out.shape[0]):
        bits = (np.uint64(words[2 * k]) << np.uint64(32)) | np.uint64(words[2 * k + 1])
        out[k] = np.float64(bits & mask) * scale
    return left, position
