"""Label feedback: join late ground truth to stored events, and measure concept drift.

Labels arrive by correlation ID (the ``X-Request-ID`` the client saw), one or many at a time.
:func:`submit_labels` answers each one (``accepted``, ``unknown_correlation_id``,
``duplicate_label``, ``ambiguous`` or ``invalid``; see
:meth:`~serve_drift.eventlog.store.EventStore.attach_labels` for the exact semantics).

Metrics (:func:`compute_metrics`) are computed per window from the joined (prediction, label,
confidence) triples: accuracy; precision, recall and F1, macro-averaged and per class, over the
classes seen in labels or predictions (a class never predicted has precision 0, as sklearn's
``zero_division=0``); and the expected calibration error (ECE) with 15 equal-width confidence
bins ``(0, 1/15], (1/15, 2/15], ...`` (a confidence of exactly 0 goes to the first bin):
``ECE = sum_b (n_b / n) * |accuracy_b - mean confidence_b|`` (Guo et al., 2017).

Each event counts with its sampling weight, so a window whose ordinary events were sampled at
10 % while all low-confidence ones were kept is not judged by its hardest cases alone. The
metrics describe the labelled events: if labels arrive mostly for mistakes, they are biased
in the same way.

>>> m = compute_metrics(y_true=[0, 1, 1, 2], y_pred=[0, 1, 2, 2], confidence=[0.9, 0.8, 0.6, 0.7])
>>> (m.accuracy, round(m.f1_macro, 3), m.n_labelled)
(0.75, 0.778, 4)
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from serve_drift.eventlog.schema import (
    ClassMetrics,
    ConceptDriftMetrics,
    ConceptMetricsRecord,
    LabelRecord,
)
from serve_drift.eventlog.store import BaseEventStore, LabelAnswer, LabelStatus

__all__ = [
    "ECE_BINS",
    "MAX_LABEL",
    "MAX_LABELS_PER_REQUEST",
    "ClassMetrics",
    "ConceptDriftMetrics",
    "LabelAnswer",
    "LabelStatus",
    "compute_metrics",
    "expected_calibration_error",
    "metrics_record",
    "parse_labels",
    "record_window_metrics",
    "submit_labels",
    "window_estimate",
    "window_metrics",
]

ECE_BINS = 15
MAX_LABELS_PER_REQUEST = 10_000
MAX_LABEL = 2**31 - 1  # when the model's classes are unknown: fits any store's integer column
_MAX_ID_CHARS = 256


# --- receiving labels -------------------------------------------------------------------------


def parse_labels(
    payload: Any,
    *,
    source: str = "feedback",
    num_classes: int | None = None,
    now: float | None = None,
) -> list[LabelRecord | LabelAnswer]:
    """Label records from a request body, in order; malformed items become ``invalid`` answers.

    Accepts one ``{"correlation_id": "...", "label": 3}``, a list of them, or
    ``{"labels": [...]}``. A label must be a class index of the model: ``0 <= label <
    num_classes`` (below :data:`MAX_LABEL` when the classes are not known). Raises
    ``ValueError`` for a body that is none of these or holds more than
    :data:`MAX_LABELS_PER_REQUEST` items (answer 400/413).

    >>> items = parse_labels(
    ...     {"labels": [{"correlation_id": "a", "label": 1}, {"label": 2},
    ...                 {"correlation_id": "b", "label": 10}]}, num_classes=10)
    >>> [getattr(item, "status", "label") for item in items]
    ['label', 'invalid', 'invalid']
    """
    items = _items(payload)
    if len(items) > MAX_LABELS_PER_REQUEST:
        raise ValueError(f"{len(items)} labels in one request; at most {MAX_LABELS_PER_REQUEST}")
    received_at = time.time() if now is None else now
    classes = MAX_LABEL + 1 if num_classes is None else num_classes
    return [
        _parse_item(item, source=source, received_at=received_at, classes=classes) for item in items
    ]


def _items(payload: Any) -> list[Any]:
    if isinstance(payload, Mapping) and "labels" in payload:
        payload = payload["labels"]
    elif isinstance(payload, Mapping):
        return [payload]
    if isinstance(payload, list):
        return payload
    raise ValueError('expected {"correlation_id", "label"}, a list of them, or {"labels": [...]}')


def _parse_item(
    item: Any, *, source: str, received_at: float, classes: int
) -> LabelRecord | LabelAnswer:
    if not isinstance(item, Mapping):
        return LabelAnswer("", "invalid", "each label must be an object")
    cid = item.get("correlation_id")
    if not isinstance(cid, str) or not cid or len(cid) > _MAX_ID_CHARS:
        return LabelAnswer("", "invalid", "correlation_id must be a non-empty string")
    label = item.get("label")
    # bool is an int subclass; True as a class index is almost certainly a client bug.
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < classes:
        return LabelAnswer(cid, "invalid", f"label must be a class index from 0 to {classes - 1}")
    return LabelRecord(correlation_id=cid, label=label, received_at=received_at, source=source)


def submit_labels(
    store: BaseEventStore, items: Sequence[LabelRecord | LabelAnswer]
) -> list[LabelAnswer]:
    """Join the valid labels in one transaction; one answer per item, in the same order.

    Raises :class:`~serve_drift.eventlog.store.StoreWriteError` when the store fails (nothing
    was accepted: answer 503 and let the client retry).
    """
    valid = [item for item in items if isinstance(item, LabelRecord)]
    answers = iter(store.attach_labels(valid) if valid else [])
    return [next(answers) if isinstance(item, LabelRecord) else item for item in items]


# --- metrics ----------------------------------------------------------------------------------


def compute_metrics(
    *,
    y_true: Sequence[int] | np.ndarray,
    y_pred: Sequence[int] | np.ndarray,
    confidence: Sequence[float] | np.ndarray | None = None,
    weights: Sequence[float] | np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> ConceptDriftMetrics:
    """Accuracy, precision/recall/F1 (macro and per class) and ECE; weighted by ``weights``.

    ``confidence`` may hold NaN where unknown; ECE uses the rows that have one.
    """
    true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(y_pred, dtype=np.int64)
    if true.shape != pred.shape or true.ndim != 1 or len(true) == 0:
        raise ValueError(
            f"need two equal, non-empty 1-d label arrays; got {true.shape}, {pred.shape}"
        )
    w = _weights(weights, len(true))
    per_class = _per_class(true, pred, w)
    conf = np.full(len(true), np.nan) if confidence is None else np.asarray(confidence, float)
    has_conf = np.isfinite(conf)
    ece = (
        expected_calibration_error(
            confidence=conf[has_conf],
            correct=(true == pred)[has_conf],
            weights=w[has_conf],
            n_bins=n_bins,
        )
        if has_conf.any()
        else None
    )
    return ConceptDriftMetrics(
        n_labelled=len(true),
        weighted_n=float(w.sum()),
        accuracy=_ratio(float(w[true == pred].sum()), float(w.sum())),
        precision_macro=float(np.mean([c.precision for c in per_class])),
        recall_macro=float(np.mean([c.recall for c in per_class])),
        f1_macro=float(np.mean([c.f1 for c in per_class])),
        per_class=per_class,
        ece=ece,
        ece_bins=n_bins,
        n_with_confidence=int(has_conf.sum()),
    )


def _weights(weights: Sequence[float] | np.ndarray | None, n: int) -> np.ndarray:
    if weights is None:
        return np.ones(n)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (n,) or not np.isfinite(w).all() or (w < 0).any():
        raise ValueError("weights must be n finite, non-negative numbers")
    return w


def _per_class(true: np.ndarray, pred: np.ndarray, w: np.ndarray) -> tuple[ClassMetrics, ...]:
    out = []
    for cls in np.union1d(true, pred):
        tp = float(w[(pred == cls) & (true == cls)].sum())
        precision = _ratio(tp, float(w[pred == cls].sum()))
        recall = _ratio(tp, float(w[true == cls].sum()))
        f1 = _ratio(2 * precision * recall, precision + recall)
        out.append(
            ClassMetrics(
                class_index=int(cls),
                precision=precision,
                recall=recall,
                f1=f1,
                support=int((true == cls).sum()),
            )
        )
    return tuple(out)


def _ratio(numerator: float, denominator: float) -> float:
    # sklearn's zero_division=0: an empty denominator contributes 0, never NaN.
    return numerator / denominator if denominator > 0 else 0.0


def expected_calibration_error(
    *,
    confidence: Sequence[float] | np.ndarray,
    correct: Sequence[bool] | np.ndarray,
    weights: Sequence[float] | np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> float:
    """ECE with ``n_bins`` equal-width bins ``((b-1)/n_bins, b/n_bins]``.

    >>> expected_calibration_error(confidence=[0.9] * 10, correct=[True] * 9 + [False])
    0.0
    """
    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    hit = np.asarray(correct, dtype=np.float64)
    w = _weights(weights, len(conf))
    total = float(w.sum())
    if total <= 0:
        raise ValueError("ECE needs at least one event with positive weight")
    # ceil(conf * n) - 1 puts conf in ((b-1)/n, b/n]; 0.0 would give -1, so clip to bin 0.
    bins = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    mass = np.bincount(bins, weights=w, minlength=n_bins)
    gap = np.bincount(bins, weights=w * (hit - conf), minlength=n_bins)
    # (mass_b / total) * |acc_b - conf_b| == |sum over i in b of w_i (hit_i - conf_i)| / total
    return round(float(np.abs(gap[mass > 0]).sum() / total), 12)


# --- per-window metrics from the store --------------------------------------------------------


def window_metrics(
    store: BaseEventStore,
    *,
    window_index: int | None = None,
    model_version: str | None = None,
    since: float | None = None,
    until: float | None = None,
    n_bins: int = ECE_BINS,
) -> ConceptDriftMetrics | None:
    """Metrics of the stored, labelled events of one window (or time range); ``None`` if none."""
    joined = store.labelled_predictions(
        window_index=window_index, model_version=model_version, since=since, until=until
    )
    if len(joined) == 0:
        return None
    return compute_metrics(
        y_true=joined.labels,
        y_pred=joined.predicted,
        confidence=joined.confidence,
        weights=joined.weights,
        n_bins=n_bins,
    )


def metrics_record(
    metrics: ConceptDriftMetrics,
    *,
    tag: str,
    model_name: str,
    model_version: str,
    window_index: int | None = None,
    first_event_at: float | None = None,
    last_event_at: float | None = None,
    now: float | None = None,
    estimated_accuracy: float | None = None,
) -> ConceptMetricsRecord:
    return ConceptMetricsRecord(
        metrics_id=uuid.uuid4().hex,
        computed_at=time.time() if now is None else now,
        tag=tag,
        model_name=model_name,
        model_version=model_version,
        window_index=window_index,
        first_event_at=first_event_at,
        last_event_at=last_event_at,
        metrics=metrics,
        estimated_accuracy=estimated_accuracy,
    )


def record_window_metrics(
    store: BaseEventStore,
    *,
    window_index: int,
    model_name: str,
    model_version: str,
    tag: str = "feedback",
) -> ConceptMetricsRecord | None:
    """Compute one window's metrics from its labelled events and store them; ``None`` if the
    window has no labelled events yet. Call again when more labels arrive: each call stores a
    new record (the newest one per window is current). The record carries the window's
    label-free accuracy estimate, from its stored drift tests, to compare with the truth."""
    joined = store.labelled_predictions(window_index=window_index, model_version=model_version)
    if len(joined) == 0:
        return None
    metrics = compute_metrics(
        y_true=joined.labels,
        y_pred=joined.predicted,
        confidence=joined.confidence,
        weights=joined.weights,
    )
    record = metrics_record(
        metrics,
        tag=tag,
        model_name=model_name,
        model_version=model_version,
        window_index=window_index,
        first_event_at=float(joined.timestamps.min()),
        last_event_at=float(joined.timestamps.max()),
        estimated_accuracy=window_estimate(store, window_index=window_index),
    )
    store.write_concept_metrics([record])
    return record


def window_estimate(store: BaseEventStore, *, window_index: int) -> float | None:
    """The label-free accuracy estimate stored with a window's drift tests, if any."""
    for record in store.drift_results(window_index=window_index, limit=16):
        if record.estimated_accuracy is not None:
            return record.estimated_accuracy
    return None
