"""Replica-to-monitor batches for tests: event ``i`` is ``c-<start+i>`` with valid trace IDs."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from serve_drift.messages import EventBatch, InferenceEvent


def events(
    n: int, *, start: int = 0, version: str = "1", times: Sequence[float] | None = None
) -> tuple[InferenceEvent, ...]:
    stamps = times if times is not None else [1000.0 + start + i for i in range(n)]
    return tuple(
        InferenceEvent(
            correlation_id=f"c-{start + i}",
            internal_id=f"i-{start + i}",
            timestamp=stamps[i],
            model_name="m",
            model_version=version,
            predicted_class=0,
            confidence=0.9,
            trace_id=f"{start + i + 1:032x}",
            span_id=f"{start + i + 1:016x}",
        )
        for i in range(n)
    )


def event_batch(
    embeddings: np.ndarray,
    *,
    start: int = 0,
    version: str = "1",
    times: Sequence[float] | None = None,
    probabilities: np.ndarray | None = None,
) -> EventBatch:
    return EventBatch(
        embeddings=np.asarray(embeddings, dtype=np.float32),
        events=events(len(embeddings), start=start, version=version, times=times),
        replica_id="r",
        probabilities=probabilities,
    )
