"""Event schema v2: what was served, what was tested, what was labelled, what accuracy followed.

Four record types, each a frozen dataclass with ``to_dict``/``from_dict`` and a ``record_type``
tag, described by the JSON Schema file ``event-v2.schema.json`` next to this module (Draft
2020-12; :data:`SCHEMA_PATH`; ``event-v1.schema.json`` describes version 1):

- :class:`InferenceRecord`: one served request (inputs summarised, outputs, lineage, context);
- :class:`DriftTestRecord`: one drift test of one window (from a :class:`~serve_drift.DriftResult`);
- :class:`LabelRecord`: ground truth that arrived later for one correlation ID;
- :class:`ConceptMetricsRecord`: accuracy, precision/recall/F1 and calibration of a window (or a
  sentinel run), computed from labels.

Versioning: ``schema_version`` is 2. Any change to a record's fields (even an added optional
field) makes a new schema file and version, so a v1 document always validates against v1.
Readers (``from_dict``) ignore unknown keys, so old code can still read newer records, and
read every version listed in :data:`READABLE_VERSIONS`; a record read from a v1 document keeps
``schema_version=1`` and writes itself back as v1.

Version 2 (issue 10) adds to :class:`DriftTestRecord` ``uncalibrated_p_value`` (``p_value``
is calibrated for the deployed reference) and ``estimated_accuracy`` (the window's label-free
estimate), and to :class:`ConceptMetricsRecord` ``estimated_accuracy``, to compare with the
accuracy from labels.

>>> record = InferenceRecord(
...     timestamp=1.5, correlation_id="req-1", internal_id="a1", model_name="digits",
...     model_version="v1", outputs=Outputs(predicted_class=3, confidence=0.9))
>>> record_from_json(record.to_json()) == record
True
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Literal

from serve_drift.messages import InputStats
from serve_drift.request_context import (
    MAX_CONTEXT_KEY_CHARS,
    MAX_CONTEXT_KEYS,
    MAX_CONTEXT_VALUE_CHARS,
    clean_context,
)

__all__ = [  # InputStats and clean_context are re-exported: records are built with them
    "DRIFT_RECORD_FIELDS",
    "FLAG_QUARANTINED",
    "READABLE_VERSIONS",
    "SCHEMA_PATH",
    "SCHEMA_VERSION",
    "ClassMetrics",
    "ConceptDriftMetrics",
    "ConceptMetricsRecord",
    "DriftTestRecord",
    "EventRecord",
    "InferenceRecord",
    "InputStats",
    "LabelRecord",
    "Outputs",
    "clean_context",
    "load_json_schema",
    "record_from_dict",
    "record_from_json",
]

SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)
SCHEMA_PATH = Path(__file__).with_name("event-v2.schema.json")


# A validation flag that marks an input the ingress kept out of normal handling; such events are
# always stored, whatever the sampling rate.
FLAG_QUARANTINED = "quarantined"

RecordType = Literal["inference", "drift_test", "label", "concept_metrics"]

_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")


# --- caller-supplied context (cleaned by request_context.clean_context) -----------------------


def _check_context(context: Mapping[str, str]) -> None:
    if len(context) > MAX_CONTEXT_KEYS:
        raise ValueError(
            f"context has {len(context)} keys; at most {MAX_CONTEXT_KEYS} (use clean_context)"
        )
    for key, value in context.items():
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("context keys and values must be strings (use clean_context)")
        if not key or len(key) > MAX_CONTEXT_KEY_CHARS or len(value) > MAX_CONTEXT_VALUE_CHARS:
            raise ValueError(
                f"context entry {key[:80]!r} exceeds the size limits (use clean_context)"
            )


# --- model outputs ----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Outputs:
    """What the model answered: top-1 class and confidence, and the top-k ``(class, prob)``."""

    predicted_class: int | None
    confidence: float | None
    top_k: tuple[tuple[int, float], ...] = ()
    predicted_label: str | None = None

    def __post_init__(self) -> None:
        _check_probability("confidence", self.confidence)
        for _, prob in self.top_k:
            _check_probability("top_k probability", prob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "predicted_class": self.predicted_class,
            "predicted_label": self.predicted_label,
            "confidence": self.confidence,
            "top_k": [{"class_index": c, "probability": p} for c, p in self.top_k],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outputs:
        return cls(
            predicted_class=_opt_int(data.get("predicted_class")),
            predicted_label=data.get("predicted_label"),
            confidence=_opt_float(data.get("confidence")),
            top_k=tuple(
                (int(item["class_index"]), float(item["probability"]))
                for item in data.get("top_k", ())
            ),
        )


def _check_probability(name: str, value: float | None) -> None:
    if value is not None and not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must be in [0, 1], got {value!r}")


def _check_finite(name: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")


def _check_hex(name: str, value: str | None, pattern: re.Pattern[str]) -> None:
    if value is not None and not pattern.fullmatch(value):
        raise ValueError(f"{name} must be lowercase hex ({pattern.pattern}) or None, got {value!r}")


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class InferenceRecord:
    """One served request, as stored and exported.

    ``drift_window`` is the index of the monitor window (drift test) that included the event,
    ``None`` when it was in none. ``sampling_weight`` is 1/P(stored): sum it over stored
    records to re-estimate how many requests there were. ``keep_reason`` says why it was
    stored (``quarantined``, ``flagged``, ``low_confidence``, ``drift_window``, ``sampled``).
    A record is *flagged* when it carries any validation flag.
    """

    record_type: ClassVar[RecordType] = "inference"

    timestamp: float
    correlation_id: str
    internal_id: str
    model_name: str
    model_version: str
    outputs: Outputs
    data_version: str | None = None
    reference_version: str | None = None
    deployment: str | None = None
    replica_id: str | None = None
    context: Mapping[str, str] = field(default_factory=dict)
    input_stats: InputStats | None = None
    latency_s: float | None = None
    validation_flags: tuple[str, ...] = ()
    sampling_weight: float = 1.0
    keep_reason: str | None = None
    drift_window: int | None = None
    trace_id: str | None = None
    span_id: str | None = None
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.internal_id or not self.correlation_id:
            raise ValueError("internal_id and correlation_id must be non-empty")
        _check_context(self.context)
        _check_finite("timestamp", self.timestamp)
        _check_finite("latency_s", self.latency_s)
        if not (math.isfinite(self.sampling_weight) and self.sampling_weight >= 1.0):
            raise ValueError(f"sampling_weight is 1/P(kept) >= 1, got {self.sampling_weight!r}")
        _check_hex("trace_id", self.trace_id, _HEX32)
        _check_hex("span_id", self.span_id, _HEX16)

    @property
    def flagged(self) -> bool:
        return bool(self.validation_flags)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_type": self.record_type,
            "schema_version": self.schema_version,
            "timestamp": self.timestamp,
            "correlation_id": self.correlation_id,
            "internal_id": self.internal_id,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "data_version": self.data_version,
            "reference_version": self.reference_version,
            "deployment": self.deployment,
            "replica_id": self.replica_id,
            "context": dict(self.context),
            "input_stats": None if self.input_stats is None else self.input_stats.to_dict(),
            "outputs": self.outputs.to_dict(),
            "latency_s": self.latency_s,
            "validation_flags": list(self.validation_flags),
            "sampling_weight": self.sampling_weight,
            "keep_reason": self.keep_reason,
            "drift_window": self.drift_window,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> InferenceRecord:
        stats = data.get("input_stats")
        return cls(
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
            timestamp=float(data["timestamp"]),
            correlation_id=str(data["correlation_id"]),
            internal_id=str(data["internal_id"]),
            model_name=str(data["model_name"]),
            model_version=str(data["model_version"]),
            data_version=_opt_str(data.get("data_version")),
            reference_version=_opt_str(data.get("reference_version")),
            deployment=_opt_str(data.get("deployment")),
            replica_id=_opt_str(data.get("replica_id")),
            context=dict(data.get("context") or {}),
            input_stats=None if stats is None else InputStats.from_dict(stats),
            outputs=Outputs.from_dict(data["outputs"]),
            latency_s=_opt_float(data.get("latency_s")),
            validation_flags=tuple(data.get("validation_flags") or ()),
            sampling_weight=float(data.get("sampling_weight", 1.0)),
            keep_reason=_opt_str(data.get("keep_reason")),
            drift_window=_opt_int(data.get("drift_window")),
            trace_id=_opt_str(data.get("trace_id")),
            span_id=_opt_str(data.get("span_id")),
        )

    def to_json(self) -> str:
        return _dumps(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class DriftTestRecord:
    """One drift test of one window by one detector: the stored form of a ``DriftResult``.

    Its fields are a versioned subset of :class:`~serve_drift.messages.DriftResult`'s (a test
    checks that each one exists there), so that the result can grow without a schema change.

    Non-finite p-values or distances are stored as ``None`` (JSON has no NaN).
    """

    record_type: ClassVar[RecordType] = "drift_test"

    test_id: str
    detector: str
    backend: str
    is_drift: bool
    p_value: float | None
    p_value_threshold: float
    distance: float | None
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
    trace_id: str | None = None
    span_id: str | None = None
    # --- v2 (issue 10): calibrated p-values and the label-free accuracy estimate ----------
    uncalibrated_p_value: float | None = None
    estimated_accuracy: float | None = None
    # --- end v2 (issue 10) ----------------------------------------------------------------
    # --- v2 (issue 11): the reference's model version, and whether the window's differed ---
    reference_model_version: str | None = None
    version_mismatch: bool = False
    correlation_ids_sample: tuple[str, ...] = ()
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        _check_hex("trace_id", self.trace_id, _HEX32)
        _check_hex("span_id", self.span_id, _HEX16)

    @classmethod
    def from_result(cls, result: Any) -> DriftTestRecord:
        """From a ``DriftResult`` or its ``to_dict()``; unknown keys are ignored.

        >>> DriftTestRecord.from_result(_example_drift_dict()).window_index
        4
        """
        data: Mapping[str, Any] = result if isinstance(result, Mapping) else result.to_dict()
        return cls.from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "record_type": self.record_type,
            "schema_version": self.schema_version,
            **{name: getattr(self, name) for name in DRIFT_RECORD_FIELDS},
            "correlation_ids_sample": list(self.correlation_ids_sample),
        }
        return _as_version(data, self.schema_version, _DRIFT_V2_FIELDS + _DRIFT_VERSION_FIELDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DriftTestRecord:
        values = {name: data[name] for name in DRIFT_RECORD_FIELDS if name in data}
        for name in ("p_value", "distance", "distance_threshold", *_DRIFT_V2_FIELDS):
            values[name] = _finite_or_none(values.get(name))
        for name in ("trace_id", "span_id"):
            values[name] = values.get(name) or None  # "" means "no span" in DriftResult
        return cls(
            **values,
            correlation_ids_sample=tuple(data.get("correlation_ids_sample") or ()),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )

    def to_json(self) -> str:
        return _dumps(self.to_dict())


# The scalar fields of a drift record, in order; the sample of IDs is a list and handled apart.
DRIFT_RECORD_FIELDS = tuple(
    f.name
    for f in fields(DriftTestRecord)
    if f.name not in ("correlation_ids_sample", "schema_version")
)
# --- v2 (issue 10) ----------------------------------------------------------------------------
_DRIFT_V2_FIELDS = ("uncalibrated_p_value", "estimated_accuracy")
# Also v2 (issue 11), read as absent from earlier v2 documents; not numbers, so kept apart.
_DRIFT_VERSION_FIELDS = ("reference_model_version", "version_mismatch")
_METRICS_V2_FIELDS = ("estimated_accuracy",)


def _as_version(data: dict[str, Any], version: int, v2_fields: tuple[str, ...]) -> dict[str, Any]:
    """A record read from a v1 document writes itself back as v1: without the v2 fields."""
    if version >= 2:
        return data
    return {key: value for key, value in data.items() if key not in v2_fields}


# --- end v2 (issue 10) ------------------------------------------------------------------------


def _finite_or_none(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _example_drift_dict() -> dict[str, Any]:
    """A plausible ``DriftResult.to_dict()``, for examples and tests."""
    return {
        "test_id": "t-1",
        "detector": "mmd",
        "backend": "native",
        "is_drift": True,
        "p_value": 0.0099,
        "p_value_threshold": 0.05,
        "distance": 0.12,
        "distance_threshold": None,
        "window_index": 4,
        "window_size": 200,
        "reference_size": 400,
        "model_name": "digits",
        "model_version": "v1",
        "reference_version": "ref-1",
        "first_event_at": 10.0,
        "last_event_at": 20.0,
        "tested_at": 21.0,
        "duration_s": 0.5,
        "trace_id": "",
        "span_id": "",
        "correlation_ids_sample": ["req-1"],
    }


@dataclass(frozen=True, kw_only=True)
class LabelRecord:
    """Ground truth for the request with ``correlation_id``, received after it was served.

    ``source`` says where it came from: ``feedback`` (the label endpoint), ``sentinel``, or a
    caller's own word such as ``annotation``.
    """

    record_type: ClassVar[RecordType] = "label"

    correlation_id: str
    label: int
    received_at: float
    source: str = "feedback"
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.correlation_id:
            raise ValueError("correlation_id must be non-empty")
        _check_finite("received_at", self.received_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "record_type": self.record_type,
            "schema_version": self.schema_version,
            "correlation_id": self.correlation_id,
            "label": self.label,
            "received_at": self.received_at,
            "source": self.source,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelRecord:
        return cls(
            correlation_id=str(data["correlation_id"]),
            label=int(data["label"]),
            received_at=float(data["received_at"]),
            source=str(data.get("source", "feedback")),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )

    def to_json(self) -> str:
        return _dumps(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class ClassMetrics:
    """Precision, recall and F1 of one class; ``support`` counts labelled events of the class."""

    class_index: int
    precision: float
    recall: float
    f1: float
    support: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "class_index": self.class_index,
            "precision": self.precision,
            "recall": self.recall,
            "f1": self.f1,
            "support": self.support,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ClassMetrics:
        return cls(
            class_index=int(data["class_index"]),
            precision=float(data["precision"]),
            recall=float(data["recall"]),
            f1=float(data["f1"]),
            support=int(data["support"]),
        )


@dataclass(frozen=True, kw_only=True)
class ConceptDriftMetrics:
    """Quality of predictions against labels (:func:`serve_drift.eventlog.labels.compute_metrics`).

    Weighted by sampling weight, so they estimate the metric over all served requests that
    were labelled, not only over the stored sample. ``ece`` is ``None`` when no labelled event
    carried a confidence.
    """

    n_labelled: int
    weighted_n: float
    accuracy: float
    precision_macro: float
    recall_macro: float
    f1_macro: float
    per_class: tuple[ClassMetrics, ...]
    ece: float | None
    ece_bins: int
    n_with_confidence: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_labelled": self.n_labelled,
            "weighted_n": self.weighted_n,
            "accuracy": self.accuracy,
            "precision_macro": self.precision_macro,
            "recall_macro": self.recall_macro,
            "f1_macro": self.f1_macro,
            "per_class": [c.to_dict() for c in self.per_class],
            "ece": self.ece,
            "ece_bins": self.ece_bins,
            "n_with_confidence": self.n_with_confidence,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptDriftMetrics:
        return cls(
            n_labelled=int(data["n_labelled"]),
            weighted_n=float(data["weighted_n"]),
            accuracy=float(data["accuracy"]),
            precision_macro=float(data["precision_macro"]),
            recall_macro=float(data["recall_macro"]),
            f1_macro=float(data["f1_macro"]),
            per_class=tuple(ClassMetrics.from_dict(c) for c in data["per_class"]),
            ece=_opt_float(data.get("ece")),
            ece_bins=int(data["ece_bins"]),
            n_with_confidence=int(data["n_with_confidence"]),
        )


@dataclass(frozen=True, kw_only=True)
class ConceptMetricsRecord:
    """Metrics of one window's labelled events (``tag="feedback"``) or of a sentinel run.

    Stored beside drift tests, so data drift (inputs moved) and concept drift (accuracy moved)
    can be read side by side per ``window_index``. Sentinel runs have no window.
    """

    record_type: ClassVar[RecordType] = "concept_metrics"

    metrics_id: str
    computed_at: float
    tag: str
    model_name: str
    model_version: str
    metrics: ConceptDriftMetrics
    window_index: int | None = None
    first_event_at: float | None = None
    last_event_at: float | None = None
    # --- v2 (issue 10): the window's label-free estimate, beside the accuracy from labels ---
    estimated_accuracy: float | None = None
    # --- end v2 (issue 10) ----------------------------------------------------------------
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = {
            "record_type": self.record_type,
            "schema_version": self.schema_version,
            "metrics_id": self.metrics_id,
            "computed_at": self.computed_at,
            "tag": self.tag,
            "model_name": self.model_name,
            "model_version": self.model_version,
            "window_index": self.window_index,
            "first_event_at": self.first_event_at,
            "last_event_at": self.last_event_at,
            "metrics": self.metrics.to_dict(),
            "estimated_accuracy": self.estimated_accuracy,
        }
        return _as_version(data, self.schema_version, _METRICS_V2_FIELDS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConceptMetricsRecord:
        return cls(
            metrics_id=str(data["metrics_id"]),
            computed_at=float(data["computed_at"]),
            tag=str(data["tag"]),
            model_name=str(data["model_name"]),
            model_version=str(data["model_version"]),
            window_index=_opt_int(data.get("window_index")),
            first_event_at=_opt_float(data.get("first_event_at")),
            last_event_at=_opt_float(data.get("last_event_at")),
            metrics=ConceptDriftMetrics.from_dict(data["metrics"]),
            estimated_accuracy=_finite_or_none(data.get("estimated_accuracy")),
            schema_version=int(data.get("schema_version", SCHEMA_VERSION)),
        )

    def to_json(self) -> str:
        return _dumps(self.to_dict())


EventRecord = InferenceRecord | DriftTestRecord | LabelRecord | ConceptMetricsRecord

_RECORD_CLASSES: dict[str, Any] = {
    "inference": InferenceRecord,
    "drift_test": DriftTestRecord,
    "label": LabelRecord,
    "concept_metrics": ConceptMetricsRecord,
}


def record_from_dict(data: Mapping[str, Any]) -> EventRecord:
    """Any record of a readable version (v1 or v2) from its dict, chosen by ``record_type``."""
    kind = data.get("record_type")
    if kind not in _RECORD_CLASSES:
        raise ValueError(f"unknown record_type {kind!r}; valid: {', '.join(_RECORD_CLASSES)}")
    version = data.get("schema_version", SCHEMA_VERSION)
    if version not in READABLE_VERSIONS:
        raise ValueError(
            f"schema_version {version!r} is not supported; this reader knows "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    record: EventRecord = _RECORD_CLASSES[kind].from_dict(data)
    return record


def record_from_json(text: str) -> EventRecord:
    return record_from_dict(json.loads(text))


def load_json_schema(version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """The JSON Schema (Draft 2020-12) of ``version`` (default: the current one) as a dict."""
    if version not in READABLE_VERSIONS:
        raise ValueError(f"no schema file for version {version!r}")
    path = SCHEMA_PATH.with_name(f"event-v{version}.schema.json")
    schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return schema


def _dumps(data: Mapping[str, Any]) -> str:
    # Compact, and strict: NaN/Infinity are not JSON, so a record carrying one must fail here
    # rather than write a document other tools cannot read.
    return json.dumps(data, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
