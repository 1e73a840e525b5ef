"""Shadow copies to the candidate, sent from the comparator's process, never from the router's.

A copy costs the router replica an append to a buffer; the copies travel to the comparator in
batches, and the comparator (one low-priority process) makes the per-copy calls to the
candidate through a :class:`~serve_drift.routing.mirror.MirrorQueue`. Under contention the
copies wait, and beyond the queue they are dropped and counted, while the replicas answering
clients keep their CPU. Each copy goes out under the client's correlation and internal IDs,
in a ``serve_drift.shadow.mirror`` span of its own trace, linked to the router's span for the
request; the candidate's request span is that span's child.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from serve_drift.routing.answers import Answer, AnswerStatus, failed, read_answer
from serve_drift.routing.arms import ArmHandles
from serve_drift.routing.config import MirrorConfig
from serve_drift.routing.forward import request_context_for
from serve_drift.routing.http import RoutingError
from serve_drift.routing.instruments import ATTR_ROUTER, router_instruments
from serve_drift.routing.messages import MirrorCopy, Observation
from serve_drift.routing.mirror import MirrorQueue, MirrorTimeout
from serve_drift.routing.shipping import RawAnswer
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

MIRROR_SPAN = "serve_drift.shadow.mirror"


class ShadowCaller:
    """Sends copies to the candidate's app and turns each outcome into an observation."""

    def __init__(
        self,
        *,
        app: str,
        config: MirrorConfig,
        router: str,
        observe: Callable[[Observation], None],
    ) -> None:
        self._app = app
        self._router = router
        self._observe = observe
        self._arms = ArmHandles({"candidate": app})
        self._queue: MirrorQueue[MirrorCopy] = MirrorQueue(
            queue_size=config.queue_size,
            max_in_flight=config.max_in_flight,
            timeout_s=config.timeout_s,
            call=self._call,
            done=self._done,
        )
        self.outcomes: Counter[str] = Counter()

    def offer(self, copy: MirrorCopy) -> None:
        if not self._queue.offer(copy):
            self._count("dropped_queue_full")

    def pending(self) -> int:
        return self._queue.pending()

    async def drain(self) -> None:
        await self._queue.drain()

    async def _call(self, copy: MirrorCopy) -> RawAnswer:
        route = trace.get_current_span(propagate.extract(copy.request.headers)).get_span_context()
        span = tel.tracer().start_span(
            MIRROR_SPAN,
            context=otel_context.Context(),  # a trace of its own: no long tail on the client's
            kind=SpanKind.CLIENT,
            links=[Link(route)] if route.is_valid else [],
            attributes={tel.ATTR_CORRELATION_ID: copy.correlation_id, ATTR_ROUTER: self._router},
        )
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        started = time.perf_counter()
        try:
            handle = self._arms.handle("candidate")
            ids = request_context_for(
                correlation_id=copy.correlation_id, internal_id=copy.internal_id
            )
            response = ids.run(handle.remote, copy.request.with_headers(carrier))
            try:
                result = await response
            except asyncio.CancelledError:  # timed out: the candidate need not finish it
                response.cancel()
                raise
            return RawAnswer(result, time.perf_counter() - started)
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            span.end()

    def _done(self, copy: MirrorCopy, outcome: Any) -> None:
        answer, kind = candidate_answer(outcome, timeout_s=self._queue.timeout_s)
        self._count(kind)
        if kind == "completed" and answer.latency_s is not None:
            attributes = {ATTR_ROUTER: self._router}
            router_instruments().mirror_latency.record(answer.latency_s, attributes)
        self._observe(
            Observation(
                correlation_id=copy.correlation_id,
                timestamp=copy.timestamp,
                mode="shadow",
                served_by="incumbent",
                incumbent=copy.incumbent,
                candidate=answer,
            )
        )

    def _count(self, outcome: str) -> None:
        self.outcomes[outcome] += 1
        router_instruments().mirrored.add(1, {ATTR_ROUTER: self._router, "outcome": outcome})


def candidate_answer(outcome: Any, *, timeout_s: float) -> tuple[Answer, str]:
    """The candidate's answer to a copy, and the outcome it counts as."""
    if isinstance(outcome, RawAnswer):
        answer = read_answer(outcome.result, latency_s=outcome.latency_s)
        return answer, {"ok": "completed", "invalid": "invalid"}.get(answer.status, "failed")
    status: AnswerStatus = "error"
    if isinstance(outcome, MirrorTimeout):
        status = "timeout"
    elif isinstance(outcome, RoutingError):
        status = "unreachable"
    latency = timeout_s if status == "timeout" else None
    kind = "failed" if status == "error" else status
    return failed(status, latency_s=latency, detail=type(outcome).__name__), kind
