"""The monitored model replica: the ``@monitored`` decorator, per-replica runtime, shipping.

Per request: a span, the embedding captured in the model's own forward pass, and an event
offered to a bounded buffer that a background task ships to the drift monitor in batches.
Nothing here waits for the monitor or raises into the request.
"""

from serve_drift.replica.batched import answer_batch
from serve_drift.replica.decorator import monitored, replica_monitor
from serve_drift.replica.runtime import ReplicaHealth, ReplicaMonitor

__all__ = ["ReplicaHealth", "ReplicaMonitor", "answer_batch", "monitored", "replica_monitor"]
