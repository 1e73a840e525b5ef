"""What the monitor keeps of the batches it received: rows within their bounds, no messages.

A batch Ray delivers is a set of views into the message it came in, so a structure that keeps
a view of one row keeps that whole message (events included) alive. The monitor's memory stays
flat only if nothing but the open windows holds on to received messages.
"""

from __future__ import annotations

import gc
import math
import weakref
from pathlib import Path

import numpy as np

from serve_drift import DriftConfig
from serve_drift.messages import EventBatch
from serve_drift.monitor.state import MonitorState
from serve_drift.monitor.traffic_sample import TrafficSample
from tests.support.batches import Message, delivered_like_ray, event_batch
from tests.support.references import normal_reference
from tests.support.telemetry_memory import memory_telemetry

DIM, CLASSES, ROWS = 8, 4, 10


def _delivered(index: int) -> tuple[EventBatch, weakref.ref[Message]]:
    rng = np.random.default_rng(index)
    probabilities = rng.dirichlet(np.ones(CLASSES), size=ROWS).astype(np.float32)
    batch = event_batch(
        rng.normal(size=(ROWS, DIM)), start=index * ROWS, probabilities=probabilities
    )
    return delivered_like_ray(batch)


def _alive(messages: list[weakref.ref[Message]]) -> int:
    gc.collect()
    return sum(1 for message in messages if message() is not None)


def _root_bytes(arrays: list[np.ndarray]) -> int:
    """Bytes of the distinct buffers these arrays keep alive (a view keeps its base's)."""
    roots: dict[int, int] = {}
    for array in arrays:
        root: object = array
        while isinstance(root, np.ndarray) and root.base is not None:
            root = root.base
        if isinstance(root, memoryview):
            root = root.obj
        roots[id(root)] = memoryview(root).nbytes  # type: ignore[arg-type]
    return sum(roots.values())


def test_traffic_sample_keeps_its_rows_not_the_messages_they_came_in() -> None:
    capacity = 50
    sample = TrafficSample(capacity=capacity, seed=0)
    messages = []
    for index in range(200):  # 2000 rows offered, 40 x capacity
        batch, message = _delivered(index)
        sample.add(batch, keep=np.ones(ROWS, dtype=bool))
        messages.append(message)
        del batch
    reservoir = sample._reservoirs["1"]
    kept = [*reservoir.embeddings, *(p for p in reservoir.probabilities if p is not None)]
    row_bytes = (DIM + CLASSES) * 4
    assert len(reservoir.embeddings) == capacity and reservoir.seen == 2000
    assert _root_bytes(kept) <= capacity * row_bytes  # the documented bound, nothing more
    assert _alive(messages) == 0


def _state(tmp_path: Path) -> MonitorState:
    config = {
        "model_name": "m",
        "reference_path": normal_reference(tmp_path / "ref.npz", dim=DIM),
        "window": {"size": 40},
        "detectors": [{"backend": "native", "n_permutations": 20}],
        "calibration": {"enabled": False},
        "events": {"enabled": False},
        "traffic_sample_size": 2000,  # more than every row sent: a view would keep them all
    }
    return MonitorState(DriftConfig.model_validate(config))


def test_monitor_keeps_only_the_messages_of_its_open_window_after_many_windows(
    tmp_path: Path,
) -> None:
    memory_telemetry()
    state = _state(tmp_path)
    messages, windows = [], 0
    for index in range(150):  # 1500 rows: 37 windows of 40, 20 rows left open
        batch, message = _delivered(index)
        for job in state.accept(batch):
            windows += len(state.process(job))
        messages.append(message)
        del batch
    assert windows == 37 and state.traffic.snapshot().seen == 1500
    # The open window's rows are views into the messages they came in, at most one per row
    # (here the last few batches); every other message is gone.
    open_rows = state.windows.pending_rows()
    assert _alive(messages) <= math.ceil(open_rows / ROWS) + 1
