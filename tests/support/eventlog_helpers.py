"""Record factories shared by the event-log tests."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from serve_drift.eventlog.schema import InferenceRecord, InputStats, Outputs

STATS = InputStats(
    width=224,
    height=224,
    channels=3,
    brightness=0.45,
    contrast=0.21,
    sharpness=0.013,
    channel_means=(0.48, 0.45, 0.40),
)


def make_record(i: int, **overrides: Any) -> InferenceRecord:
    """A realistic inference record; ``i`` makes its ids unique and its time ``1000 + i``."""
    confidence = overrides.pop("confidence", 0.9)
    predicted = overrides.pop("predicted_class", i % 10)
    fields: dict[str, Any] = {
        "timestamp": 1000.0 + i,
        "correlation_id": f"req-{i}",
        "internal_id": f"{i:032x}",
        "model_name": "digits-cnn",
        "model_version": "v1",
        "data_version": "digits-2026-01",
        "reference_version": "ref-abc",
        "deployment": "Classifier",
        "replica_id": "replica-1",
        "context": {"camera": f"cam-{i % 3}", "site": "berlin"},
        "input_stats": STATS,
        "outputs": Outputs(
            predicted_class=predicted,
            confidence=confidence,
            top_k=((predicted, confidence), ((predicted + 1) % 10, round(1 - confidence, 6))),
            predicted_label=str(predicted),
        ),
        "latency_s": 0.004,
        "trace_id": f"{i + 1:032x}",
        "span_id": f"{i + 1:016x}",
    }
    fields.update(overrides)
    return InferenceRecord(**fields)


def make_records(n: int, *, start: int = 0, **overrides: Any) -> list[InferenceRecord]:
    return [make_record(i, **overrides) for i in range(start, start + n)]


def with_window(records: list[InferenceRecord], window: int) -> list[InferenceRecord]:
    return [dataclasses.replace(r, drift_window=window) for r in records]


def rng_images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(224, 224, 3), dtype=np.uint8)
