"""The monitor's ingest budget, split between the replicas that ship to it.

Each replica caps the rows it ships at its share (``IngestReceipt.max_rows_per_s``), so the
monitor's total ingest stays within ``ShippingConfig.monitor_max_rows_per_s`` however many
replicas serve: a replica that has not shipped for ``window_s`` no longer counts.

>>> shares = ReplicaShares(budget_rows_per_s=1000.0, window_s=10.0)
>>> shares.heard("a", now=0.0); shares.heard("b", now=1.0)
>>> shares.share(now=2.0), shares.share(now=10.5)
(500.0, 1000.0)
"""

from __future__ import annotations


class ReplicaShares:
    """When each replica last shipped, and the equal share of the budget each one gets."""

    def __init__(self, *, budget_rows_per_s: float | None, window_s: float) -> None:
        self._budget = budget_rows_per_s
        self._window_s = window_s
        self._last_seen: dict[str, float] = {}

    def heard(self, replica_id: str, *, now: float) -> None:
        self._last_seen[replica_id] = now

    def share(self, *, now: float) -> float | None:
        """Rows per second each replica may ship now; ``None`` without a budget."""
        if self._budget is None:
            return None
        horizon = now - self._window_s
        for replica, seen in list(self._last_seen.items()):
            if seen < horizon:  # stopped or gone: its share goes to the others
                del self._last_seen[replica]
        return self._budget / max(1, len(self._last_seen))
