"""What a replica sends to the monitor: one record per served request, embeddings batched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from serve_drift.eventlog.schema import InputStats


@dataclass(frozen=True)
class InferenceEvent:
    """The small record that travels with each embedding, off the request path."""

    correlation_id: str
    internal_id: str
    timestamp: float
    model_name: str
    model_version: str
    predicted_class: int | None
    confidence: float | None
    trace_id: str
    span_id: str
    # Set by ingress plausibility checks (see ``serve_drift._marks.mark_request``): the names
    # of the checks that fired, and whether the monitor must keep this row out of windows.
    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False
    # For the event log: handler latency, top-k (class, probability), caller context from
    # ``X-Serve-Drift-Context-*`` headers, and input statistics the handler computed.
    latency_s: float | None = None
    top_k: tuple[tuple[int, float], ...] = ()
    context: Mapping[str, str] = field(default_factory=dict)
    input_stats: InputStats | None = None
    replica_id: str = ""


@dataclass(frozen=True)
class EventBatch:
    """Row ``i`` of ``embeddings`` belongs to ``events[i]``."""

    embeddings: np.ndarray
    events: tuple[InferenceEvent, ...]
    replica_id: str
    # Softmax outputs (rows, classes) when the classifier was captured: for tests on outputs.
    probabilities: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.events):
            raise ValueError(
                f"batch has {len(self.events)} events "
                f"but embeddings of shape {self.embeddings.shape}"
            )
