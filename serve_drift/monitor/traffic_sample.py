"""A uniform sample of the served traffic the monitor accepted, for building reference sets.

The monitor keeps, per model version, a reservoir sample (Vitter's algorithm R) of the rows it
put into windows: every accepted row so far has the same chance to be in it, in bounded
memory. ``serve-drift reference from-traffic`` turns a snapshot into a reference set, e.g. to
re-baseline after a deliberate change.

The bound is ``capacity`` rows per model version, each stored as its own copy: ``capacity x
(embedding + probability row)`` bytes (2000 x (64 + 10) x 4 B = 0.6 MB for the digits app).
Copies, because a row of a batch is a view that keeps the whole batch alive, and a batch Ray
delivered is a view into the message it came in, events included: a reservoir of views kept
up to one whole message per sampled row, more of them as replacements spread the sample over
ever more batches (the monitor grew 0.22 MiB per 1 000 events in ``benchmarks/monitor_soak.py``,
still after 100 000 events; flat with copies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from serve_drift.messages import EventBatch


@dataclass(frozen=True, eq=False)
class TrafficSnapshot:
    """A copy of one model version's sample; ``seen`` rows were offered in total."""

    model_name: str
    model_version: str
    embeddings: np.ndarray
    probabilities: np.ndarray | None
    seen: int
    first_timestamp: float
    last_timestamp: float


@dataclass
class _Reservoir:
    embeddings: list[np.ndarray] = field(default_factory=list)
    probabilities: list[np.ndarray | None] = field(default_factory=list)
    seen: int = 0
    first_timestamp: float = float("inf")
    last_timestamp: float = float("-inf")


class TrafficSample:
    """At most ``capacity`` rows per model version, each accepted row equally likely.

    >>> import numpy as np
    >>> sample = TrafficSample(capacity=3)
    >>> sample.versions()
    []
    """

    def __init__(self, *, capacity: int, model_name: str = "model", seed: int = 0) -> None:
        self.capacity = capacity
        self.model_name = model_name
        self._rng = np.random.default_rng(seed)
        self._reservoirs: dict[str, _Reservoir] = {}

    def add(self, batch: EventBatch, *, keep: np.ndarray) -> None:
        """Offer the rows of ``batch`` where ``keep`` is true."""
        if self.capacity <= 0:
            return
        for row in np.flatnonzero(keep):
            event = batch.events[row]
            reservoir = self._reservoirs.setdefault(event.model_version, _Reservoir())
            probabilities = None if batch.probabilities is None else batch.probabilities[row]
            self._offer(reservoir, batch.embeddings[row], probabilities)
            reservoir.first_timestamp = min(reservoir.first_timestamp, event.timestamp)
            reservoir.last_timestamp = max(reservoir.last_timestamp, event.timestamp)

    def _offer(
        self, reservoir: _Reservoir, embedding: np.ndarray, probabilities: np.ndarray | None
    ) -> None:
        reservoir.seen += 1
        if len(reservoir.embeddings) < self.capacity:
            reservoir.embeddings.append(embedding.copy())
            reservoir.probabilities.append(_copy(probabilities))
            return
        slot = int(self._rng.integers(0, reservoir.seen))
        if slot < self.capacity:  # keeps each of the seen rows with probability capacity/seen
            reservoir.embeddings[slot] = embedding.copy()
            reservoir.probabilities[slot] = _copy(probabilities)

    def versions(self) -> list[str]:
        """Model versions with sampled rows, most rows seen first."""
        return sorted(self._reservoirs, key=lambda v: -self._reservoirs[v].seen)

    def snapshot(self, *, model_version: str | None = None) -> TrafficSnapshot:
        """The sample of ``model_version`` (default: the version with most traffic)."""
        versions = self.versions()
        if not versions:
            raise LookupError("no traffic has been sampled yet")
        version = versions[0] if model_version is None else model_version
        if version not in self._reservoirs:
            raise LookupError(f"no traffic sampled for model version {version!r}: {versions}")
        reservoir = self._reservoirs[version]
        probabilities = reservoir.probabilities
        complete = all(p is not None for p in probabilities)
        return TrafficSnapshot(
            model_name=self.model_name,
            model_version=version,
            embeddings=np.stack(reservoir.embeddings),
            probabilities=np.stack(probabilities) if complete else None,  # type: ignore[arg-type]
            seen=reservoir.seen,
            first_timestamp=reservoir.first_timestamp,
            last_timestamp=reservoir.last_timestamp,
        )


def _copy(row: np.ndarray | None) -> np.ndarray | None:
    # Its own memory: a view would keep the batch, and the message it came in, alive.
    return None if row is None else row.copy()
