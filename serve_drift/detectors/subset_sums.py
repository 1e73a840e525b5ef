"""Sums of a kernel matrix over the window side of every split: the MMD test's inner loop.

For the pooled zero-diagonal kernel matrix K and the window side S of one split (M of the
N + M pooled rows), the unbiased MMD² needs the total of K, the sum of K's row sums over S,
and ``q_S``, the sum of K over S x S (see :mod:`serve_drift.detectors.mmd_native`). This module
draws the splits and computes those sums for every split at once, with one of two engines:

- ``numba`` (CPU, when numba is importable): a split's window side is selected from its random
  keys without sorting (:func:`compiled.top_subsets`), and an index lists, for every pooled
  row, the splits whose window side holds it. A test with the reference block cached then
  makes one pass over the pooled rows (:meth:`Sides.pooled_sums`): each row of the window's
  blocks is summed, and for every split holding the row, the row's elements in the window
  side's columns after it are gathered, so K_xx is read once, above its diagonal only, and a
  whole test gathers P·M(M-1)/2 elements instead of multiplying P dense weight vectors with the
  (N + M)² matrix. Gathers are slower per element than a matrix product's operations, so the
  pass (or, blockwise, a block) gathers only when the window side is a small share of the
  pooled rows (see ``_GATHER_FLOPS``); otherwise the torch engine's products are used. The
  passes are split into calls that the caller's threads take in turn.
- ``torch`` (CUDA, or numba missing): the same sums as products of 0/1 indicator matrices,
  ``((U_rows @ block) * U_cols).sum(1)``, 2·P·rows·cols floating-point operations per block.

Both engines draw the same splits and add the same numbers in a different order; results
agree to rounding (~1e-15 relative), and with the numba engine they do not depend on the number
of threads. The kernels are compiled on first use, never at import.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from serve_drift.detectors import permutation as perm
from serve_drift.detectors.compiled import chunk_count, require_kernels, run_parallel, work_ranges
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

# A pass is split into calls (run on the caller's threads) of about this many gathered
# elements, and a selection of splits into calls of about this many random keys: enough
# work to repay a call (a few microseconds) and a thread's waking up.
_CHUNK_GATHERS = 400_000
_CHUNK_KEYS = 60_000

# Costs besides the gathers, in gathered elements, that balance a pass's threads: each
# (row, split) pair's loop set-up and total, and each element of a row that is summed whole.
_ENTRY_COST = 40.0
_ROW_ELEMENT_COST = 0.3

# Reference rows at least this long (a third of a 48 KiB L1 data cache) are streamed into
# the cache before they are gathered from (see :func:`compiled.window_sums`).
_STREAM_ROW_BYTES = 16 * 2**10


def engine_for(device: torch.device) -> str:
    """``numba`` on the CPU when numba can be imported, otherwise ``torch``."""
    return "numba" if device.type == "cpu" and _kernels() is not None else "torch"


@dataclass(frozen=True, kw_only=True)
class KernelBlocks:
    """One test's pooled kernel matrix K = [[K_xx, K_xy], [K_yx, K_yy]] by blocks (reference
    rows first), with K_xx's row sums (cached with it)."""

    k_xx: torch.Tensor
    k_xx_rows: torch.Tensor
    k_xy: torch.Tensor
    k_yy: torch.Tensor


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
        return cls._sorted(
            np.sort(indices.cpu().numpy().astype(np.int64, copy=False), axis=1), n_total=n_total
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

        Drawn ``chunk`` splits at a time from :func:`permutation.random_keys`, each split the
        ``m`` largest keys of its row as in :func:`permutation.random_subsets`, so a seed gives
        the same splits as every earlier version of the native tests. The numba engine selects
        them without ``topk`` and without sorting (:func:`compiled.top_subsets`).
        """
        device = generator.device
        observed = torch.arange(n, n + m, device=device).unsqueeze(0)
        if engine != "numba":
            parts = [observed]
            for first in range(0, count, chunk):
                size = min(chunk, count - first)
                parts.append(perm.random_subsets(size, n=n, m=m, generator=generator))
            return cls.from_indices(torch.cat(parts), n_total=n + m, engine=engine)
        ordered = np.empty((count + 1, m), dtype=np.int64)
        ordered[0] = observed.numpy()
        for first in range(0, count, chunk):
            size = min(chunk, count - first)
            keys = perm.random_keys(size, n_total=n + m, generator=generator).numpy()
            _top_subsets(keys, m=m, out=ordered[1 + first : 1 + first + size])
        return cls._sorted(ordered, n_total=n + m)

    @classmethod
    def _sorted(cls, ordered: np.ndarray, *, n_total: int) -> Sides:
        host = _HostIndex.build(ordered, n_total=n_total)
        return cls(indices=torch.from_numpy(ordered), n_total=n_total, engine="numba", host=host)

    @property
    def count(self) -> int:
        return int(self.indices.shape[0])

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

    def side_totals(self, values: np.ndarray) -> np.ndarray:
        """``Σ_{i ∈ S} values[i]`` for every split, on the host (``values`` per pooled row)."""
        return values[self.host.ordered if self.host else self.indices.cpu().numpy()].sum(axis=1)

    def pooled_sums(self, blocks: KernelBlocks) -> tuple[np.ndarray, np.ndarray]:
        """Row sums of the pooled K, and per split the sum of its pairs i < j inside the window
        side, both on the host.

        K_xx must be whole and symmetric unless :meth:`gathers_pooled`. The numba engine reads
        every block once, in one pass over the pooled rows that sums each row and gathers the
        window side's elements after it (see :func:`compiled.window_sums`); the torch engine
        takes the three blocks' sums one after another.
        """
        if self.host is None or not self.gathers_pooled():
            return self._blockwise_pooled_sums(blocks)
        rows, upper = self.host.pooled_sums(
            *(block.detach().cpu().numpy() for block in (blocks.k_xx, blocks.k_xy, blocks.k_yy))
        )
        rows[: blocks.k_xx.shape[0]] += blocks.k_xx_rows.detach().cpu().numpy()
        return rows, upper

    def gathers_pooled(self) -> bool:
        """Whether :meth:`pooled_sums` gathers (reading K_xx above its diagonal only) rather
        than taking the torch engine's products (which need all of K_xx, symmetric)."""
        square = torch.Size([self.n_total, self.n_total])
        return self.host is not None and self._gathering_pays(square, upper=True)

    def _blockwise_pooled_sums(self, blocks: KernelBlocks) -> tuple[np.ndarray, np.ndarray]:
        k_xx, k_xy, k_yy = blocks.k_xx, blocks.k_xy, blocks.k_yy
        n = int(k_xx.shape[0])
        # The cached block goes first, before the window's blocks push it out of the CPU caches.
        upper = self.block_sums(k_xx, row_start=0, col_start=0, upper=True)
        upper = (
            upper
            + self.block_sums(k_xy, row_start=0, col_start=n)
            + self.block_sums(k_yy, row_start=n, col_start=n, upper=True)
        )
        rows = torch.cat([blocks.k_xx_rows + k_xy.sum(dim=1), k_xy.sum(dim=0) + k_yy.sum(dim=1)])
        return rows.cpu().numpy(), upper.cpu().numpy()

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
        row_ptr, row_split, row_pos = require_kernels().row_index(ordered, n_total)
        return cls(ordered=ordered, row_ptr=row_ptr, row_split=row_split, row_pos=row_pos)

    def block_sums(
        self, block: np.ndarray, *, row_start: int, col_start: int, upper: bool
    ) -> np.ndarray:
        kernels = require_kernels()
        block = np.ascontiguousarray(block, dtype=np.float64)
        ranges = self._row_ranges(
            row_start, block.shape[0], col_start=col_start, cols=block.shape[1], upper=upper
        )
        outputs = [np.zeros(self.ordered.shape[0]) for _ in ranges]
        index = (self.ordered, self.row_ptr, self.row_split, self.row_pos)
        run_parallel(
            kernels.pair_sums,
            [
                (block, row_start, col_start, *index, upper, lo, hi, out)
                for (lo, hi), out in zip(ranges, outputs, strict=True)
            ],
        )
        return functools.reduce(np.add, outputs)

    def pooled_sums(
        self, k_xx: np.ndarray, k_xy: np.ndarray, k_yy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Row sums of [K_xy; K_yy] per pooled row and the window sides' pairs i < j of the
        pooled K, from one pass of :func:`compiled.window_sums` per thread."""
        n, m = k_xy.shape
        n_total = n + m
        blocks = [np.ascontiguousarray(b, dtype=np.float64) for b in (k_xx, k_xy, k_yy)]
        reference_side = (self.ordered < n).sum(axis=1)
        ranges = self._row_ranges(
            0, n_total, col_start=0, cols=n_total, upper=True, row_cost=_ROW_ELEMENT_COST * m
        )
        rows = np.empty(n_total)
        columns = [np.zeros(m) for _ in ranges]
        within = [np.zeros(self.ordered.shape[0]) for _ in ranges]
        stream = n * 8 >= _STREAM_ROW_BYTES
        index = (self.ordered, self.row_ptr, self.row_split, self.row_pos, reference_side, stream)
        run_parallel(
            require_kernels().window_sums,
            [
                (*blocks, *index, lo, hi, rows, col, out)
                for (lo, hi), col, out in zip(ranges, columns, within, strict=True)
            ],
        )
        rows[n:] += functools.reduce(np.add, columns)
        return rows, functools.reduce(np.add, within)

    def _row_ranges(
        self,
        row_start: int,
        rows: int,
        *,
        col_start: int,
        cols: int,
        upper: bool,
        row_cost: float = 0.0,
    ) -> list[tuple[int, int]]:
        """Consecutive row ranges of about equal work, one per call of a kernel.

        A row's work, in gathered elements: the number of splits that hold it, times the
        window-side columns it sums (a share M/(N + M) of the block's columns, or with
        ``upper`` of those after it) plus a fixed cost per split (``_ENTRY_COST``), plus
        ``row_cost`` for whatever else the pass does with the row.
        """
        entries = np.diff(self.row_ptr[row_start : row_start + rows + 1]).astype(np.float64)
        after = col_start + cols - 1 - np.arange(row_start, row_start + rows)
        columns = after if upper else np.full(rows, cols)
        share = self.ordered.shape[1] / (self.row_ptr.shape[0] - 1)
        gathers = entries * columns * share
        cumulative = np.cumsum(gathers + _ENTRY_COST * entries + row_cost)
        parts = chunk_count(gathers.sum() / _CHUNK_GATHERS)
        return work_ranges(cumulative, start=row_start, parts=parts)


def _top_subsets(keys: np.ndarray, *, m: int, out: np.ndarray) -> None:
    """``out[r]``: the sorted columns of the ``m`` largest keys of row r."""
    count = int(keys.shape[0])
    if m == 0 or count == 0:
        return
    parts = chunk_count(keys.size / _CHUNK_KEYS)
    ranges = work_ranges(np.arange(1.0, count + 1.0), start=0, parts=parts)
    kernels = require_kernels()
    cuts = np.empty(count)
    run_parallel(kernels.top_subsets, [(keys, m, lo, hi, out, cuts) for lo, hi in ranges])
    for row in np.flatnonzero(out[:, 0] < 0):  # equal keys at the cut: lowest columns first
        kernels.tied_subset(keys[row], m, cuts[row], out[row])


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
