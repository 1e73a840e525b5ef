"""Per-replica monitoring state: capture, request spans, metrics and shipping to the monitor."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from serve_drift import _telemetry as tel
from serve_drift._capture import Capture, EmbeddingCapture
from serve_drift._config import DriftConfig
from serve_drift._events import EventBatch, InferenceEvent
from serve_drift._ids import RequestIds, bind_request_ids, current_request_ids
from serve_drift._reference import read_reference_version
from serve_drift._shipper import EmbeddingShipper, PendingEmbedding

logger = logging.getLogger(__name__)

SPAN_NAME = "serve_drift.request"


@dataclass(frozen=True)
class RowMark:
    """What the handler said about one input row of the current request."""

    flags: tuple[str, ...] = ()
    exclude_from_drift: bool = False


@dataclass
class _RequestMarks:
    rows: dict[int | None, RowMark] = field(default_factory=dict)
    outcome: str | None = None

    def row(self, index: int) -> RowMark:
        return self.rows.get(index) or self.rows.get(None) or RowMark()


# One mutable record per monitored request, set before the handler runs. The handler (or a
# thread started with ``asyncio.to_thread``, which copies the context) updates it in place.
_REQUEST_MARKS: ContextVar[_RequestMarks | None] = ContextVar(
    "serve_drift_request_marks", default=None
)


@contextmanager
def _request_marks() -> Iterator[_RequestMarks]:
    marks = _RequestMarks()
    token = _REQUEST_MARKS.set(marks)
    try:
        yield marks
    finally:
        _REQUEST_MARKS.reset(token)


def mark_request(
    *,
    flags: Sequence[str] = (),
    exclude_from_drift: bool = False,
    row: int | None = None,
    outcome: str | None = None,
) -> bool:
    """Mark the monitored request being handled; returns False outside one (then a no-op).

    ``flags`` and ``exclude_from_drift`` go on the event of input ``row`` (every row when
    ``None``); the monitor keeps excluded rows out of drift windows and counts them.
    ``outcome`` replaces ``"ok"`` in the ``serve_drift.requests`` counter (e.g. ``"rejected"``
    when the handler answers a 4xx itself).

    >>> mark_request(flags=["constant"], exclude_from_drift=True)
    False
    """
    marks = _REQUEST_MARKS.get()
    if marks is None:
        return False
    if flags or exclude_from_drift:
        marks.rows[row] = RowMark(flags=tuple(flags), exclude_from_drift=exclude_from_drift)
    if outcome is not None:
        marks.outcome = outcome
    return True


def find_model(instance: object, *, attr: str | None) -> torch.nn.Module:
    """The ``nn.Module`` the deployment serves: named by config, or the only one it holds."""
    if attr is not None:
        model = getattr(instance, attr, None)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(
                f"serve-drift: attribute {attr!r} of the deployment is not a torch.nn.Module"
            )
        return model
    found = {name: v for name, v in vars(instance).items() if isinstance(v, torch.nn.Module)}
    if len(found) != 1:
        names = ", ".join(sorted(found)) or "none"
        raise TypeError(
            "serve-drift: set DriftConfig.model_attr to the attribute holding the model "
            f"(nn.Module attributes found after __init__: {names})"
        )
    return next(iter(found.values()))


def _parent_context(args: tuple[Any, ...]) -> otel_context.Context | None:
    """Ray Serve's span when its tracing is on; else the client's W3C ``traceparent``."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    headers = next((a.headers for a in args if _is_http_request(a)), None)
    return propagate.extract(headers) if headers is not None else None


def _is_http_request(value: object) -> bool:
    return hasattr(value, "headers") and hasattr(value, "url") and hasattr(value, "method")


def _span_hex(span: trace.Span) -> tuple[str, str]:
    ctx = span.get_span_context()
    return trace.format_trace_id(ctx.trace_id), trace.format_span_id(ctx.span_id)


async def _call_user_code(
    method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    if inspect.iscoroutinefunction(method):
        return await method(*args, **kwargs)
    # Ray Serve runs sync handlers in a thread pool: so do we (to_thread copies the context).
    return await asyncio.to_thread(functools.partial(method, *args, **kwargs))


class ReplicaMonitor:
    """Everything serve-drift adds to one replica of a monitored deployment."""

    def __init__(
        self, *, instance: object, config: DriftConfig, monitor_handle: Any | None
    ) -> None:
        if config.telemetry.configure_sdk:
            from serve_drift.telemetry_setup import configure_telemetry

            destination = configure_telemetry(service_name=config.model_name)
            logger.info("serve-drift: telemetry to %s", destination)
        self.config = config
        self.capture = EmbeddingCapture(
            find_model(instance, attr=config.model_attr), layer=config.embedding_layer
        )
        self.reference_version = read_reference_version(config.reference_path)
        self._monitor_handle = monitor_handle
        self.shipper = EmbeddingShipper(
            config=config.shipping, send=self._send, replica_id=_replica_id()
        )
        self._instruments = tel.replica_instruments()

    async def handle(
        self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        ids = current_request_ids()
        parent = _parent_context(args)
        kind = SpanKind.SERVER if parent is not None else SpanKind.INTERNAL
        started = time.perf_counter()
        tracer = tel.tracer()
        with (
            bind_request_ids(ids),
            _request_marks() as marks,
            tracer.start_as_current_span(SPAN_NAME, context=parent, kind=kind) as span,
        ):
            span.set_attributes(self._request_attributes(ids))
            with self.capture.capture() as captured:
                try:
                    result = await _call_user_code(method, args, kwargs)
                except BaseException:
                    self._instruments.requests.add(
                        1, {**self._metric_attributes(), "outcome": "error"}
                    )
                    raise
            self._after_response(span, captured, ids, time.perf_counter() - started, marks)
        return result

    def _request_attributes(self, ids: RequestIds) -> dict[str, str]:
        return {
            tel.ATTR_CORRELATION_ID: ids.correlation_id,
            tel.ATTR_INTERNAL_ID: ids.internal_id,
            tel.ATTR_MODEL_NAME: self.config.model_name,
            tel.ATTR_MODEL_VERSION: self.config.model_version,
            tel.ATTR_REFERENCE_VERSION: self.reference_version,
        }

    def _metric_attributes(self) -> dict[str, str]:
        return {
            tel.ATTR_MODEL_NAME: self.config.model_name,
            tel.ATTR_MODEL_VERSION: self.config.model_version,
        }

    def _after_response(
        self,
        span: trace.Span,
        captured: Capture,
        ids: RequestIds,
        latency_s: float,
        marks: _RequestMarks,
    ) -> None:
        """Record and enqueue; any failure here is counted, never raised into the request."""
        try:
            outcome = marks.outcome or "ok"
            self._instruments.requests.add(1, {**self._metric_attributes(), "outcome": outcome})
            self._instruments.latency.record(latency_s, self._metric_attributes())
            span.set_attribute(tel.ATTR_LATENCY_S, latency_s)
            self._record_capture(span, captured, ids, marks)
        except Exception as exc:
            self._record_failure(span, "after_response", exc)

    def _record_capture(
        self, span: trace.Span, captured: Capture, ids: RequestIds, marks: _RequestMarks
    ) -> None:
        if captured.error is not None:
            self._record_failure(span, "capture", captured.error)
            return
        if captured.embeddings is None:
            span.set_attribute("serve_drift.embedding.captured", False)
            return
        predictions = _predictions(captured.logits, rows=len(captured.embeddings))
        if len(predictions) == 1 and predictions[0][0] is not None:
            span.set_attribute(tel.ATTR_PREDICTED_CLASS, predictions[0][0])
            span.set_attribute(tel.ATTR_CONFIDENCE, predictions[0][1])
        trace_id, span_id = _span_hex(span)
        for row, (predicted, confidence) in enumerate(predictions):
            if confidence is not None:
                self._instruments.confidence.record(confidence, self._metric_attributes())
            event = self._event(ids, row, trace_id, span_id, predicted, confidence, marks.row(row))
            self.shipper.offer(PendingEmbedding(embedding=captured.embeddings[row], event=event))
        self.shipper.ensure_started()

    def _event(
        self,
        ids: RequestIds,
        row: int,
        trace_id: str,
        span_id: str,
        predicted: int | None,
        confidence: float | None,
        mark: RowMark,
    ) -> InferenceEvent:
        return InferenceEvent(
            correlation_id=ids.correlation_id,
            internal_id=ids.internal_id if row == 0 else f"{ids.internal_id}:{row}",
            timestamp=time.time(),
            model_name=self.config.model_name,
            model_version=self.config.model_version,
            predicted_class=predicted,
            confidence=confidence,
            trace_id=trace_id,
            span_id=span_id,
            flags=mark.flags,
            exclude_from_drift=mark.exclude_from_drift,
        )

    def _record_failure(self, span: trace.Span, stage: str, exc: BaseException) -> None:
        logger.warning("serve-drift: monitoring failed at %s: %s", stage, exc)
        self._instruments.monitoring_errors.add(1, {"stage": stage})
        span.add_event(
            "serve_drift.monitoring_error", {"stage": stage, "error.type": type(exc).__name__}
        )

    def monitor(self) -> Any:
        """Handle to this app's drift monitor (passed in by ``monitored_app`` or looked up)."""
        if self._monitor_handle is None:
            self._monitor_handle = _lookup_monitor(self.config.monitor_deployment)
        return self._monitor_handle

    async def monitor_call(self, method: str, *args: Any) -> Any:
        return await getattr(self.monitor(), method).remote(*args)

    def replica_health(self) -> dict[str, Any]:
        failure = self.shipper.last_failure
        reasons = [] if failure is None else [f"last send to the drift monitor failed: {failure}"]
        return {
            "shipped": self.shipper.shipped,
            "dropped": dict(self.shipper.dropped),
            "pending": self.shipper.pending(),
            "reasons": reasons,
        }

    async def _send(self, batch: EventBatch) -> object:
        return await self.monitor_call("ingest", batch)


def _predictions(
    logits: torch.Tensor | None, *, rows: int
) -> list[tuple[int | None, float | None]]:
    if logits is None or logits.ndim != 2 or len(logits) != rows:
        return [(None, None)] * rows
    confidence, predicted = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return list(zip(predicted.tolist(), confidence.tolist(), strict=True))


def _lookup_monitor(name: str) -> Any:
    from ray import serve

    app_name = serve.get_replica_context().app_name
    return serve.get_deployment_handle(name, app_name=app_name)


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id)
    except Exception:
        return uuid.uuid4().hex[:12]
