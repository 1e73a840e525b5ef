"""A frozen copy of the native MMD test as it was before the split sums (issue 13).

Every permuted statistic there was a quadratic form ``wᵀKw`` of a dense weight vector with the
whole pooled kernel matrix (2·P·(N + M)² operations per window). The tests compare today's
detector with this copy: for the same seed, the same permutations must give the same p-values
and thresholds, and the same statistic to rounding. Nothing here may change with the package;
it imports only torch and numpy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

DTYPE = torch.float64
TIE_TOLERANCE = 1e-12
CHUNK_BYTES = 64 * 2**20
MEDIAN_ROWS = 4096


@dataclass(frozen=True)
class FrozenResult:
    p_value: float
    distance: float
    distance_threshold: float


class FrozenNativeMMD:
    """The former ``NativeMMD.test`` (cached and blockwise paths), on the CPU."""

    def __init__(
        self,
        reference: np.ndarray,
        *,
        n_permutations: int = 100,
        p_value_threshold: float = 0.05,
        seed: int = 0,
        sigma: float | None = None,
        blockwise: bool = False,
        block_bytes: int = 64 * 2**20,
    ) -> None:
        self.x = torch.as_tensor(np.asarray(reference, dtype=np.float64))
        self.n_permutations = n_permutations
        self.p_value_threshold = p_value_threshold
        self.blockwise = blockwise
        self.block_bytes = block_bytes
        if blockwise:
            self.sigma = sampled_sigma(self.x) if sigma is None else float(sigma)
        else:
            dist = squared_distances(self.x, self.x)
            self.sigma = median_sigma(dist) if sigma is None else float(sigma)
        self.gamma = 1.0 / (2.0 * self.sigma**2)
        self.k_xx = rbf(self.x, self.x, gamma=self.gamma).fill_diagonal_(0.0)
        self.generator = torch.Generator().manual_seed(seed)

    def test(self, window: np.ndarray) -> FrozenResult:
        y = torch.as_tensor(np.asarray(window, dtype=np.float64))
        split = SplitWeights.for_sizes(n=self.x.shape[0], m=y.shape[0])
        chunk = max(1, CHUNK_BYTES // (3 * (split.n + split.m) * 8))
        if self.blockwise:
            return self._test_blockwise(y, split, chunk)
        k_xy = rbf(self.x, y, gamma=self.gamma)
        k_yy = rbf(y, y, gamma=self.gamma).fill_diagonal_(0.0)
        blocks = (self.k_xx, k_xy, k_yy)
        observed = quadratic_forms(blocks, split.observed_weights())[0]
        forms = []
        for start in range(0, self.n_permutations, chunk):
            size = min(chunk, self.n_permutations - start)
            forms.append(quadratic_forms(blocks, split.random_weights(size, self.generator)))
        offset = split.offset * (self.k_xx.sum() + 2 * k_xy.sum() + k_yy.sum())
        return self._result(observed, torch.cat(forms), offset)

    def _test_blockwise(self, y: torch.Tensor, split: SplitWeights, chunk: int) -> FrozenResult:
        pooled = torch.cat([self.x, y])
        forms, total = [], torch.zeros((), dtype=DTYPE)
        for start in range(0, self.n_permutations, chunk):
            size = min(chunk, self.n_permutations - start)
            weights = split.random_weights(size, self.generator)
            if start == 0:
                weights = torch.cat([split.observed_weights(), weights])
            chunk_forms, total = blockwise_forms(
                pooled, weights, gamma=self.gamma, block_bytes=self.block_bytes
            )
            forms.append(chunk_forms)
        all_forms = torch.cat(forms)
        return self._result(all_forms[0], all_forms[1:], split.offset * total)

    def _result(
        self, observed: torch.Tensor, permuted: torch.Tensor, offset: torch.Tensor
    ) -> FrozenResult:
        exceed = int((permuted >= observed - TIE_TOLERANCE).sum())
        ordered = torch.sort(permuted + offset, descending=True).values
        return FrozenResult(
            p_value=(1 + exceed) / (1 + self.n_permutations),
            distance=float(observed + offset),
            distance_threshold=float(ordered[int(self.p_value_threshold * self.n_permutations)]),
        )


@dataclass(frozen=True)
class SplitWeights:
    n: int
    m: int
    a: float
    b: float
    offset: float

    @classmethod
    def for_sizes(cls, *, n: int, m: int) -> SplitWeights:
        c_x, c_y, c_xy = 1.0 / (n * (n - 1)), 1.0 / (m * (m - 1)), 1.0 / (n * m)
        d = c_x + c_y + 2.0 * c_xy
        numerator = c_x * c_y * c_xy * (n + m - 1)
        return cls(n, m, (c_x + c_xy) / math.sqrt(d), (c_y + c_xy) / math.sqrt(d), numerator / d)

    def observed_weights(self) -> torch.Tensor:
        weights = torch.full((1, self.n + self.m), self.a, dtype=DTYPE)
        weights[:, self.n :] = -self.b
        return weights

    def random_weights(self, count: int, generator: torch.Generator) -> torch.Tensor:
        keys = torch.rand(count, self.n + self.m, generator=generator, dtype=DTYPE)
        window_side = keys.topk(self.m, dim=1, sorted=False).indices
        weights = torch.full((count, self.n + self.m), self.a, dtype=DTYPE)
        return weights.scatter_(1, window_side, -self.b)


def combined_mmd_statistics(
    detector: FrozenNativeMMD, window: np.ndarray, sides: torch.Tensor
) -> torch.Tensor:
    """The former combined detector's MMD² of every split (rows of ``sides``), cached path."""
    y = torch.as_tensor(np.asarray(window, dtype=np.float64))
    n, m = detector.x.shape[0], y.shape[0]
    split = SplitWeights.for_sizes(n=n, m=m)
    weights = torch.full((sides.shape[0], n + m), split.a, dtype=DTYPE)
    weights.scatter_(1, sides, -split.b)
    k_xy = rbf(detector.x, y, gamma=detector.gamma)
    k_yy = rbf(y, y, gamma=detector.gamma).fill_diagonal_(0.0)
    total = detector.k_xx.sum() + 2 * k_xy.sum() + k_yy.sum()
    return quadratic_forms((detector.k_xx, k_xy, k_yy), weights) + split.offset * total


def quadratic_forms(
    blocks: tuple[torch.Tensor, torch.Tensor, torch.Tensor], weights: torch.Tensor
) -> torch.Tensor:
    k_xx, k_xy, k_yy = blocks
    n = k_xx.shape[0]
    w_x, w_y = weights[:, :n], weights[:, n:]
    xx = ((w_x @ k_xx) * w_x).sum(dim=1)
    xy = ((w_x @ k_xy) * w_y).sum(dim=1)
    yy = ((w_y @ k_yy) * w_y).sum(dim=1)
    return xx + 2.0 * xy + yy


def blockwise_forms(
    pooled: torch.Tensor, weights: torch.Tensor, *, gamma: float, block_bytes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    n_total = pooled.shape[0]
    rows = max(1, block_bytes // (8 * n_total))
    forms = torch.zeros(weights.shape[0], dtype=DTYPE)
    total = torch.zeros((), dtype=DTYPE)
    for start in range(0, n_total, rows):
        stop = min(start + rows, n_total)
        block = rbf(pooled[start:stop], pooled, gamma=gamma)
        local = torch.arange(stop - start)
        block[local, local + start] = 0.0
        total += block.sum()
        forms += ((weights[:, start:stop] @ block) * weights).sum(dim=1)
    return forms, total


def squared_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    dist = torch.addmm(y2.transpose(-2, -1), x, y.transpose(-2, -1), alpha=-2).add_(x2)
    return dist.clamp_min_(1e-30)


def rbf(x: torch.Tensor, y: torch.Tensor, *, gamma: float) -> torch.Tensor:
    return torch.exp_(squared_distances(x, y).mul_(-gamma))


def median_sigma(dist_xx: torch.Tensor) -> float:
    n = dist_xx.shape[0]
    upper = torch.ones(n, n, dtype=torch.bool).triu_(diagonal=1)
    return math.sqrt(0.5 * float(dist_xx[upper].median()))


def sampled_sigma(x: torch.Tensor) -> float:
    if x.shape[0] <= MEDIAN_ROWS:
        sample = x
    else:
        rows = np.random.default_rng(0).choice(x.shape[0], MEDIAN_ROWS, replace=False)
        sample = x[torch.as_tensor(np.sort(rows))]
    return median_sigma(squared_distances(sample, sample))
