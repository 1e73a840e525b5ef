"""Sums of a kernel matrix over the window side of every split: the MMD test's inner loop.

For the pooled zero-diagonal kernel matrix K and the window side S of one split (M of the
N + M pooled rows), the unbiased MMD² needs the total of K, the sum of K's row sums over S,
and ``q_S``, the sum of K over S x S (see :mod:`serve_drift.detectors.mmd_native`). This module
computes ``q_S`` for every split at once from blocks of K, with one of two engines:

- ``numba`` (CPU, when numba is importable): visits the rows of a block in order and, for every
  split whose window side contains the row, adds the row's elements in the window side's
  columns. A block is read once for all splits, and a diagonal block (K_xx, K_yy) sums only
  the pairs j > i and doubles them, so a whole test gathers P·M(M-1)/2 elements instead of
  multiplying P dense weight vectors with the (N + M)² matrix. Gathers are slower per
  element than a matrix product's operations, so a block is gathered only when the window
  side is a small share of the pooled rows (see ``_GATHER_FLOPS``); other blocks use the
  torch engine's products.
- ``torch`` (CUDA, or numba missing): the same sums as products of 0/1 indicator matrices,
  ``((U_rows @ block) * U_cols).sum(1)``, 2·P·rows·cols floating-point operations per block.

Both engines add the same numbers in a different order; results agree to rounding (~1e-15
relative). The kernels are compiled on first use, never at import.
"""

from __future__ import annotations

import functools
import itertools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from serve_drift.detectors import permutation as perm
from serve_drift.detectors.compiled import Kernels
from serve_drift.detectors.compiled import kernels as _kernels

ENGINES = ("numba", "torch")

# Bound on the temporary memory of the torch engine's indicator matrices per chunk of splits.
_CHUNK_BYTES = 64 * 2**20

# One gathered element costs about as much time as this many floating-point operations of a
# float64 matrix product (measured on a 2-core x86 CPU: ~0.5 ns per gathered element on two
# threads, ~190 GFLOP/s). The numba engine gathers a block only when that is expected to be
# cheaper than the indicator products: when the window side is a small part of the pooled
# rows (M/(N + M) below about 0.14), as for windows much smaller than the reference set.
_GATHER_FLOPS = 100.0

# A block is split over threads only when each gets at least this many gathered elements.
_THREAD_GATHERS = 1_000_000


def engine_for(device: torch.device) -> str:
    """``numba`` on the CPU when numba can be imported, otherwise ``torch``."""
    return "numba" if device.type == "cpu" and _kernels() is not None else "torch"


@dataclass(frozen=True)
class Sides:
    """The window side of every split, prepared once per test for :meth:`block_sums`.

    ``indices`` (splits, M) are pooled row indices on the compute device (any order within a
    row). The numba engine also keeps them sorted on the host with, for every pooled row, the
    splits whose window side holds it (:class:`_HostIndex`).

    >>> import torch
    >>> sides = Sides.from_indices(torch.tensor([[2, 3], [0, 3]]), n_total=4, engine="torch")
    >>> kernel = torch.ones(4, 4, dtype=torch.float64).fill_diagonal_(0.0)
    >>> sides.block_sums(kernel, row_start=0, col_start=0).tolist()
    [2.0, 2.0]
    """

    indices: torch.Tensor
    n_total: int
    engine: str
    host: _HostIndex | None = None

    @classmethod
    def from_indices(cls, indices: torch.Tensor, *, n_total: int, engine: str) -> Sides:
        """Sides from (splits, M) pooled row indices."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        if engine == "torch":
            return cls(indices=indices, n_total=n_total, engine=engine)
        host_indices = np.sort(indices.cpu().numpy().astype(np.int64, copy=False), axis=1)
        host = _HostIndex.build(host_indices, n_total=n_total)
        return cls(
            indices=torch.from_numpy(host_indices), n_total=n_total, engine=engine, host=host
        )

    @classmethod
    def draw(
        cls,
        count: int,
        *,
        n: int,
        m: int,
        generator: torch.Generator,
        engine: str,
        chunk: int,
    ) -> Sides:
        """The observed split (row 0: the window's own rows) and ``count`` random ones.

        Drawn ``chunk`` splits at a time with :func:`permutation.random_subsets`, so a seed
        gives the same splits as every earlier version of the native tests.
        """
        device = generator.device
        parts = [torch.arange(n, n + m, device=device).unsqueeze(0)]
        for first in range(0, count, chunk):
            size = min(chunk, count - first)
            parts.append(perm.random_subsets(size, n=n, m=m, generator=generator))
        return cls.from_indices(torch.cat(parts), n_total=n + m, engine=engine)

    @property
    def count(self) -> int:
        return int(self.indices.shape[0])

    def gather_sums(self, values: torch.Tensor) -> torch.Tensor:
        """``Σ_{i ∈ S} values[i]`` for every split (K's row sums over the window side)."""
        return values[self.indices.to(values.device)].sum(dim=1)

    def block_sums(
        self, block: torch.Tensor, *, row_start: int, col_start: int, upper: bool = False
    ) -> torch.Tensor:
        """``Σ K_ij`` over the block's elements with i, j in the window side, for every split.

        ``block`` holds K's rows ``row_start:row_start + rows`` and columns
        ``col_start:col_start + cols``. ``upper`` keeps only the pairs j > i; it needs a block
        that starts on K's diagonal (``col_start == row_start``), whose leading square part
        is symmetric with a zero diagonal (as every block of K is), so that the torch engine
        may take half of that square's full sum.
        """
        if upper and (col_start != row_start or block.shape[1] < block.shape[0]):
            raise ValueError(
                "an upper block must start on the kernel matrix's diagonal and hold its square"
            )
        if self.host is None or not self._gathering_pays(block.shape, upper=upper):
            return _torch_block_sums(
                block, self.indices, row_start=row_start, col_start=col_start, upper=upper
            )
        sums = self.host.block_sums(
            block.detach().cpu().numpy(), row_start=row_start, col_start=col_start, upper=upper
        )
        return torch.from_numpy(sums).to(block.device)

    def _gathering_pays(self, shape: torch.Size, *, upper: bool) -> bool:
        """Whether gathering this block's window-side elements beats the indicator products.

        A split's window side holds about M·rows/(N + M) of the block's rows and as large a
        share of its columns; ``upper`` halves the gathers in the block's leading square.
        """
        rows, cols = int(shape[0]), int(shape[1])
        m = int(self.indices.shape[1])
        share = m / self.n_total
        pairs = (share * rows) * (share * cols)
        if upper:
            pairs -= 0.5 * (share * rows) ** 2
        return pairs * _GATHER_FLOPS < 2.0 * rows * cols


@dataclass(frozen=True)
class _HostIndex:
    """Sorted window sides and, per pooled row, the splits that hold it and where.

    ``row_split[row_ptr[i]:row_ptr[i + 1]]`` are the splits whose window side holds pooled row
    i, and ``row_pos`` its position in each of them (a CSR index built in one pass).
    """

    ordered: np.ndarray
    row_ptr: np.ndarray
    row_split: np.ndarray
    row_pos: np.ndarray

    @classmethod
    def build(cls, ordered: np.ndarray, *, n_total: int) -> _HostIndex:
        row_ptr, row_split, row_pos = _require_kernels().row_index(ordered, n_total)
        return cls(ordered=ordered, row_ptr=row_ptr, row_split=row_split, row_pos=row_pos)

    def block_sums(
        self, block: np.ndarray, *, row_start: int, col_start: int, upper: bool
    ) -> np.ndarray:
        kernels = _require_kernels()
        block = np.ascontiguousarray(block, dtype=np.float64)
        ranges = self._row_ranges(
            row_start, block.shape[0], col_start=col_start, cols=block.shape[1], upper=upper
        )
        outputs = [np.zeros(self.ordered.shape[0]) for _ in ranges]

        def run(part: int) -> None:
            kernels.pair_sums(
                block,
                row_start,
                col_start,
                self.ordered,
                self.row_ptr,
                self.row_split,
                self.row_pos,
                upper,
                *ranges[part],
                outputs[part],
            )

        if len(ranges) == 1:
            run(0)
        else:
            list(_pool().map(run, range(len(ranges))))
        return functools.reduce(np.add, outputs)

    def _row_ranges(
        self, row_start: int, rows: int, *, col_start: int, cols: int, upper: bool
    ) -> list[tuple[int, int]]:
        """Consecutive row ranges of about equal work, one per thread.

        A row's work is the number of splits that hold it, times the window-side columns it
        sums: a share M/(N + M) of the block's columns, or with ``upper`` of those after it.
        """
        entries = np.diff(self.row_ptr[row_start : row_start + rows + 1]).astype(np.float64)
        after = col_start + cols - 1 - np.arange(row_start, row_start + rows)
        columns = after if upper else np.full(rows, cols)
        share = self.ordered.shape[1] / (self.row_ptr.shape[0] - 1)
        cumulative = np.cumsum(entries * columns * share)
        # The caller's intra-op thread budget (torch.set_num_threads), for blocks big enough
        # to repay waking threads next to torch's own (idle but still spinning) workers.
        gathers = float(cumulative[-1]) if rows else 0.0
        parts = max(1, min(torch.get_num_threads(), int(gathers // _THREAD_GATHERS)))
        if parts == 1:
            return [(row_start, row_start + rows)]
        targets = cumulative[-1] * np.arange(1, parts) / parts
        cuts = row_start + np.searchsorted(cumulative, targets)
        edges = [row_start, *(int(c) for c in cuts), row_start + rows]
        return [(lo, hi) for lo, hi in itertools.pairwise(edges) if hi > lo]


@functools.cache
def _pool() -> ThreadPoolExecutor:
    # The kernels release the GIL, so row ranges run in parallel; created on first use.
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="subset-sums")


def _torch_block_sums(
    block: torch.Tensor, indices: torch.Tensor, *, row_start: int, col_start: int, upper: bool
) -> torch.Tensor:
    rows = int(block.shape[0])
    if not upper:
        return _indicator_sums(block, indices, row_start=row_start, col_start=col_start)
    # Pairs j > i: half the leading (symmetric, zero-diagonal) square, all of the rest.
    square = _indicator_sums(block[:, :rows], indices, row_start=row_start, col_start=col_start)
    sums = 0.5 * square
    if block.shape[1] > rows:
        sums = sums + _indicator_sums(
            block[:, rows:], indices, row_start=row_start, col_start=col_start + rows
        )
    return sums


def _indicator_sums(
    block: torch.Tensor, indices: torch.Tensor, *, row_start: int, col_start: int
) -> torch.Tensor:
    rows, cols = block.shape
    indices = indices.to(block.device)
    chunk = max(1, _CHUNK_BYTES // (8 * (rows + cols + 2)))
    sums = []
    for first in range(0, indices.shape[0], chunk):
        part = indices[first : first + chunk]
        in_rows = _indicator(part, start=row_start, size=rows, dtype=block.dtype)
        in_cols = _indicator(part, start=col_start, size=cols, dtype=block.dtype)
        sums.append(((in_rows @ block) * in_cols).sum(dim=1))
    return torch.cat(sums)


def _indicator(indices: torch.Tensor, *, start: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    """(splits, size) 0/1 rows: 1 where the split's window side holds row ``start + j``."""
    shifted = indices - start
    inside = (shifted >= 0) & (shifted < size)
    # Indices outside the block land in one spare column, dropped afterwards.
    spare = torch.where(inside, shifted, torch.full_like(shifted, size))
    flags = torch.zeros(indices.shape[0], size + 1, dtype=dtype, device=indices.device)
    return flags.scatter_(1, spare, 1.0)[:, :size]


def _require_kernels() -> Kernels:
    found = _kernels()
    if found is None:
        raise RuntimeError("the numba engine needs numba; use engine='torch'")
    return found
