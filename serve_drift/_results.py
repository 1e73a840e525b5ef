"""Typed drift-test results shared by detectors, the monitor and the HTTP API."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class DriftStatistic:
    """What one detector computed for one window against the reference set."""

    p_value: float
    distance: float
    distance_threshold: float | None = None


@dataclass(frozen=True)
class DriftResult:
    """One drift test of one window by one detector.

    ``test_id`` and ``trace_id``/``span_id`` tie the result to its drift-test span, whose links
    point at the request spans of (a sample of) the requests in the window.
    """

    test_id: str
    detector: str
    backend: str
    is_drift: bool
    p_value: float
    p_value_threshold: float
    distance: float
    distance_threshold: float | None
    window_index: int
    window_size: int
    reference_size: int
    model_name: str
    model_version: str
    reference_version: str
    first_event_at: float
    last_event_at: float
    tested_at: float
    duration_s: float
    trace_id: str
    span_id: str
    correlation_ids_sample: tuple[str, ...] = ()
    # A combined detector's own components, to explain an alarm: (name, uncorrected p-value).
    # Only ``p_value`` (corrected) is compared with the threshold.
    component_p_values: tuple[tuple[str, float], ...] = ()
    skipped_components: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["correlation_ids_sample"] = list(self.correlation_ids_sample)
        data["component_p_values"] = dict(self.component_p_values)
        data["skipped_components"] = list(self.skipped_components)
        return data
