"""Replica-to-monitor batches for tests: event ``i`` is ``c-<start+i>`` with valid trace IDs."""

from __future__ import annotations

import pickle
import weakref
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


class Message(bytearray):
    """One received message's bytes (a subclass, so that a weak reference can follow it)."""


def delivered_like_ray(batch: EventBatch) -> tuple[EventBatch, weakref.ref[Message]]:
    """``batch`` as a Ray actor receives it, and a weak reference to the message it came in.

    Ray sends the in-band pickle data and the out-of-band buffers (the arrays) of an argument in
    one message and deserializes the arrays as views into it: whatever keeps one row of the
    batch keeps the whole message, events included, alive."""
    buffers: list[pickle.PickleBuffer] = []
    in_band = pickle.dumps(batch, protocol=5, buffer_callback=buffers.append)
    raws = [b.raw() for b in buffers]
    message = Message(in_band)
    spans = []
    for raw in raws:
        spans.append((len(message), raw.nbytes))
        message.extend(raw)
    view = memoryview(message)
    received = pickle.loads(view[: len(in_band)], buffers=[view[a : a + n] for a, n in spans])
    return received, weakref.ref(message)
