"""Per-replica monitoring state: capture, request spans, metrics and shipping to the monitor."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from serve_drift.capture import Capture, EmbeddingCapture
from serve_drift.config import DriftConfig
from serve_drift.credentials import AdminCredential
from serve_drift.messages import EventBatch, IngestReceipt
from serve_drift.reference.reference_set import read_reference_version
from serve_drift.replica.batch import BatchBuilder, PendingRows
from serve_drift.replica.executor import install_on
from serve_drift.replica.shipper import EmbeddingShipper
from serve_drift.request_context import (
    CONTEXT_PREFIX,
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


def _parent_context(
    headers: Any | None, *, trust_client: bool, propagation: bool
) -> otel_context.Context | None:
    """Ray Serve's span when its tracing is on; else the client's W3C ``traceparent`` when
    the configuration trusts it. ``propagation``: whether any header the propagators read
    came (without one they would return an empty context, which this returns at once)."""
    if trace.get_current_span().get_span_context().is_valid:
        return None
    if headers is None or not trust_client:
        return None
    return propagate.extract(headers) if propagation else otel_context.Context()


_REQUEST_ATTRIBUTES = ("headers", "url", "method")
_REQUEST_TYPES: set[type] = set()  # classes that have all three (Starlette's Request)


def _is_http_request(value: object) -> bool:
    kind = type(value)
    if kind in _REQUEST_TYPES:
        return True
    if all(hasattr(kind, name) for name in _REQUEST_ATTRIBUTES):
        _REQUEST_TYPES.add(kind)
        return True
    return all(_has(value, name) for name in _REQUEST_ATTRIBUTES)


def _has(value: object, name: str) -> bool:
    # Not hasattr(value, ...): Starlette's ``url`` is a property that builds a URL when read.
    return hasattr(type(value), name) or name in getattr(value, "__dict__", ())


_RAW_PREFIX = CONTEXT_PREFIX.encode("latin-1")


@dataclass(frozen=True)
class _HeaderScan:
    """What one pass over a request's header names found."""

    context: bool  # an ``X-Serve-Drift-Context-*`` header
    propagation: bool  # a header the global propagators read (``traceparent``, ``baggage``)


_ALL = _HeaderScan(context=True, propagation=True)
_NONE = _HeaderScan(context=False, propagation=False)


class _PropagationFields:
    """The (lower-case, encoded) header names the global propagators read, looked up again
    only when the global propagator is replaced."""

    def __init__(self) -> None:
        self._textmap: object | None = None
        self._names: frozenset[bytes] = frozenset()

    def names(self) -> frozenset[bytes]:
        textmap = propagate.get_global_textmap()
        if textmap is not self._textmap:
            self._names = frozenset(f.lower().encode("latin-1") for f in textmap.fields)
            self._textmap = textmap
        return self._names


_PROPAGATION = _PropagationFields()


def _scan_headers(headers: Any | None) -> _HeaderScan:
    """One pass over Starlette's raw (lower-cased) names, so the common request, which has
    neither caller context nor trace context, costs no decoding and no propagator call."""
    if headers is None:
        return _NONE
    raw = getattr(headers, "raw", None)
    if raw is None:  # another mapping: let the full parsers look
        return _ALL
    fields = _PROPAGATION.names()
    context = propagation = False
    for name, _ in raw:
        context = context or name.startswith(_RAW_PREFIX)
        propagation = propagation or name in fields
    if not (context or propagation):
        return _NONE
    return _HeaderScan(context=context, propagation=propagation)


async def _call_user_code(
    method: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], *, is_async: bool
) -> Any:
    if is_async:
        return await method(*args, **kwargs)
    # Ray Serve runs sync handlers in a thread pool: so do we (to_thread copies the context).
    return await asyncio.to_thread(functools.partial(method, *args, **kwargs))


class RequestCounts:
    """Requests by outcome, and their latencies, kept in the replica and given to the OTel
    counter and histogram once per shipping tick: an SDK counter call per request costs more
    than the rest of the count, and histogram records one after the other cost a fraction of
    one between two requests' forward passes."""

    # Beyond this many latencies waiting (no tick for a long while), they are recorded at once.
    MAX_WAITING = 10_000

    def __init__(self, *, attributes: Mapping[str, str]) -> None:
        self._attributes = dict(attributes)
        self._counts: Counter[str] = Counter()
        self._latencies: list[float] = []

    def add(self, outcome: str) -> None:
        self._counts[outcome] += 1

    def latency(self, latency_s: float) -> None:
        self._latencies.append(latency_s)
        if len(self._latencies) >= self.MAX_WAITING:
            try:  # on the request path: a metric's failure never reaches the request
                self._flush_latencies()
            except Exception:
                logger.warning("serve-drift: recording latencies failed", exc_info=True)

    def flush(self) -> None:
        counts, self._counts = self._counts, Counter()
        requests = tel.replica_instruments().requests
        for outcome, n in counts.items():
            requests.add(n, {**self._attributes, "outcome": outcome})
        self._flush_latencies()

    def _flush_latencies(self) -> None:
        latencies, self._latencies = self._latencies, []
        histogram = tel.replica_instruments().latency
        for latency_s in latencies:
            histogram.record(latency_s, self._attributes)


class ReplicaMonitor:
    """Everything serve-drift adds to one replica of a monitored deployment.

    The request path keeps to what must happen per request: the span's start, and an
    ``offer`` of references to the captured tensors and the answered, still open span. The
    span's prediction and its end (at the answer's time), events, softmax rows, top-k, input
    statistics and the metrics are made per batch by the shipper
    (:mod:`serve_drift.replica.batch`); a request whose rows do not reach the shipper ends its
    span at once.
    """

    def __init__(
        self, *, instance: object, config: DriftConfig, monitor_handle: Any | None
    ) -> None:
        if config.telemetry.configure_sdk:
            _configure_sdk(config)
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
        self._metric_attributes = {
            tel.ATTR_MODEL_NAME: config.model_name,
            tel.ATTR_MODEL_VERSION: config.model_version,
        }
        self._instruments = tel.replica_instruments()
        self.requests = RequestCounts(attributes=self._metric_attributes)
        self.shipper = self._shipper()
        self.admin = AdminCredential.load(
            token_env=config.admin.token_env, token_file=config.admin.token_file
        )
        self._tracer: trace.Tracer | None = None

    def _shipper(self) -> EmbeddingShipper:
        builder = BatchBuilder(
            model_name=self.config.model_name,
            model_version=self.config.model_version,
            replica_id=self.replica_id,
            on_confidences=self._record_confidences,
            on_error=functools.partial(self._count_failure, "input_stats"),
        )
        return EmbeddingShipper(
            config=self.config.shipping,
            send=self._send,
            builder=builder,
            on_tick=self.requests.flush,
        )

    async def handle(
        self,
        method: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        *,
        is_async: bool | None = None,
    ) -> Any:
        """Run the user's handler in a request span with embedding capture; ``is_async``
        (whether ``method`` is a coroutine function) is looked up when not given."""
        if is_async is None:
            is_async = inspect.iscoroutinefunction(method)
        # run_in_executor(None, ...) must carry the request's context to its thread too.
        install_on(asyncio.get_running_loop())
        ids = current_request_ids()
        headers = _request_headers(args)
        scan = _scan_headers(headers)
        context, sentinel = self._caller(headers, scan)
        started = time.perf_counter()
        span = self._start_span(headers, scan)
        # The span's attributes, set in one call when it ends: one call costs a fraction of
        # one per attribute, and given at the start they would be copied and checked twice.
        attributes = self._span_attributes(ids)
        # What start_as_current_span does, without its two generator context managers.
        token = otel_context.attach(trace.set_span_in_context(span))
        handed_over = False  # to the shipper, which ends it with the batch
        try:
            with (
                bind_request_ids(ids),
                request_marks(context=context, sentinel=sentinel) as marks,
                self.capture.capture(owner=ids.internal_id) as captured,
            ):
                result = await _call_user_code(method, args, kwargs, is_async=is_async)
                latency_s = time.perf_counter() - started
                handed_over = self._after_response(
                    span, attributes, captured, ids, latency_s, marks
                )
        except BaseException as exc:
            self.requests.add("error")
            _record_exception(span, exc)
            raise
        finally:
            otel_context.detach(token)
            if not handed_over:
                span.set_attributes(attributes)
                span.end()
        self.requests.latency(latency_s)
        return result

    def _start_span(self, headers: Any | None, scan: _HeaderScan) -> trace.Span:
        parent = _parent_context(
            headers,
            trust_client=self.config.telemetry.trust_client_traceparent,
            propagation=scan.propagation,
        )
        kind = SpanKind.SERVER if parent is not None else SpanKind.INTERNAL
        return self.tracer().start_span(SPAN_NAME, context=parent, kind=kind)

    def _span_attributes(self, ids: RequestIds) -> dict[str, Any]:
        return {
            tel.ATTR_CORRELATION_ID: ids.correlation_id,
            tel.ATTR_INTERNAL_ID: ids.internal_id,
            **self._metric_attributes,
            tel.ATTR_REFERENCE_VERSION: self.reference_version,
        }

    def tracer(self) -> trace.Tracer:
        """The library's tracer, looked up at the first request (the SDK is configured by
        then, or the API's proxy tracer follows a provider installed later)."""
        if self._tracer is None:
            self._tracer = tel.tracer()
        return self._tracer

    def _caller(self, headers: Any | None, scan: _HeaderScan) -> tuple[dict[str, str], bool]:
        """Caller context and whether this is a verified sentinel run."""
        if headers is None or not scan.context:
            return {}, False
        return self._context(headers), self.is_sentinel(headers)

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

    def _record_confidences(self, confidences: list[float]) -> None:
        histogram = self._instruments.confidence
        for confidence in confidences:
            histogram.record(confidence, self._metric_attributes)

    def _after_response(
        self,
        span: trace.Span,
        attributes: dict[str, Any],
        captured: Capture,
        ids: RequestIds,
        latency_s: float,
        marks: RequestMarks,
    ) -> bool:
        """Record and enqueue; True when the shipper took the open span (it ends it with the
        batch). Any failure here is counted, never raised into the request."""
        try:
            self.requests.add(marks.outcome or "ok")
            attributes[tel.ATTR_LATENCY_S] = latency_s
            return self._record_capture(span, attributes, captured, ids, marks, latency_s)
        except Exception as exc:
            self._record_failure(span, "after_response", exc)
            return False

    def _record_capture(
        self,
        span: trace.Span,
        attributes: dict[str, Any],
        captured: Capture,
        ids: RequestIds,
        marks: RequestMarks,
        latency_s: float,
    ) -> bool:
        self.shipper.ensure_started()
        if captured.error is not None:
            self._record_failure(span, "capture", captured.error)
            return False
        embeddings = captured.embeddings
        if embeddings is None:
            attributes["serve_drift.embedding.captured"] = False
            return False
        rows = embeddings.shape[0]
        answered_ns = time.time_ns()  # the event's time and the span's end: one instant
        return self.shipper.offer(
            PendingRows(
                rows=rows,
                embeddings=embeddings,
                logits=_scores(captured.logits, rows=rows),
                ids=ids,
                marks=marks,
                latency_s=latency_s,
                timestamp=answered_ns / 1e9,
                span=span.get_span_context(),
                open_span=span,
                span_attributes=attributes,
                ended_ns=answered_ns,
            )
        )

    def _record_failure(self, span: trace.Span, stage: str, exc: BaseException) -> None:
        self._count_failure(stage, exc)
        span.add_event(
            "serve_drift.monitoring_error", {"stage": stage, "error.type": type(exc).__name__}
        )

    def _count_failure(self, stage: str, exc: BaseException) -> None:
        logger.warning("serve-drift: monitoring failed at %s: %s", stage, exc)
        self._instruments.monitoring_errors.add(1, {"stage": stage})

    def monitor(self) -> Any:
        """Handle to this app's drift monitor (passed in by ``monitored_app`` or looked up)."""
        if self._monitor_handle is None:
            self._monitor_handle = _lookup_monitor(self.config)
        return self._monitor_handle

    async def monitor_call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return await getattr(self.monitor(), method).remote(*args, **kwargs)

    def replica_health(self) -> ReplicaHealth:
        failure = self.shipper.last_failure
        reasons = () if failure is None else (f"last send to the drift monitor failed: {failure}",)
        return ReplicaHealth(
            shipped=self.shipper.shipped,
            dropped=dict(self.shipper.dropped),
            pending=self.shipper.pending(),
            reasons=reasons,
            sampling_rate_cap=self.shipper.sampler.rate,
        )

    async def _send(self, batch: EventBatch) -> object:
        receipt = await self.monitor_call("ingest", batch)
        if isinstance(receipt, IngestReceipt) and receipt.reference_version:
            # The monitor may have swapped its reference (user_config): spans follow it.
            self.reference_version = receipt.reference_version
        return receipt


def _configure_sdk(config: DriftConfig) -> None:
    from serve_drift.telemetry.setup import configure_telemetry

    destination = configure_telemetry(
        service_name=config.model_name, **config.telemetry.sdk_arguments()
    )
    logger.info("serve-drift: telemetry to %s", destination)


def _record_exception(span: trace.Span, exc: BaseException) -> None:
    """The application's exception on its request span, as ``use_span`` would record it."""
    if isinstance(exc, Exception):
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def _scores(logits: torch.Tensor | None, *, rows: int) -> torch.Tensor | None:
    """The captured scores when they are one ``(classes,)`` row per embedding row."""
    if logits is None or logits.ndim != 2 or logits.shape[0] != rows:
        return None
    return logits


@dataclass(frozen=True)
class ReplicaHealth:
    """What one replica knows about its own shipping to the monitor; ``sampling_rate_cap`` is
    the rows per second it may ship now (``None``: every row ships)."""

    shipped: int
    dropped: Mapping[str, int]
    pending: int
    reasons: tuple[str, ...]
    sampling_rate_cap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "shipped": self.shipped,
            "dropped": dict(self.dropped),
            "pending": self.pending,
            "reasons": list(self.reasons),
            "sampling_rate_cap": self.sampling_rate_cap,
        }


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
