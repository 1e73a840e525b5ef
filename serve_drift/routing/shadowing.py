"""Shadow copies to the candidate, sent from the comparator's process, never from the router's.

A copy costs the router replica an append to a buffer; the copies travel to the comparator in
batches, and the comparator (one low-priority process) sends them on to the candidate through
a :class:`~serve_drift.routing.mirror.MirrorQueue`, **many copies per handle call**: a Serve
handle call costs the caller and the candidate's replica more CPU than a small model's whole
answer, so one call per copy would spend most of a mirror's CPU on Serve itself. The candidate
answers a batch through ``serve_drift_batch`` (every ``@monitored`` class has it, see
:mod:`serve_drift.replica.batched`), each copy under its own IDs, with its own request span and
event; a candidate without that method (an undecorated deployment, or a monitored one behind
an ingress of its own) is sent one call per copy instead, and asked again for batches now and
then. Under contention the copies wait, and beyond the queue they are dropped and counted,
while the replicas answering clients keep their CPU. Each copy goes out under the client's
correlation and internal IDs, in a ``serve_drift.shadow.mirror`` span of its own trace, linked
to the router's span for the request; the candidate's request span is that span's child.
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

from serve_drift.request_context import (
    BATCH_METHOD,
    BatchedAnswer,
    BatchedFailure,
    BatchedRequest,
    RequestIds,
)
from serve_drift.routing.aio import within
from serve_drift.routing.answers import Answer, AnswerStatus, failed
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
# The candidate bounds each copy of a batch by timeout_s; the call as a whole gets this much
# more, for the copies' trip (a killed or wedged replica still ends the call).
BATCH_GRACE_S = 2.0
# A candidate found without the batch method is asked again after this long (a redeploy may
# have added it); until then it gets one call per copy.
BATCH_RETRY_S = 60.0


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
        self._timeout_s = config.timeout_s
        self._arms = ArmHandles({"candidate": app})
        self._queue: MirrorQueue[MirrorCopy] = MirrorQueue(
            queue_size=config.queue_size,
            max_in_flight=config.max_in_flight,
            batch_size=config.candidate_batch_size,
            timeout_s=config.timeout_s + BATCH_GRACE_S,
            call=self._call,
            done=self._done,
        )
        self._batch_retry_at: float | None = None  # set while the candidate has no batch method
        self.outcomes: Counter[str] = Counter()

    def offer(self, copy: MirrorCopy) -> None:
        if not self._queue.offer(copy):
            self._count("dropped_queue_full")

    def pending(self) -> int:
        return self._queue.pending()

    async def drain(self) -> None:
        await self._queue.drain()

    async def _call(self, copies: list[MirrorCopy]) -> list[Any]:
        spans = [self._start_span(copy) for copy in copies]
        try:
            outcomes = await self._send(copies, spans)
        except BaseException as exc:
            for span in spans:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            for span in spans:
                span.end()
        for span, outcome in zip(spans, outcomes, strict=False):
            if not isinstance(outcome, RawAnswer):
                span.set_status(Status(StatusCode.ERROR, type(outcome).__name__))
        return outcomes

    async def _send(self, copies: list[MirrorCopy], spans: list[trace.Span]) -> list[Any]:
        requests = [_traced(copy, span) for copy, span in zip(copies, spans, strict=True)]
        if self._batches_wanted():
            try:
                return await self._call_batch(copies, requests)
            except Exception as exc:
                if not _no_batch_method(exc):
                    raise
                logger.info("serve-drift: the candidate %r takes one copy per call", self._app)
                self._batch_retry_at = time.monotonic() + BATCH_RETRY_S
        calls = (self._call_one(c, r) for c, r in zip(copies, requests, strict=True))
        return list(await asyncio.gather(*calls, return_exceptions=True))

    def _batches_wanted(self) -> bool:
        retry_at = self._batch_retry_at
        return retry_at is None or time.monotonic() >= retry_at

    async def _call_batch(self, copies: list[MirrorCopy], requests: list[Any]) -> list[Any]:
        items = [
            BatchedRequest(request, RequestIds(copy.correlation_id, copy.internal_id))
            for copy, request in zip(copies, requests, strict=True)
        ]
        handle = self._arms.handle("candidate").options(method_name=BATCH_METHOD)
        response = handle.remote(items, self._timeout_s)
        try:
            answers = await response
        except asyncio.CancelledError:  # the whole call overran: the candidate need not finish
            response.cancel()
            raise
        self._batch_retry_at = None
        if not isinstance(answers, list) or len(answers) != len(copies):
            return [_not_a_batch_answer(answers, len(copies))] * len(copies)
        return [_from_batch(answer) for answer in answers]

    async def _call_one(self, copy: MirrorCopy, request: Any) -> Any:
        started = time.perf_counter()
        handle = self._arms.handle("candidate")
        ids = request_context_for(correlation_id=copy.correlation_id, internal_id=copy.internal_id)
        response = ids.run(handle.remote, request)
        try:
            result = await within(response, self._timeout_s)
        except asyncio.TimeoutError:  # the candidate need not finish it
            response.cancel()
            return MirrorTimeout(f"no answer within {self._timeout_s:g} s")
        return RawAnswer(result, time.perf_counter() - started)

    def _start_span(self, copy: MirrorCopy) -> trace.Span:
        route = trace.get_current_span(propagate.extract(copy.request.headers)).get_span_context()
        return tel.tracer().start_span(
            MIRROR_SPAN,
            context=otel_context.Context(),  # a trace of its own: no long tail on the client's
            kind=SpanKind.CLIENT,
            links=[Link(route)] if route.is_valid else [],
            attributes={tel.ATTR_CORRELATION_ID: copy.correlation_id, ATTR_ROUTER: self._router},
        )

    def _done(self, copy: MirrorCopy, outcome: Any) -> None:
        answer, kind = candidate_answer(outcome, timeout_s=self._timeout_s)
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


def _traced(copy: MirrorCopy, span: trace.Span) -> Any:
    """The copy's request with its mirror span as the parent of the candidate's span."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return copy.request.with_headers(carrier)


def _no_batch_method(exc: BaseException) -> bool:
    """Ray Serve's answer to a call of a method the deployment does not have."""
    return f"'{BATCH_METHOD}' that does not exist" in str(exc)


class CandidateRaised(Exception):
    """The candidate's handler raised on a batched copy (its exception type is the message)."""


def _from_batch(answer: Any) -> Any:
    """One batched copy's outcome, as the per-copy path would have had it."""
    if isinstance(answer, BatchedAnswer):
        return RawAnswer(answer.result, answer.latency_s)
    if isinstance(answer, BatchedFailure) and answer.kind == "timeout":
        return MirrorTimeout(f"no answer within {answer.latency_s:g} s")
    if isinstance(answer, BatchedFailure):
        return CandidateRaised(answer.error_type or "error")
    return _not_a_batch_answer(answer, 1)


def _not_a_batch_answer(answers: Any, copies: int) -> RawAnswer:
    detail = f"the batch method answered {type(answers).__name__}, not one answer per copy"
    if isinstance(answers, list):
        detail = f"the batch method answered {len(answers)} answers for {copies} copies"
    return RawAnswer(answer=Answer(status="invalid", latency_s=None, detail=detail))


def candidate_answer(outcome: Any, *, timeout_s: float) -> tuple[Answer, str]:
    """The candidate's answer to a copy, and the outcome it counts as."""
    if isinstance(outcome, RawAnswer):
        answer = outcome.resolve()
        return answer, {"ok": "completed", "invalid": "invalid"}.get(answer.status, "failed")
    status: AnswerStatus = "error"
    if isinstance(outcome, MirrorTimeout):
        status = "timeout"
    elif isinstance(outcome, RoutingError):
        status = "unreachable"
    latency = timeout_s if status == "timeout" else None
    kind = "failed" if status == "error" else status
    detail = str(outcome) if isinstance(outcome, CandidateRaised) else type(outcome).__name__
    return failed(status, latency_s=latency, detail=detail), kind
