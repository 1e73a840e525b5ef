"""Native PyTorch MMD permutation test (ours, Apache-2.0), on CPU or CUDA.

Same statistic as alibi-detect's PyTorch ``MMDDrift`` with its defaults (Gaussian RBF kernel,
median-heuristic bandwidth from the reference set, unbiased MMD² with a zeroed kernel diagonal),
but all permutations are evaluated at once from three sums of the pooled kernel matrix instead
of one Python-level gather of the whole matrix per permutation, and the p-value carries the +1
that makes it a valid permutation p-value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from serve_drift.detectors.base import DetectorInputError, PermutationDetector
from serve_drift.detectors.compiled import Kernels, kernels
from serve_drift.detectors.permutation import make_generator
from serve_drift.detectors.subset_sums import Sides, engine_for
from serve_drift.detectors.validate import as_compute_dtype, check_window
from serve_drift.messages import DriftStatistic

# Everything is computed in float64. MMD² is a small difference of large kernel sums (under no
# drift about 1e-3 of each sum), so float32 loses 3-4 significant digits there; float64 keeps
# the statistic within ~1e-12 of alibi-detect's formula on the same data and bandwidth, at a
# cost that is negligible next to alibi's Python permutation loop.
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
    O(N·M + M²) blocks. Above that, every test works blockwise: the pooled kernel matrix's
    upper triangle is computed a block of rows at a time (64 MiB), each block's row sums and
    window-side sums are accumulated, and the block is dropped, so the (N + M)² matrix never
    exists at once; the bandwidth then comes from 4096 reference rows drawn with a fixed seed.
    The statistics are the same either way.

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
            dist_xx = _squared_distances(self._x_ref, self._x_ref, x_sq=self._x_sq)
            self.sigma = _median_sigma(dist_xx) if sigma is None else _check_sigma(sigma)
            self._gamma = 1.0 / (2.0 * self.sigma**2)
            self._k_xx = _zero_diagonal(torch.exp_(dist_xx.mul_(-self._gamma)))
            self._k_xx_rows = self._k_xx.sum(dim=1)
        self._generator = make_generator(seed=seed, device=self.device)

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
        mmd2 = self.split_mmd2(y, sides)
        return self._statistic(observed=mmd2[0], permuted=mmd2[1:])

    def sides(self, indices: torch.Tensor, *, m: int) -> Sides:
        """Window sides (splits, m) of the pooled rows, prepared for :meth:`split_mmd2`."""
        return Sides.from_indices(indices, n_total=self.reference_size + m, engine=self.engine)

    def split_mmd2(self, y: torch.Tensor, sides: Sides) -> torch.Tensor:
        """The unbiased MMD² of every split in ``sides`` of the reference rows and ``y``."""
        if self._k_xx is None:
            sums = self._blockwise_sums(y, sides)
        else:
            sums = self._cached_sums(self._k_xx, y, sides)
        return sums.mmd2(n=self.reference_size, m=int(y.shape[0]))

    def _cached_sums(self, k_xx: torch.Tensor, y: torch.Tensor, sides: Sides) -> _SplitSums:
        n = self.reference_size
        # Pairs i < j inside S, then doubled: K is symmetric with a zero diagonal. The cached
        # block goes first, before the window's blocks push it out of the CPU caches.
        upper = sides.block_sums(k_xx, row_start=0, col_start=0, upper=True)
        y_sq = _squared_norms(y)
        k_xy = _rbf(self._x_ref, y, gamma=self._gamma, x_sq=self._x_sq, y_sq=y_sq)
        k_yy = _zero_diagonal(_rbf(y, y, gamma=self._gamma, x_sq=y_sq, y_sq=y_sq))
        rows = torch.cat([self._k_xx_rows + k_xy.sum(dim=1), k_xy.sum(dim=0) + k_yy.sum(dim=1)])
        upper = (
            upper
            + sides.block_sums(k_xy, row_start=0, col_start=n)
            + sides.block_sums(k_yy, row_start=n, col_start=n, upper=True)
        )
        return _SplitSums(total=rows.sum(), side_sums=sides.gather_sums(rows), within=2.0 * upper)

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
        return _SplitSums(total=rows.sum(), side_sums=sides.gather_sums(rows), within=2.0 * upper)

    def _statistic(self, *, observed: torch.Tensor, permuted: torch.Tensor) -> DriftStatistic:
        exceed = int((permuted >= observed - _TIE_TOLERANCE).sum())
        mmd2 = float(observed)
        permuted_mmd2 = torch.sort(permuted, descending=True).values.cpu()
        if not (math.isfinite(mmd2) and bool(torch.isfinite(permuted_mmd2).all())):
            raise DetectorInputError(
                "MMD² is not finite: embedding magnitudes overflow the kernel computation"
            )
        # Same order statistic alibi-detect reports as its distance threshold.
        threshold = float(permuted_mmd2[int(self.p_value_threshold * self.n_permutations)])
        return DriftStatistic(
            p_value=(1 + exceed) / (1 + self.n_permutations),
            distance=mmd2,
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

    total: torch.Tensor
    side_sums: torch.Tensor
    within: torch.Tensor

    def mmd2(self, *, n: int, m: int) -> torch.Tensor:
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
) -> torch.Tensor:
    """Pairwise squared Euclidean distances, the same formula and clamp as alibi-detect.

    ``x_sq``/``y_sq`` are the rows' squared norms when already known (the reference's are
    computed once); passing them changes no bit of the result.
    """
    x2 = _squared_norms(x) if x_sq is None else x_sq
    y2 = _squared_norms(y) if y_sq is None else y_sq
    dist = torch.addmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x2)
    return dist.clamp_min_(1e-30)


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
    band = np.empty(int(4 * spread * count) + 1024)
    below, kept = kernels.upper_band(matrix, low, high, band)
    if kept > band.size or not below <= rank < below + kept:
        return None
    return float(np.partition(band[:kept], rank - below)[rank - below])


def _check_sigma(sigma: float) -> float:
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise DetectorInputError(f"kernel bandwidth must be finite and positive, got {sigma}")
    return sigma
