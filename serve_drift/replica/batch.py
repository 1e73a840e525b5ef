"""From what the request path leaves in the buffer to the batch the monitor receives.

The request path only records references (the captured tensors, the request's IDs and marks,
its span, answered but not ended): softmax and top-k, the span's prediction and its end, input
statistics, ID formatting and the events themselves are made here, for a whole drain at once,
off the request path. Vectorised, or one after the other, they cost a fraction of what they
cost one request at a time; and rows the sampler does not ship get no event and no statistics.

Two steps, as the shipper runs them: :meth:`BatchBuilder.answer` ends a drain's spans and
computes its outputs soon after the requests (every few dozen rows), which frees the spans'
objects before the garbage collector promotes them to its oldest generation (a promoted object
costs a share of a full-heap collection); :meth:`BatchBuilder.ship` samples what accumulated
since the last send and makes the events and the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from opentelemetry import trace
from opentelemetry.trace import SpanContext

from serve_drift.messages import EventBatch, InferenceEvent, InputStats
from serve_drift.replica.sampler import RowSampler, SampleChoice
from serve_drift.request_context import PendingStats, RequestIds, RequestMarks, RowMark
from serve_drift.telemetry.instruments import ATTR_CONFIDENCE, ATTR_PREDICTED_CLASS

logger = logging.getLogger(__name__)

TOP_K = 5
TopK = tuple[tuple[int, float], ...]


class PendingRows(NamedTuple):
    """One request's captured rows, as the request path leaves them (a named tuple: made on
    every request, it costs a third of a frozen dataclass).

    ``open_span``, when given, is the request's span, answered but not ended: the batch sets
    ``span_attributes`` on it, with the prediction and confidence of a one-row request, and
    ends it at ``ended_ns``, the time of the answer (see :func:`end_spans`)."""

    rows: int
    embeddings: torch.Tensor  # (rows, d), still on the model's device
    logits: torch.Tensor | None  # (rows, classes) scores, same device; None if not captured
    ids: RequestIds
    marks: RequestMarks
    latency_s: float
    timestamp: float
    span: SpanContext
    open_span: trace.Span | None = None
    span_attributes: dict[str, Any] | None = None
    ended_ns: int | None = None


@dataclass(frozen=True)
class Outputs:
    """Per row of a drain: prediction, confidence and top-k; softmax rows when every row has
    them (a test on outputs needs them for the whole window)."""

    predicted: list[int | None]
    confidence: list[float | None]
    top_k: list[TopK]
    probabilities: np.ndarray | None


def batch_outputs(items: Sequence[PendingRows], *, top_k: int = TOP_K) -> Outputs:
    """Softmax and top-k of every row, one call per distinct class count (usually one)."""
    n = sum(item.rows for item in items)
    outputs = Outputs([None] * n, [None] * n, [()] * n, None)
    for positions, logits in _logit_groups(items):
        probabilities = torch.softmax(logits.float(), dim=-1)
        top_p, top_i = probabilities.topk(min(top_k, probabilities.shape[-1]), dim=-1)
        for pos, indices, values in zip(positions, top_i.tolist(), top_p.tolist(), strict=True):
            outputs.top_k[pos] = tuple(zip(indices, values, strict=True))
            outputs.predicted[pos], outputs.confidence[pos] = indices[0], values[0]
        if len(positions) == n:
            outputs = Outputs(
                outputs.predicted, outputs.confidence, outputs.top_k, probabilities.cpu().numpy()
            )
    return outputs


def _logit_groups(items: Sequence[PendingRows]) -> list[tuple[list[int], torch.Tensor]]:
    """(row positions, stacked logits) per class count."""
    groups: dict[int, tuple[list[int], list[torch.Tensor]]] = {}
    position = 0
    for item in items:
        if item.logits is not None:
            positions, tensors = groups.setdefault(item.logits.shape[1], ([], []))
            positions.extend(range(position, position + item.rows))
            tensors.append(item.logits)
        position += item.rows
    return [(positions, torch.cat(tensors)) for positions, tensors in groups.values()]


def end_spans(
    items: Sequence[PendingRows], outputs: Outputs | None, *, on_error: Callable[[Exception], None]
) -> None:
    """End the request spans the request path left open, with their attributes and the
    prediction of one-row requests (from ``outputs``, ``None`` when they could not be made).

    Why here: set and ended one after the other, spans cost the SDK a fraction of what they
    cost one at a time between two requests' forward passes; their end times are the answers'.
    """
    position = 0
    for item in items:
        span = item.open_span
        if span is not None and span.is_recording():
            try:
                _end_span(span, item, outputs, position)
            except Exception as exc:  # a span is telemetry: it never stops the batch
                on_error(exc)
        position += item.rows


def _end_span(span: trace.Span, item: PendingRows, outputs: Outputs | None, position: int) -> None:
    attributes = item.span_attributes or {}
    if outputs is not None and item.rows == 1 and outputs.predicted[position] is not None:
        attributes[ATTR_PREDICTED_CLASS] = outputs.predicted[position]
        attributes[ATTR_CONFIDENCE] = outputs.confidence[position]
    span.set_attributes(attributes)
    span.end(end_time=item.ended_ns)


def resolve_stats(
    values: Sequence[InputStats | PendingStats | None], *, on_error: Callable[[Exception], None]
) -> list[InputStats | None]:
    """Statistics marked by the handler; pending ones computed in one call per summariser."""
    resolved: list[InputStats | None] = [v if isinstance(v, InputStats) else None for v in values]
    groups: dict[Any, list[int]] = {}
    for index, value in enumerate(values):
        if isinstance(value, PendingStats):
            groups.setdefault(value.summarise, []).append(index)
    for summarise, indices in groups.items():
        try:
            stats = list(summarise([values[i].item for i in indices]))  # type: ignore[union-attr]
        except Exception as exc:  # the statistics are lost, never the batch
            on_error(exc)
            continue
        for index, one in zip(indices, stats, strict=True):
            resolved[index] = one
    return resolved


@dataclass(frozen=True)
class Answered:
    """Drained rows whose spans are ended (``items`` no longer hold them), with their outputs:
    what waits for the next send."""

    items: list[PendingRows]
    outputs: Outputs

    @property
    def rows(self) -> int:
        return len(self.outputs.predicted)


def merged_outputs(parts: Sequence[Outputs]) -> Outputs:
    """The outputs of consecutive drains as one; softmax rows only when every part has them,
    of one width (a test on outputs needs them for the whole window)."""
    if len(parts) == 1:
        return parts[0]
    probabilities = [part.probabilities for part in parts if part.probabilities is not None]
    whole = len(probabilities) == len(parts) and len({p.shape[1] for p in probabilities}) == 1
    return Outputs(
        [p for part in parts for p in part.predicted],
        [c for part in parts for c in part.confidence],
        [k for part in parts for k in part.top_k],
        np.concatenate(probabilities) if whole else None,
    )


@dataclass(frozen=True)
class Drained:
    """A drain turned into what ships (``batch``, ``None`` when nothing does) and how many of
    its rows the sampler left out."""

    batch: EventBatch | None
    unsampled: int


class BatchBuilder:
    """Turns drained :class:`PendingRows` into one :class:`EventBatch` of the rows to ship."""

    def __init__(
        self,
        *,
        model_name: str,
        model_version: str,
        replica_id: str,
        on_confidences: Callable[[list[float]], None],
        on_error: Callable[[Exception], None],
    ) -> None:
        self._model = (model_name, model_version)
        self._replica_id = replica_id
        self._on_confidences = on_confidences
        self._on_error = on_error

    def empty(self, *, width: int) -> EventBatch:
        """A batch of no rows: it only carries the count of rows left out to the monitor."""
        rows = np.zeros((0, width), dtype=np.float32)
        return EventBatch(embeddings=rows, events=(), replica_id=self._replica_id)

    def build(self, items: Sequence[PendingRows], *, sampler: RowSampler, now: float) -> Drained:
        """One drain answered and shipped at once (:meth:`answer`, then :meth:`ship`)."""
        return self.ship([self.answer(items)], sampler=sampler, now=now)

    def answer(self, items: Sequence[PendingRows]) -> Answered:
        """The drain's outputs and confidence histogram; its request spans are ended, whatever
        happens, and left out of the rows that wait for the send."""
        outputs: Outputs | None = None
        try:
            outputs = batch_outputs(items)
        finally:
            end_spans(items, outputs, on_error=self._on_error)
        self._on_confidences([c for c in outputs.confidence if c is not None])
        waiting = [
            item if item.open_span is None else item._replace(open_span=None, span_attributes=None)
            for item in items
        ]
        return Answered(waiting, outputs)

    def ship(self, answered: Sequence[Answered], *, sampler: RowSampler, now: float) -> Drained:
        """The batch of the answered drains' rows the sampler keeps."""
        items = [item for part in answered for item in part.items]
        outputs = merged_outputs([part.outputs for part in answered])
        rows = [(item, row) for item in items for row in range(item.rows)]
        always = np.fromiter((item.marks.sentinel for item, _ in rows), bool, len(rows))
        choice = sampler.choose(always=always, now=now)
        if not len(choice.kept):
            return Drained(None, choice.unsampled)
        return Drained(self._batch(items, rows, outputs, choice), choice.unsampled)

    def _batch(
        self,
        items: Sequence[PendingRows],
        rows: list[tuple[PendingRows, int]],
        outputs: Outputs,
        choice: SampleChoice,
    ) -> EventBatch:
        kept = choice.kept.tolist()
        marks = [rows[i][0].marks.row(rows[i][1]) for i in kept]
        stats = resolve_stats([mark.input_stats for mark in marks], on_error=self._on_error)
        events = tuple(
            self._event(rows[i][0], rows[i][1], mark, outputs, i, weight=w, stats=s)
            for i, mark, w, s in zip(kept, marks, choice.weights.tolist(), stats, strict=True)
        )
        embeddings = torch.cat([item.embeddings for item in items])
        if len(kept) < len(embeddings):  # only the shipped rows leave the device
            embeddings = embeddings[torch.as_tensor(choice.kept, device=embeddings.device)]
        probabilities = outputs.probabilities
        return EventBatch(
            embeddings=np.ascontiguousarray(embeddings.to(torch.float32).cpu().numpy()),
            events=events,
            replica_id=self._replica_id,
            probabilities=None if probabilities is None else probabilities[choice.kept],
        )

    def _event(
        self,
        item: PendingRows,
        row: int,
        mark: RowMark,
        outputs: Outputs,
        position: int,
        *,
        weight: float,
        stats: InputStats | None,
    ) -> InferenceEvent:
        # Sentinel runs measure the model, not production traffic: flag them, keep them out of
        # drift windows (and, being flagged, they are always stored for their labels to join).
        sentinel = item.marks.sentinel
        internal_id = item.ids.internal_id
        return InferenceEvent(
            correlation_id=item.ids.correlation_id,
            internal_id=internal_id if row == 0 else f"{internal_id}:{row}",
            timestamp=item.timestamp,
            model_name=self._model[0],
            model_version=self._model[1],
            predicted_class=outputs.predicted[position],
            confidence=outputs.confidence[position],
            trace_id=format(item.span.trace_id, "032x"),  # as trace.format_trace_id does
            span_id=format(item.span.span_id, "016x"),
            flags=(*mark.flags, "sentinel") if sentinel else mark.flags,
            exclude_from_drift=mark.exclude_from_drift or sentinel,
            latency_s=item.latency_s,
            top_k=outputs.top_k[position],
            context=item.marks.context,
            input_stats=stats,
            replica_id=self._replica_id,
            sampling_weight=weight,
        )
