"""The ingress gate: read, decode and check a request before any forward pass, and record why
a request was refused (metrics and the current span; never the payload)."""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from serve_drift.ingress.body import StreamingRequest, read_body
from serve_drift.ingress.config import IngressConfig
from serve_drift.ingress.errors import INTERNAL_ERROR, IngressError, error_body
from serve_drift.ingress.jsonscan import load_json
from serve_drift.ingress.payload import Payload, decode_payload
from serve_drift.ingress.plausibility import Finding, evaluate
from serve_drift.ingress.policy import Verdict, block_message, decide
from serve_drift.ingress.profile import InputProfile
from serve_drift.ingress.quarantine import QuarantineStore
from serve_drift.ingress.stats import summarise_thumbnails, thumbnail
from serve_drift.request_context import PendingStats, current_request_ids, mark_request
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

# Small bodies decode faster than a hop to a worker thread; large ones must not stall the
# replica's event loop (other requests' bodies, health checks) while Pillow works.
INLINE_DECODE_MAX_BYTES = 64 * 1024
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}


@dataclass(frozen=True)
class Admitted:
    """A request that passed: its inputs and what the checks said about each."""

    payload: Payload
    verdict: Verdict


class IngressGate:
    """What the ready-made app runs before its forward pass, in one call for your handler too.

    In a ``@monitored`` deployment's ``__init__``: ``self.gate = IngressGate(input_shape=(3,
    224, 224))``; in its handler::

        try:
            admitted = await self.gate.admit(request)  # decoded, checked, statistics marked
        except IngressError as error:
            return self.gate.error_response(error)     # the stable JSON error contract

    >>> IngressGate(input_shape=(1, 8, 8)).config.limits.max_batch
    64
    """

    def __init__(
        self,
        *,
        config: IngressConfig | None = None,
        input_shape: Sequence[int] | None = None,
        profile: InputProfile | None = None,
        quarantine: QuarantineStore | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config or IngressConfig()
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.profile = profile
        self.quarantine = quarantine
        self._labels = dict(labels or {})
        self._instruments = tel.ingress_instruments()
        self._writes: set[asyncio.Future[Any]] = set()

    async def admit(
        self,
        request: StreamingRequest,
        *,
        correlation_id: str | None = None,
        internal_id: str | None = None,
    ) -> Admitted:
        """Decoded, checked inputs, or :class:`IngressError` (answer it with
        :meth:`error_response`). In a monitored request, each image's statistics and flags are
        marked on its event. The IDs default to the request's own."""
        if correlation_id is None or internal_id is None:
            ids = current_request_ids()
            correlation_id, internal_id = ids.correlation_id, ids.internal_id
        limits = self.config.limits
        body = await read_body(
            request, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s
        )
        content_type = request.headers.get("content-type", "")
        if len(body) <= INLINE_DECODE_MAX_BYTES:
            payload, findings = self._decode_and_check(content_type, body)
        else:
            payload, findings = await asyncio.to_thread(self._decode_and_check, content_type, body)
        verdict = decide(findings, rows=len(payload), config=self.config.plausibility)
        self._record_findings(findings)
        self._keep_for_review(payload, verdict, findings, correlation_id, internal_id)
        _mark_rows(verdict)
        if verdict.blocked is not None:
            raise IngressError(
                "implausible_input", block_message(verdict.blocked, batch=len(payload) > 1)
            )
        self._mark_input_stats(payload)
        return Admitted(payload=payload, verdict=verdict)

    def _mark_input_stats(self, payload: Payload) -> None:
        """Per-image statistics for the event log, only for monitored requests (nobody else
        would record them). Only a thumbnail is taken here: the replica summarises a whole
        shipping batch at once, off the request path, and only the rows it ships."""
        side = self.config.input_stats_max_side
        if not side or not mark_request():
            return
        for row, decoded in enumerate(payload.images):
            pending = PendingStats(
                item=thumbnail(np.asarray(decoded.image), max_side=side),
                summarise=summarise_thumbnails,
            )
            mark_request(row=row, input_stats=pending)

    def error_response(self, error: IngressError, *, request_id: str | None = None) -> Any:
        """The refusal as a Starlette ``JSONResponse``: counted, on the span, stable body."""
        from starlette.responses import JSONResponse

        request_id = request_id or current_request_ids().correlation_id
        response = JSONResponse(self.reject(error, request_id=request_id), error.status)
        if error.code == "unauthorized":
            response.headers["www-authenticate"] = 'Bearer realm="serve-drift"'
        return response

    async def read_json(self, request: StreamingRequest) -> Any:
        """A JSON body under the same size, time and nesting limits as ``admit`` applies."""
        limits = self.config.limits
        body = await read_body(
            request, max_bytes=limits.max_body_bytes, timeout_s=limits.body_timeout_s
        )
        return load_json(body, max_depth=limits.max_json_depth)

    def _decode_and_check(self, content_type: str, body: bytes) -> tuple[Payload, list[Finding]]:
        payload = decode_payload(
            content_type=content_type, body=body, config=self.config, input_shape=self.input_shape
        )
        # Tensors are model inputs already normalised by the client: pixel checks do not apply.
        images = [decoded.image for decoded in payload.images]
        findings = evaluate(images, config=self.config.plausibility, profile=self.profile)
        return payload, findings

    def reject(self, error: IngressError, *, request_id: str) -> dict[str, Any]:
        """Count the rejection, put it on the current span; returns the JSON error body."""
        self._instruments.rejected.add(1, {**self._labels, "code": error.code})
        span = trace.get_current_span()
        span.set_attribute(tel.ATTR_INGRESS_ERROR_CODE, error.code)
        span.set_attribute(tel.ATTR_HTTP_STATUS, error.status)
        span.add_event("serve_drift.ingress.rejected", {"code": error.code})
        if error.status >= 500:  # 4xx is the client's doing, not a failed server span
            span.set_status(Status(StatusCode.ERROR, error.code))
        mark_request(outcome="rejected" if error.status < 500 else "error")
        return error_body(error, request_id=request_id)

    def internal_error(self, exc: BaseException, *, request_id: str) -> dict[str, Any]:
        """An unexpected exception: logged by type and stack only (its message may quote the
        payload), counted, answered with a generic 500 body."""
        frames = "".join(traceback.format_tb(exc.__traceback__))
        logger.error(
            "serve-drift: unexpected %s while handling a request\n%s", type(exc).__name__, frames
        )
        return self.reject(INTERNAL_ERROR, request_id=request_id)

    def _record_findings(self, findings: Sequence[Finding]) -> None:
        checks = sorted({f.check for f in findings})
        if checks:
            trace.get_current_span().set_attribute(tel.ATTR_INGRESS_FLAGS, checks)
        for finding in findings:
            action = self.config.plausibility.check(finding.check).action
            self._instruments.flagged.add(
                1, {**self._labels, "check": finding.check, "action": action}
            )

    def _keep_for_review(
        self,
        payload: Payload,
        verdict: Verdict,
        findings: Sequence[Finding],
        correlation_id: str,
        internal_id: str,
    ) -> None:
        for row, row_verdict in enumerate(verdict.rows):
            if not row_verdict.quarantine or row >= len(payload.images):
                continue
            decoded = payload.images[row]
            metadata = {
                **self._labels,
                "correlation_id": correlation_id,
                "internal_id": internal_id,
                "row": row,
                "served": verdict.blocked is None,
                "checks": [{"check": f.check, "value": f.value} for f in findings if f.row == row],
                "format": decoded.format,
                "source_mode": decoded.source_mode,
                "frames": decoded.frames,
                "size": list(decoded.image.size),
            }
            self._store(decoded.raw, _EXTENSIONS.get(decoded.format, "bin"), metadata)

    def _store(self, data: bytes, extension: str, metadata: dict[str, Any]) -> None:
        """Off the request path, bounded: beyond ``max_pending_writes`` the input is not kept."""
        if (
            self.quarantine is None
            or len(self._writes) >= self.config.quarantine.max_pending_writes
        ):
            self._count_quarantine("dropped")
            return
        write = asyncio.ensure_future(
            asyncio.to_thread(
                self.quarantine.put, data=data, extension=extension, metadata=metadata
            )
        )
        self._writes.add(write)
        write.add_done_callback(self._write_done)

    def _write_done(self, write: asyncio.Future[Any]) -> None:
        self._writes.discard(write)
        failed = write.cancelled() or write.exception() is not None
        if failed:
            logger.warning("serve-drift: could not write a quarantined input")
        self._count_quarantine("failed" if failed else "stored")

    def _count_quarantine(self, outcome: str) -> None:
        self._instruments.quarantined.add(1, {**self._labels, "outcome": outcome})

    async def drain(self) -> None:
        """Wait for quarantine writes in flight (tests, shutdown)."""
        if self._writes:
            await asyncio.gather(*self._writes, return_exceptions=True)


def _mark_rows(verdict: Verdict) -> None:
    for row, row_verdict in enumerate(verdict.rows):
        if row_verdict.flags:
            mark_request(
                flags=row_verdict.flags, exclude_from_drift=row_verdict.exclude_from_drift, row=row
            )
