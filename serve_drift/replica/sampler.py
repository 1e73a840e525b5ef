"""How many embeddings a replica ships: everything under a rate cap, a weighted uniform sample
above it, so the monitor's cost stays bounded whatever the traffic.

The decision is made per drain of the shipping buffer, off the request path. A token bucket
holds the rows the replica may still ship (``rate`` per second, at most ``burst_s`` seconds'
worth). A drain of ``n`` rows that finds ``k < n`` tokens keeps a simple random sample of ``k``
of its rows, so each row had exactly the inclusion probability ``k / n`` and carries the weight
``n / k`` (Horvitz-Thompson: summing weights re-estimates the rows served). Rows a drain must
ship whatever the budget (verified sentinel runs, which the operator bounds) are kept with
weight 1 and use no tokens. Every row that is not kept is counted by the caller.

The rate is the smaller of the replica's own cap (``ShippingConfig.max_rows_per_s``) and the
share of the monitor's budget the monitor last advised (``IngestReceipt.max_rows_per_s``):
that share is the monitor's budget divided by the replicas it hears from, so one monitor serves
any number of replicas.

>>> sampler = RowSampler(max_rows_per_s=10.0, burst_s=1.0, seed=0)
>>> choice = sampler.choose(always=np.zeros(40, dtype=bool), now=0.0)
>>> len(choice.kept), round(float(choice.weights[0]), 2), choice.unsampled
(10, 4.0, 30)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SampleChoice:
    """The rows of one drain to ship (indices, ascending) and each one's weight (1/P(kept))."""

    kept: np.ndarray
    weights: np.ndarray
    unsampled: int


class RowSampler:
    """A token bucket that turns each drain into a weighted uniform sample; not thread-safe
    (the shipper's drain task is its only user)."""

    def __init__(
        self, *, max_rows_per_s: float | None, burst_s: float, seed: int | None = None
    ) -> None:
        self._cap = max_rows_per_s
        self._share: float | None = None
        self._burst_s = burst_s
        self._tokens: float | None = None  # a full bucket at the first drain
        self._last: float | None = None
        self._rng = np.random.default_rng(seed)

    @property
    def rate(self) -> float | None:
        """Rows per second this replica may ship now; ``None``: no cap."""
        limits = [r for r in (self._cap, self._share) if r is not None]
        return min(limits) if limits else None

    def advise(self, rows_per_s: float | None) -> None:
        """The monitor's share for this replica (from its latest receipt); ``None``: none."""
        if rows_per_s is None or (math.isfinite(rows_per_s) and rows_per_s > 0):
            self._share = rows_per_s

    def choose(self, *, always: np.ndarray, now: float) -> SampleChoice:
        """Which of a drain's rows to ship; ``always`` marks the rows kept whatever the budget."""
        n = len(always)
        optional = np.flatnonzero(~always)
        k = self._take(len(optional), now=now)
        if k >= len(optional):
            return SampleChoice(np.arange(n), np.ones(n), 0)
        picked = self._rng.choice(optional, size=k, replace=False) if k else optional[:0]
        kept = np.sort(np.concatenate([np.flatnonzero(always), picked]))
        weights = np.where(always[kept], 1.0, len(optional) / max(k, 1))
        return SampleChoice(kept, weights, len(optional) - k)

    def _take(self, wanted: int, *, now: float) -> int:
        """Tokens for up to ``wanted`` rows (all of them when there is no cap)."""
        rate = self.rate
        if rate is None:
            return wanted
        capacity = max(rate * self._burst_s, 1.0)
        elapsed = 0.0 if self._last is None else max(0.0, now - self._last)
        start = capacity if self._tokens is None else self._tokens
        self._tokens = min(capacity, start + rate * elapsed)
        self._last = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted
