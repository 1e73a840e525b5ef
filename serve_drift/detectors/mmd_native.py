"""Native PyTorch MMD permutation test (ours, Apache-2.0), on CPU or CUDA.

Same statistic as alibi-detect's PyTorch ``MMDDrift`` with its defaults (Gaussian RBF kernel,
median-heuristic bandwidth from the reference set, unbiased MMD² with a zeroed kernel diagonal),
but all permutations are evaluated at once from three sums of the pooled kernel matrix instead
of one Python-level gather of the whole matrix per permutation, and the p-value carries the +1
that makes it a valid permutation p-value.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_drift.detectors.base import DetectorInputError, PermutationDetector
from serve_drift.detectors.compiled import (
    Kernels,
    chunk_count,
    kernels,
    require_kernels,
    run_parallel,
    triangle_ranges,
)
from serve_drift.detectors.permutation import make_generator
from serve_drift.detectors.subset_sums import KernelBlocks, Sides, engine_for
from serve_drift.detectors.validate import as_compute_dtype, check_window
from serve_drift.messages import DriftStatistic

# Everything is computed in float64. MMD² is a small difference of large kernel sums (under no
# drift about 1e-3 of each sum), so float32 loses 3-4 significant digits there; float64 keeps
# the statistic within ~1e-12 of alibi-detect's formula on the same data and bandwidth, at a
# cost that is negligible next to alibi's Python permutation loop but not next to float32: the
# window's kernel blocks (2(NM + M²)d operations, the largest part of a warm test) take twice
# as long as float32 products would.
_DTYPE = torch.float64

# Permuted statistics that equal the observed one up to rounding count as ">=": a permutation
# that reproduces the observed split (possible for small samples) must not be lost to the last
# bit of a differently blocked matrix product. Erring this way only makes p-values larger.
_TIE_TOLERANCE = 1e-12

# Bound on the random keys drawn at once (splits x pooled rows); the chunking is kept from the
# first implementation so that every seed still draws the same permutations on every device.
_CHUNK_BYTES = 64 * 2**20

# The reference-reference kernel block is cached when it takes at most this much memory
# (8192 rows in float64); larger reference sets are handled blockwise on every test.
_CACHE_BYTES = 512 * 2**20

# Blockwise tests compute the pooled kernel matrix this many bytes of rows at a time.
_BLOCK_BYTES = 64 * 2**20

# The exact median of a triangle of distances is selected from a band around it when the
# triangle has at least this many entries, the band bracketed by this many sampled entries.
_BAND_MIN_ENTRIES = 1_000_000
_BAND_SAMPLE = 32_768

# The cached reference block is computed this many rows at a time (upper triangle only).
_UPPER_ROWS = 512

# A pass over a triangle is split into calls (run on the caller's threads) of this many entries.
_CHUNK_ENTRIES = 2_000_000

# Above the cache limit the median-heuristic bandwidth comes from this many reference rows,
# drawn with a fixed seed: the median of 8M pairwise distances is as good as that of all.
_MEDIAN_ROWS = 4096


class NativeMMD(PermutationDetector):
    """Kernel MMD two-sample test of each window against a fixed reference set.

    The Gaussian RBF bandwidth is inferred once from the reference set with alibi-detect's
    median heuristic (``sigma = sqrt(median pairwise squared distance / 2)``) unless ``sigma``
    is given. The reference-reference kernel block and its row sums are computed at
    construction and reused; each window adds its cross and window-window blocks. A split of
    the pooled rows only decides which M rows form the window side S, so every permuted
    statistic needs the total of the kernel matrix, the sum of its row sums over S, and the
    sum ``q_S`` of its M x M elements inside S (see :class:`_SplitSums`); ``q_S`` comes from
    :mod:`serve_drift.detectors.subset_sums`, which gathers those elements for all splits in
    one pass over the blocks (numba on the CPU) or multiplies indicator matrices (torch).

    The p-value is ``(1 + #{permuted >= observed}) / (1 + n_permutations)``, never 0.
    Permutations are drawn from a ``torch.Generator`` seeded once with ``seed`` on the compute
    device, so two detectors with the same seed, device type and inputs return identical
    results (``seed=None`` draws a fresh seed). CPU and CUDA generators give different
    permutations: the statistic agrees across devices, the p-value only in distribution.

    Memory: up to ``max_cached_rows`` reference rows (default: 8192, a 512 MiB float64 block)
    the reference-reference kernel block is computed once and cached, and each test adds its
    O(N·M + M²) blocks; with the numba engine only the block's upper triangle is computed
    (the lower one is filled in from it the first time a window's share of the pooled rows is
    large enough for the torch products, which read all of it). Above that, every test works
    blockwise: the pooled kernel matrix's upper triangle is computed a block of rows at a time
    (64 MiB), each block's row sums and window-side sums are accumulated, and the block is
    dropped, so the (N + M)² matrix never exists at once; the bandwidth then comes from 4096
    reference rows drawn with a fixed seed. The statistics are the same either way.

    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> detector = NativeMMD(rng.normal(size=(100, 4)), n_permutations=50, device="cpu")
    >>> result = detector.test(rng.normal(size=(50, 4)) + 3.0)
    >>> result.p_value == 1 / 51
    True
    """

    name = "mmd"
    backend = "native"

    def __init__(
        self,
        reference: Any,
        *,
        p_value_threshold: float = 0.05,
        n_permutations: int = 100,
        device: str | torch.device | None = None,
        seed: int | None = 0,
        sigma: float | None = None,
        max_cached_rows: int | None = None,
    ) -> None:
        super().__init__(
            reference,
            p_value_threshold=p_value_threshold,
            n_permutations=n_permutations,
            device=device,
        )
        self._x_ref = _to_tensor(self.reference, what="reference set", device=self.device)
        self._x_sq = _squared_norms(self._x_ref)
        limit = _default_cached_rows() if max_cached_rows is None else max_cached_rows
        self.blockwise = self.reference_size > limit
        self.engine = engine_for(self.device)
        self._k_xx: torch.Tensor | None = None
        if self.blockwise:
            self.sigma = self._sampled_sigma() if sigma is None else _check_sigma(sigma)
            self._gamma = 1.0 / (2.0 * self.sigma**2)
        else:
            self._cache_reference_block(sigma)
        self._generator = make_generator(seed=seed, device=self.device)

    def _cache_reference_block(self, sigma: float | None) -> None:
        """K_xx and its row sums. The numba engine reads K_xx above its diagonal only, so with
        it only that triangle is computed (half the work and memory touched) and the rest is
        left unwritten until a test needs all of it (:meth:`_whole_k_xx`)."""
        self._k_xx_whole = self.engine != "numba"
        if self._k_xx_whole:
            dist_xx = _squared_distances(self._x_ref, self._x_ref, x_sq=self._x_sq)
        else:
            dist_xx = _upper_squared_distances(self._x_ref, x_sq=self._x_sq)
        self.sigma = _median_sigma(dist_xx) if sigma is None else _check_sigma(sigma)
        self._gamma = 1.0 / (2.0 * self.sigma**2)
        if self._k_xx_whole:
            self._k_xx = _zero_diagonal(torch.exp_(dist_xx.mul_(-self._gamma)))
            self._k_xx_rows = self._k_xx.sum(dim=1)
        else:
            self._k_xx = _zero_diagonal(_upper_exp_(dist_xx, factor=-self._gamma))
            self._k_xx_rows = torch.from_numpy(_upper_row_sums(self._k_xx.numpy()))

    def _whole_k_xx(self) -> torch.Tensor:
        """K_xx with its lower triangle mirrored from the upper one, once, when first needed."""
        assert self._k_xx is not None
        if not self._k_xx_whole:
            _mirror_upper(self._k_xx)
            self._k_xx_whole = True
        return self._k_xx

    def _sampled_sigma(self) -> float:
        if self.reference_size <= _MEDIAN_ROWS:
            sample = self._x_ref
        else:
            rows = np.random.default_rng(0).choice(self.reference_size, _MEDIAN_ROWS, replace=False)
            sample = self._x_ref[torch.as_tensor(np.sort(rows), device=self.device)]
        return _median_sigma(_squared_distances(sample, sample))

    def test(
        self, window: np.ndarray, *, probabilities: np.ndarray | None = None
    ) -> DriftStatistic:
        """Permutation test of ``window`` (M, d) against the reference set.

        ``probabilities`` are not used (the test is on embeddings only).
        """
        y = _to_tensor(check_window(window, dim=self.dim), what="window", device=self.device)
        m = int(y.shape[0])
        sides = Sides.draw(
            self.n_permutations,
            n=self.reference_size,
            m=m,
            generator=self._generator,
            engine=self.engine,
            chunk=max(1, _CHUNK_BYTES // (3 * (self.reference_size + m) * 8)),
        )
        return self._statistic(self._split_sums(y, sides).mmd2(n=self.reference_size, m=m))

    def sides(self, indices: torch.Tensor, *, m: int) -> Sides:
        """Window sides (splits, m) of the pooled rows, prepared for :meth:`split_mmd2`."""
        return Sides.from_indices(indices, n_total=self.reference_size + m, engine=self.engine)

    def split_mmd2(self, y: torch.Tensor, sides: Sides) -> torch.Tensor:
        """The unbiased MMD² of every split in ``sides`` of the reference rows and ``y``."""
        mmd2 = self._split_sums(y, sides).mmd2(n=self.reference_size, m=int(y.shape[0]))
        return torch.from_numpy(mmd2).to(self.device)

    def _split_sums(self, y: torch.Tensor, sides: Sides) -> _SplitSums:
        if self._k_xx is None:
            return self._blockwise_sums(y, sides)
        k_xx = self._k_xx if sides.gathers_pooled() else self._whole_k_xx()
        return self._cached_sums(k_xx, y, sides)

    def _cached_sums(self, k_xx: torch.Tensor, y: torch.Tensor, sides: Sides) -> _SplitSums:
        y_sq = _squared_norms(y)
        k_xy = _rbf(self._x_ref, y, gamma=self._gamma, x_sq=self._x_sq, y_sq=y_sq)
        k_yy = _zero_diagonal(_rbf(y, y, gamma=self._gamma, x_sq=y_sq, y_sq=y_sq))
        blocks = KernelBlocks(k_xx=k_xx, k_xx_rows=self._k_xx_rows, k_xy=k_xy, k_yy=k_yy)
        rows, upper = sides.pooled_sums(blocks)
        return _SplitSums.of(rows=rows, upper=upper, sides=sides)

    def _blockwise_sums(self, y: torch.Tensor, sides: Sides) -> _SplitSums:
        """The same sums from K's upper triangle, computed 64 MiB of rows at a time."""
        pooled = torch.cat([self._x_ref, y])
        pooled_sq = torch.cat([self._x_sq, _squared_norms(y)])
        n_total = int(pooled.shape[0])
        rows = torch.zeros(n_total, dtype=_DTYPE, device=self.device)
        upper = torch.zeros(sides.count, dtype=_DTYPE, device=self.device)
        step = max(1, _BLOCK_BYTES // (8 * n_total))
        for start in range(0, n_total, step):
            stop = min(start + step, n_total)
            # Rows start:stop, columns start:: a square on the diagonal, then everything right
            # of it; the part left of the diagonal was the columns of earlier blocks.
            block = _rbf(
                pooled[start:stop],
                pooled[start:],
                gamma=self._gamma,
                x_sq=pooled_sq[start:stop],
                y_sq=pooled_sq[start:],
            )
            local = torch.arange(stop - start, device=self.device)
            block[local, local] = 0.0  # the zero diagonal of K
            rows[start:stop] += block.sum(dim=1)
            rows[stop:] += block[:, stop - start :].sum(dim=0)
            upper += sides.block_sums(block, row_start=start, col_start=start, upper=True)
        return _SplitSums.of(rows=rows.cpu().numpy(), upper=upper.cpu().numpy(), sides=sides)

    def _statistic(self, mmd2: np.ndarray) -> DriftStatistic:
        """The p-value and threshold from ``mmd2 = [observed, *permuted]``."""
        observed, permuted = float(mmd2[0]), mmd2[1:]
        if not (math.isfinite(observed) and bool(np.isfinite(permuted).all())):
            raise DetectorInputError(
                "MMD² is not finite: embedding magnitudes overflow the kernel computation"
            )
        exceed = int(np.count_nonzero(permuted >= observed - _TIE_TOLERANCE))
        # Same order statistic alibi-detect reports as its distance threshold.
        threshold = float(
            np.sort(permuted)[::-1][int(self.p_value_threshold * self.n_permutations)]
        )
        return DriftStatistic(
            p_value=(1 + exceed) / (1 + self.n_permutations),
            distance=observed,
            distance_threshold=threshold,
        )


@dataclass(frozen=True)
class _SplitSums:
    """Three sums of the zero-diagonal pooled kernel matrix K that give every split's MMD².

    For a split with window side S (M rows) and reference side R (the other N), alibi's
    statistic is ``c_x·S_RR + c_y·S_SS - 2/(NM)·S_RS`` with ``c_x = 1/(N(N-1))``,
    ``c_y = 1/(M(M-1))`` and ``S_AB`` the sum of K over A x B. With the total ``T`` of K, its
    row sums ``r`` and ``q = S_SS`` (``within``): ``S_RS = Σ_{i∈S} r_i - q`` and
    ``S_RR = T - 2·S_RS - q``. ``side_sums`` holds ``Σ_{i∈S} r_i`` per split.
    """

    total: float
    side_sums: np.ndarray
    within: np.ndarray

    @classmethod
    def of(cls, *, rows: np.ndarray, upper: np.ndarray, sides: Sides) -> _SplitSums:
        """From K's row sums and each split's sum over the pairs i < j of its window side."""
        # Doubled: K is symmetric with a zero diagonal.
        return cls(total=float(rows.sum()), side_sums=sides.side_totals(rows), within=2.0 * upper)

    def mmd2(self, *, n: int, m: int) -> np.ndarray:
        cross = self.side_sums - self.within
        reference = self.total - 2.0 * cross - self.within
        return reference / (n * (n - 1)) + self.within / (m * (m - 1)) - 2.0 * cross / (n * m)


def _default_cached_rows() -> int:
    return math.isqrt(_CACHE_BYTES // 8)


def _to_tensor(array: np.ndarray, *, what: str, device: torch.device) -> torch.Tensor:
    compute = as_compute_dtype(array, dtype=np.float64, what=what)
    return torch.as_tensor(compute, dtype=_DTYPE, device=device)


def _squared_norms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).sum(dim=-1, keepdim=True)


def _squared_distances(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    x_sq: torch.Tensor | None = None,
    y_sq: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise squared Euclidean distances, the same formula and clamp as alibi-detect.

    ``x_sq``/``y_sq`` are the rows' squared norms when already known (the reference's are
    computed once); passing them changes no bit of the result. ``out``: where to write them.
    """
    x2 = _squared_norms(x) if x_sq is None else x_sq
    y2 = _squared_norms(y) if y_sq is None else y_sq
    dist = torch.addmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2, out=out)
    return dist.add_(x2).clamp_min_(1e-30)


def _upper_squared_distances(x: torch.Tensor, *, x_sq: torch.Tensor) -> torch.Tensor:
    """:func:`_squared_distances` of ``x`` with itself, computed a block of rows at a time and
    only from each block's diagonal on: the strict upper triangle (and the diagonal) hold the
    same values, and most of the lower triangle is never written (its memory never touched).

    The blocks are products of the same BLAS routine as the whole matrix; on the shapes
    checked (N up to 5000, d from 10 to 2048) their elements equal the whole product's bit for
    bit, and a BLAS that blocks differently changes them by rounding only (~1e-16).
    """
    n = int(x.shape[0])
    dist = torch.empty(n, n, dtype=x.dtype, device=x.device)
    for start in range(0, n, _UPPER_ROWS):
        stop = min(start + _UPPER_ROWS, n)
        _squared_distances(
            x[start:stop],
            x[start:],
            x_sq=x_sq[start:stop],
            y_sq=x_sq[start:],
            out=dist[start:stop, start:],
        )
    return dist


def _upper_exp_(dist: torch.Tensor, *, factor: float) -> torch.Tensor:
    """``exp(factor * dist)`` in place, on the blocks :func:`_upper_squared_distances` wrote."""
    n = int(dist.shape[0])
    for start in range(0, n, _UPPER_ROWS):
        torch.exp_(dist[start : start + _UPPER_ROWS, start:].mul_(factor))
    return dist


def _upper_row_sums(matrix: np.ndarray) -> np.ndarray:
    """Row sums of a symmetric matrix from its strict upper triangle (row i: its own entries
    after the diagonal, then those of column i above it)."""
    n = int(matrix.shape[0])
    kernels = require_kernels()
    ranges = triangle_ranges(n, parts=chunk_count(n * n / 2 / _CHUNK_ENTRIES))
    rows = np.zeros(n)
    columns = [np.zeros(n) for _ in ranges]
    run_parallel(
        kernels.upper_row_sums,
        [(matrix, lo, hi, rows, col) for (lo, hi), col in zip(ranges, columns, strict=True)],
    )
    return rows + functools.reduce(np.add, columns)


def _mirror_upper(matrix: torch.Tensor) -> None:
    """Copy the strict upper triangle onto the lower one, in place (blocks of rows)."""
    n = int(matrix.shape[0])
    for start in range(0, n, _UPPER_ROWS):
        stop = min(start + _UPPER_ROWS, n)
        square = matrix[start:stop, start:stop]
        upper = square.triu(diagonal=1)
        square.copy_(upper + upper.T)
        matrix[stop:, start:stop] = matrix[start:stop, stop:].T


def _rbf(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    gamma: float,
    x_sq: torch.Tensor | None = None,
    y_sq: torch.Tensor | None = None,
) -> torch.Tensor:
    return torch.exp_(_squared_distances(x, y, x_sq=x_sq, y_sq=y_sq).mul_(-gamma))


def _zero_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    matrix.fill_diagonal_(0.0)
    return matrix


def _median_sigma(dist_xx: torch.Tensor) -> float:
    """alibi-detect's ``sigma_median`` on (x_ref, x_ref).

    alibi sorts all N² distances and takes index ``N + N(N-1)/2 - 1``: past the N zero
    diagonal entries, the lower median of the off-diagonal ones, each of which appears twice.
    That is the lower median of the strict upper triangle, which ``torch.median`` returns.
    """
    median = _upper_median(dist_xx)
    if not median > 1e-30:
        raise DetectorInputError(
            "reference set is degenerate: at least half of its row pairs are identical, so the "
            "median-heuristic kernel bandwidth is 0"
        )
    return _check_sigma(math.sqrt(0.5 * median))


def _upper_median(matrix: torch.Tensor) -> float:
    """The lower median of the strict upper triangle of ``matrix``, exactly.

    With the numba kernels (CPU) the N(N-1)/2 entries are never copied: a seeded sample of
    them brackets the median, one pass counts the entries below the bracket and keeps those
    inside it (about 3 % of them), and the median is selected among those. The value is
    the same element ``torch.median`` of all the entries returns; the sample only decides
    how fast it is found (an unlucky bracket, odds below 1e-8, falls back to that copy).
    """
    n = int(matrix.shape[0])
    count = n * (n - 1) // 2
    found = kernels()
    if found is not None and matrix.device.type == "cpu" and count >= _BAND_MIN_ENTRIES:
        value = _banded_median(matrix.numpy(), rank=(count - 1) // 2, kernels=found)
        if value is not None:
            return value
    upper = torch.ones(n, n, dtype=torch.bool, device=matrix.device).triu_(diagonal=1)
    return float(matrix[upper].median())


def _banded_median(matrix: np.ndarray, *, rank: int, kernels: Kernels) -> float | None:
    """The entry of the given rank among the strict upper triangle's, or ``None``."""
    n = matrix.shape[0]
    count = n * (n - 1) // 2
    rng = np.random.default_rng(0)
    i, j = rng.integers(0, n, size=(2, _BAND_SAMPLE))
    distinct = i != j
    sample = np.sort(matrix[np.minimum(i, j)[distinct], np.maximum(i, j)[distinct]])
    quantile = rank / count
    spread = 6.0 * math.sqrt(quantile * (1.0 - quantile) / sample.size)  # six sigma
    low = sample[max(0, math.floor((quantile - spread) * sample.size))]
    high = sample[min(sample.size - 1, math.ceil((quantile + spread) * sample.size))]
    ranges = triangle_ranges(n, parts=chunk_count(count / _CHUNK_ENTRIES))
    bands = [np.empty(int(4 * spread * count / len(ranges)) + 1024) for _ in ranges]
    counts: list[tuple[int, int]] = [(0, 0)] * len(ranges)

    def run(part: int) -> None:
        lo, hi = ranges[part]
        counts[part] = kernels.upper_band(matrix, low, high, lo, hi, bands[part])

    run_parallel(run, [(part,) for part in range(len(ranges))])
    if any(kept > band.size for (_, kept), band in zip(counts, bands, strict=True)):
        return None
    below = sum(b for b, _ in counts)
    band = np.concatenate([band[:kept] for (_, kept), band in zip(counts, bands, strict=True)])
    if not below <= rank < below + band.size:
        return None
    return float(np.partition(band, rank - below)[rank - below])


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise DetectorInputError(f"kernel bandwidth must be finite and positive, got {sigma}")
    return sigma
