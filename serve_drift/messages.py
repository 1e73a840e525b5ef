"""The messages that cross a process boundary: replica to monitor, monitor to its callers.

- :class:`InferenceEvent` and :class:`EventBatch`: what a replica ships per served request;
- :class:`InputStats`: the handler's summary of one input image, carried on the event;
- :class:`IngestReceipt`: the monitor's answer to a batch;
- :class:`DriftStatistic` and :class:`DriftResult`: what a drift test found.

Plain frozen dataclasses with no behaviour beyond validation, so every stage can import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True, kw_only=True)
class InputStats:
    """Cheap summary of one input image; intensities are on a 0..1 scale.

    ``brightness`` is the mean BT.601 luma, ``contrast`` its standard deviation (RMS contrast),
    ``sharpness`` the variance of the 4-neighbour Laplacian of luma (low means blurry; 0.0 for
    an image under 3x3, which has no interior pixel), and ``channel_means`` the mean of each
    channel as given (1 for grey, 3 for RGB, 4 for RGBA).
    """

    width: int
    height: int
    channels: int
    brightness: float
    contrast: float
    sharpness: float
    channel_means: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "height": self.height,
            "channels": self.channels,
            "brightness": self.brightness,
            "contrast": self.contrast,
            "sharpness": self.sharpness,
            "channel_means": list(self.channel_means),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InputStats:
        return cls(
            width=int(data["width"]),
            height=int(data["height"]),
            channels=int(data["channels"]),
            brightness=float(data["brightness"]),
            contrast=float(data["contrast"]),
            sharpness=float(data["sharpness"]),
            channel_means=tuple(float(v) for v in data["channel_means"]),
        )


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
    # Set by ingress plausibility checks (``serve_drift.request_context.mark_request``): the
    # names of the checks that fired, and whether the monitor must keep this row out of windows.
    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False
    # For the event log: handler latency, top-k (class, probability), caller context from
    # ``X-Serve-Drift-Context-*`` headers, and input statistics the handler computed.
    latency_s: float | None = None
    top_k: tuple[tuple[int, float], ...] = ()
    context: Mapping[str, str] = field(default_factory=dict)
    input_stats: InputStats | None = None
    replica_id: str = ""
    # 1 / P(the replica shipped this row): above its rate cap a replica ships a uniform sample
    # (see serve_drift.replica.sampler), and each shipped row stands for this many served.
    sampling_weight: float = 1.0


@dataclass(frozen=True)
class EventBatch:
    """Row ``i`` of ``embeddings`` belongs to ``events[i]``."""

    embeddings: np.ndarray
    events: tuple[InferenceEvent, ...]
    replica_id: str
    # Softmax outputs (rows, classes) when the classifier was captured: for tests on outputs.
    probabilities: np.ndarray | None = None
    # Rows the replica's sampler left out since its previous batch: served and counted, not
    # shipped (the shipped rows' ``sampling_weight`` stands for them).
    unsampled: int = 0

    def __post_init__(self) -> None:
        if self.embeddings.ndim != 2 or len(self.embeddings) != len(self.events):
            raise ValueError(
                f"batch has {len(self.events)} events "
                f"but embeddings of shape {self.embeddings.shape}"
            )


@dataclass(frozen=True)
class IngestReceipt:
    """The monitor's answer to a replica's batch.

    ``recorded`` is True once every request of the batch has its compact row committed to the
    event store (so a restart cannot lose it and a label for it joins at once), False when the
    store could not record it in time (the rows still reached the drift windows), and None
    when the monitor keeps no event log. ``max_rows_per_s`` is the replica's share of the
    monitor's ingest budget (``ShippingConfig.monitor_max_rows_per_s`` over the replicas it
    hears from), ``None`` without a budget.
    """

    accepted: int
    recorded: bool | None
    max_rows_per_s: float | None = None
    # The reference version the monitor tests with now, so replicas that tag their spans
    # with it follow a swap; None from a monitor that does not say.
    reference_version: str | None = None


@dataclass(frozen=True)
class ComponentStatistic:
    """One test inside a combined detector: its own (uncorrected) p-value and statistic."""

    name: str
    p_value: float
    statistic: float


@dataclass(frozen=True)
class DriftStatistic:
    """What one detector computed for one window against the reference set.

    A calibrated detector's ``p_value`` holds its level for the deployed reference and
    ``uncalibrated_p_value`` is the detector's own. A combined detector's ``p_value`` is
    corrected for testing several components;
    ``components`` holds each one's marginal p-value, to explain an alarm, and ``skipped``
    names components that could not run on this window (e.g. ``confidence`` without softmax
    probabilities). Single-test detectors leave both empty.
    """

    p_value: float
    distance: float
    distance_threshold: float | None = None
    components: tuple[ComponentStatistic, ...] = ()
    skipped: tuple[str, ...] = ()
    # Set when ``p_value`` was calibrated for the deployed reference
    # (``serve_drift.detectors.calibration``): the detector's own permutation p-value.
    uncalibrated_p_value: float | None = None


@dataclass(frozen=True)
class DriftResult:
    """One drift test of one window by one detector.

    ``test_id`` and ``trace_id``/``span_id`` tie the result to its drift-test span, whose links
    point at the request spans of (a sample of) the requests in the window. ``is_drift`` is
    ``p_value < p_value_threshold`` with the calibrated ``p_value``.
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
    # Rows tested / served requests they stand for (1.0 unless replicas sampled their rows).
    sampling_rate: float = 1.0
    # A combined detector's own components, to explain an alarm: (name, uncorrected p-value).
    # Only ``p_value`` (corrected) is compared with the threshold.
    component_p_values: tuple[tuple[str, float], ...] = ()
    skipped_components: tuple[str, ...] = ()
    # ``p_value`` is calibrated for the deployed reference and window size (the level holds
    # for this reference, not only on average); this is the detector's own p-value, or None
    # when the detector ran uncalibrated (then ``p_value`` is that one).
    uncalibrated_p_value: float | None = None
    # A label-free estimate of the model's accuracy on this window (the same on every result
    # of the window), or None without softmax probabilities.
    estimated_accuracy: float | None = None
    # The model version the reference set was built with (None: not recorded), and whether it
    # differs from the window's ``model_version`` (tested anyway: on_version_mismatch=degraded).
    reference_model_version: str | None = None
    version_mismatch: bool = False

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["correlation_ids_sample"] = list(self.correlation_ids_sample)
        data["component_p_values"] = dict(self.component_p_values)
        data["skipped_components"] = list(self.skipped_components)
        return data
