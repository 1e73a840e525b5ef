"""Per-replica monitoring state: capture, request spans, metrics and shipping to the monitor."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from serve_drift.capture import Capture, EmbeddingCapture
from serve_drift.config import DriftConfig
from serve_drift.credentials import AdminCredential
from serve_drift.messages import EventBatch, InferenceEvent
from serve_drift.reference.reference_set import read_reference_version
from serve_drift.replica.executor import install_on
from serve_drift.replica.shipper import EmbeddingShipper, PendingEmbedding
from serve_drift.request_context import (
    RequestIds,
    RequestMarks,
    bind_request_ids,
    context_from_headers,
    current_request_ids,
    request_marks,
    request_source,
    serve_batch_request_ids,
)
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

SPAN_NAME = "serve_drift.request"
SENTINEL_SOURCE = "sentinel"

__all__ = ["ReplicaHealth", "ReplicaMonitor", "find_model"]


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


def _request_headers(args: tuple[Any, ...]) -> Any | None:
    return next((a.headers for a in args if _is_http_request(a)), None)


def _parent_context(headers: Any | None, *, trust_client: bool) -> otel_context.Context | None:
    """Ray Serve's span when its tracing is on; else the client's W3C ``traceparent`` when
    the configuration trusts it."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    if headers is None or not trust_client:
        return None
    return propagate.extract(headers)


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
            from serve_drift.telemetry.setup import configure_telemetry

            destination = configure_telemetry(
                service_name=config.model_name, **config.telemetry.sdk_arguments()
            )
            logger.info("serve-drift: telemetry to %s", destination)
        self.config = config
        self.capture = EmbeddingCapture(
            find_model(instance, attr=config.model_attr),
            layer=config.embedding_layer,
            scores=config.scores,
            row_owners=serve_batch_request_ids,
        )
        self.reference_version = read_reference_version(config.reference_path)
        self._monitor_handle = monitor_handle
        self.replica_id = _replica_id()
        self.shipper = EmbeddingShipper(
            config=config.shipping, send=self._send, replica_id=self.replica_id
        )
        self._instruments = tel.replica_instruments()
        self.admin = AdminCredential.load(
            token_env=config.admin.token_env, token_file=config.admin.token_file
        )

    async def handle(
        self, method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        # run_in_executor(None, ...) must carry the request's context to its thread too.
        install_on(asyncio.get_running_loop())
        ids = current_request_ids()
        headers = _request_headers(args)
        parent = _parent_context(
            headers, trust_client=self.config.telemetry.trust_client_traceparent
        )
        kind = SpanKind.SERVER if parent is not None else SpanKind.INTERNAL
        started = time.perf_counter()
        tracer = tel.tracer()
        with (
            bind_request_ids(ids),
            request_marks(
                context=self._context(headers), sentinel=self.is_sentinel(headers)
            ) as marks,
            tracer.start_as_current_span(SPAN_NAME, context=parent, kind=kind) as span,
        ):
            span.set_attributes(self._request_attributes(ids))
            with self.capture.capture(owner=ids.internal_id) as captured:
                try:
                    result = await _call_user_code(method, args, kwargs)
                except BaseException:
                    self._instruments.requests.add(
                        1, {**self._metric_attributes(), "outcome": "error"}
                    )
                    raise
            self._after_response(span, captured, ids, time.perf_counter() - started, marks)
        return result

    def _context(self, headers: Any | None) -> dict[str, str]:
        """Caller context from the configured ``X-Serve-Drift-Context-*`` headers only."""
        if headers is None:
            return {}
        allowed = self.config.context
        return context_from_headers(
            headers, allow=allowed.allow, max_value_chars=allowed.max_value_chars
        )

    def is_sentinel(self, headers: Any | None) -> bool:
        """A sentinel run: it says so, and carries the admin credential. Anything else that
        claims to be one is ordinary traffic: no client can keep its requests out of windows."""
        if headers is None or request_source(headers) != SENTINEL_SOURCE:
            return False
        return self.admin is not None and self.admin.verify_headers(headers)

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
        marks: RequestMarks,
    ) -> None:
        """Record and enqueue; any failure here is counted, never raised into the request."""
        try:
            outcome = marks.outcome or "ok"
            self._instruments.requests.add(1, {**self._metric_attributes(), "outcome": outcome})
            self._instruments.latency.record(latency_s, self._metric_attributes())
            span.set_attribute(tel.ATTR_LATENCY_S, latency_s)
            self._record_capture(span, captured, ids, marks, latency_s)
        except Exception as exc:
            self._record_failure(span, "after_response", exc)

    def _record_capture(
        self,
        span: trace.Span,
        captured: Capture,
        ids: RequestIds,
        marks: RequestMarks,
        latency_s: float,
    ) -> None:
        if captured.error is not None:
            self._record_failure(span, "capture", captured.error)
            return
        if captured.embeddings is None:
            span.set_attribute("serve_drift.embedding.captured", False)
            return
        rows = len(captured.embeddings)
        predictions = Predictions.from_logits(captured.logits, rows=rows)
        if rows == 1 and predictions.predicted[0] is not None:
            span.set_attribute(tel.ATTR_PREDICTED_CLASS, predictions.predicted[0])
            span.set_attribute(tel.ATTR_CONFIDENCE, predictions.confidence[0])
        trace_id, span_id = _span_hex(span)
        for row in range(rows):
            confidence = predictions.confidence[row]
            if confidence is not None:
                self._instruments.confidence.record(confidence, self._metric_attributes())
            event = self._event(
                ids,
                row,
                predictions,
                marks,
                latency_s=latency_s,
                trace_id=trace_id,
                span_id=span_id,
            )
            self.shipper.offer(
                PendingEmbedding(
                    embedding=captured.embeddings[row],
                    event=event,
                    probabilities=None
                    if predictions.probabilities is None
                    else predictions.probabilities[row],
                )
            )
        self.shipper.ensure_started()

    def _event(
        self,
        ids: RequestIds,
        row: int,
        predictions: Predictions,
        marks: RequestMarks,
        *,
        latency_s: float,
        trace_id: str,
        span_id: str,
    ) -> InferenceEvent:
        mark = marks.row(row)
        # Sentinel runs measure the model, not production traffic: flag them, keep them out of
        # drift windows (and, being flagged, they are always stored for their labels to join).
        sentinel = marks.sentinel
        return InferenceEvent(
            correlation_id=ids.correlation_id,
            internal_id=ids.internal_id if row == 0 else f"{ids.internal_id}:{row}",
            timestamp=time.time(),
            model_name=self.config.model_name,
            model_version=self.config.model_version,
            predicted_class=predictions.predicted[row],
            confidence=predictions.confidence[row],
            trace_id=trace_id,
            span_id=span_id,
            flags=(*mark.flags, "sentinel") if sentinel else mark.flags,
            exclude_from_drift=mark.exclude_from_drift or sentinel,
            latency_s=latency_s,
            top_k=predictions.top_k[row],
            context=marks.context,
            input_stats=mark.input_stats,
            replica_id=self.replica_id,
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
            self._monitor_handle = _lookup_monitor(self.config)
        return self._monitor_handle

    async def monitor_call(self, method: str, *args: Any) -> Any:
        return await getattr(self.monitor(), method).remote(*args)

    def replica_health(self) -> ReplicaHealth:
        failure = self.shipper.last_failure
        reasons = () if failure is None else (f"last send to the drift monitor failed: {failure}",)
        return ReplicaHealth(
            shipped=self.shipper.shipped,
            dropped=dict(self.shipper.dropped),
            pending=self.shipper.pending(),
            reasons=reasons,
        )

    async def _send(self, batch: EventBatch) -> object:
        return await self.monitor_call("ingest", batch)


TOP_K = 5


@dataclass(frozen=True)
class ReplicaHealth:
    """What one replica knows about its own shipping to the monitor."""

    shipped: int
    dropped: Mapping[str, int]
    pending: int
    reasons: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "shipped": self.shipped,
            "dropped": dict(self.dropped),
            "pending": self.pending,
            "reasons": list(self.reasons),
        }


@dataclass(frozen=True)
class Predictions:
    """Per-row outputs of one forward pass, from the classifier's logits (if captured)."""

    predicted: list[int | None]
    confidence: list[float | None]
    top_k: list[tuple[tuple[int, float], ...]]
    probabilities: torch.Tensor | None  # (rows, classes), on the model's device

    @classmethod
    def from_logits(cls, logits: torch.Tensor | None, *, rows: int) -> Predictions:
        if logits is None or logits.ndim != 2 or len(logits) != rows:
            return cls([None] * rows, [None] * rows, [()] * rows, None)
        probabilities = torch.softmax(logits.float(), dim=-1)
        top_p, top_i = probabilities.topk(min(TOP_K, probabilities.shape[-1]), dim=-1)
        top_k = [
            tuple(zip(i, p, strict=True))
            for i, p in zip(top_i.tolist(), top_p.tolist(), strict=True)
        ]
        return cls(
            predicted=[t[0][0] for t in top_k],
            confidence=[t[0][1] for t in top_k],
            top_k=top_k,
            probabilities=probabilities,
        )


def _lookup_monitor(config: DriftConfig) -> Any:
    from ray import serve

    context = serve.get_replica_context()
    name = config.monitor_name(context.deployment)
    return serve.get_deployment_handle(name, app_name=context.app_name)


def _replica_id() -> str:
    try:
        from ray import serve

        return str(serve.get_replica_context().replica_id)
    except Exception:
        return uuid.uuid4().hex[:12]
