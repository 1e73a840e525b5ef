"""The router deployment: the shadow or canary app's HTTP ingress, in front of two monitored apps.

- ``POST /predict``: answered by the arm the route names
  (:func:`~serve_drift.routing.assignment.route_for`). In shadow mode a copy goes to the
  candidate after the incumbent has answered (:class:`~serve_drift.routing.mirror.MirrorQueue`);
  the client only ever sees the incumbent's answer, unchanged but for an
  ``X-Serve-Drift-Arm`` header naming the arm that answered.
- ``POST /labels`` (admin): posted to every arm, answers merged, accepted labels to the comparator.
- ``GET /healthz``: ready when every arm that answers clients is ready.
- ``GET /shadow``, ``GET /shadow/history``, ``POST /shadow/promote|rollback|resume`` (admin).
- anything else: passed to the arm that answers clients (e.g. ``/drift``, ``/admin/health``).

A shadow copy costs this replica an append to a bounded buffer: copies go to the comparator in
batches, and the comparator sends them to the candidate (:mod:`serve_drift.routing.shadowing`).

Spans: ``serve_drift.route`` per request (the arm's request span is its child); each shadow
copy gets a ``serve_drift.shadow.mirror`` span in a trace of its own, linked to the route span,
and the candidate's request span is that span's child. Both arms' request spans, events and
stored rows carry the same correlation ID.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Iterator, Mapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind
from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_drift.credentials import AdminCredential
from serve_drift.ingress.body import read_body
from serve_drift.ingress.errors import IngressError
from serve_drift.request_context import RequestIds, current_request_ids
from serve_drift.routing.aio import within
from serve_drift.routing.answers import failed
from serve_drift.routing.arms import ArmHandles, arm_apps
from serve_drift.routing.assignment import Route, route_for
from serve_drift.routing.changes import ACTIONS, ChangeAnswer, change_request
from serve_drift.routing.config import RouterConfig, RouterUpdate
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.http import (
    MAX_ADMIN_BODY_BYTES,
    RoutingError,
    error_response,
    json_object,
)
from serve_drift.routing.instruments import ATTR_ARM, ATTR_MODE, ATTR_ROUTER, router_instruments
from serve_drift.routing.labels import (
    accepted_labels,
    label_results,
    merge_answers,
    read_json_answer,
)
from serve_drift.routing.messages import RoutingState
from serve_drift.routing.shipping import (
    PendingCopy,
    PendingObservation,
    RawAnswer,
    copy_shipper,
    observation_shipper,
)
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

ROUTE_SPAN = "serve_drift.route"
MIRROR_SPAN = "serve_drift.shadow.mirror"
ARM_HEADER = "x-serve-drift-arm"
COMPARATOR_TIMEOUT_S = 5.0
LABEL_ATTEMPTS = 3
HEALTH_TIMEOUT_S = 2.0
FIRST_STATE_TIMEOUT_S = 1.0
APP_RETRY_S = 1.0


def _segments(request: Request) -> tuple[str, str]:
    parts = request.url.path.rstrip("/").rsplit("/", 2)
    return (parts[-2] if len(parts) > 1 else ""), parts[-1]


class ShadowRouter:
    """Serve deployment body; built by :func:`serve_drift.routing.app.build_app`."""

    def __init__(self, config: Mapping[str, Any], comparator: Any) -> None:
        self._base = RouterConfig.model_validate(dict(config))
        self._config = self._base
        if self._base.telemetry.configure_sdk:
            from serve_drift.telemetry.setup import configure_telemetry

            configure_telemetry(service_name=f"{self._base.name}-router")
        self._admin = AdminCredential.load(
            token_env=self._base.admin.token_env, token_file=self._base.admin.token_file
        )
        self._comparator = comparator
        self._arms = ArmHandles(arm_apps(self._base))
        self._state = RoutingState()
        self._state_known = False
        self._poller: asyncio.Task[None] | None = None
        self._shipper = observation_shipper(
            config=self._base.comparison.shipping, send=self._send_observations
        )
        mirror, shipping = self._base.mirror, self._base.comparison.shipping
        self._copies = copy_shipper(
            config=shipping.model_copy(
                update={
                    "max_queue": mirror.buffer_size,
                    "batch_size": mirror.batch_size,
                    "flush_interval_s": mirror.flush_interval_s,
                }
            ),
            send=self._send_copies,
        )
        self._instruments = router_instruments()
        self._too_large = 0

    async def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config``: ``mode``, ``mirror_fraction``, ``canary_share``
        (:class:`~serve_drift.routing.config.RouterUpdate`), applied to the YAML's config."""
        self._config = RouterUpdate.model_validate(dict(user_config)).apply(self._base)

    async def __call__(self, request: Request) -> Any:
        correlation_id = current_request_ids().correlation_id
        try:
            return await self._dispatch(request, correlation_id)
        except (RoutingError, IngressError) as error:
            return error_response(
                code=error.code,
                message=error.message,
                status=error.status,
                request_id=correlation_id,
            )

    async def _dispatch(self, request: Request, correlation_id: str) -> Any:
        parent, last = _segments(request)
        method = request.method
        if (method, last) == ("POST", "predict"):
            return await self._predict(request, correlation_id)
        if (method, last) == ("GET", "healthz"):
            return await self._health()
        if last == "shadow" or parent == "shadow":
            self._require_admin(request)
            return await self._shadow(request, method, last)
        if (method, last) == ("POST", "labels"):
            self._require_admin(request)
            return await self._labels(request, correlation_id)
        return await self._forward(request)

    def _require_admin(self, request: Request) -> None:
        if self._admin is None:
            raise RoutingError("admin_disabled", "no admin token is configured on the router")
        if not self._admin.verify_headers(request.headers):
            raise RoutingError("unauthorized", "this operation needs a valid admin bearer token")

    async def _body(self, request: Request, *, max_bytes: int | None = None) -> bytes:
        limit = self._base.max_body_bytes if max_bytes is None else max_bytes
        try:
            return await read_body(request, max_bytes=limit, timeout_s=self._base.body_timeout_s)
        except IngressError as error:
            if error.code == "empty_body":  # the arm decides whether an empty body is wrong
                return b""
            raise

    # --- serving ------------------------------------------------------------------------------

    async def _predict(self, request: Request, correlation_id: str) -> Any:
        body = await self._body(request)
        await self._ensure_state()
        route = route_for(
            self._config, self._state, correlation_id=correlation_id, headers=request.headers
        )
        with self._route_span(request, correlation_id, route):
            # The arm's request span becomes this span's child; a shadow copy links to it.
            replayed = ReplayedRequest.of(request, body).with_headers(_trace_carrier())
            result, answers = await self._answer(route, replayed)
        self._after_answer(route, replayed, answers)
        return _mark_arm(result, answers)

    async def _answer(
        self, route: Route, request: ReplayedRequest
    ) -> tuple[Any, dict[str, RawAnswer]]:
        started = time.perf_counter()
        try:
            result = await self._call_arm(route.serve, request)
        except Exception as exc:
            if not self._falls_back(route):
                raise
            failure = failed("error", latency_s=time.perf_counter() - started, detail=repr(exc))
            return await self._fallback(request, RawAnswer(answer=failure))
        raw = RawAnswer(result, time.perf_counter() - started)
        if self._falls_back(route) and getattr(result, "status_code", 200) >= 500:
            return await self._fallback(request, raw)
        self._count_request(route.serve, route.mode)
        return result, {route.serve: raw}

    async def _call_arm(self, arm: str, request: ReplayedRequest) -> Any:
        try:
            return await self._arms.call(arm, request)
        except RoutingError:
            raise
        except Exception as exc:
            if type(exc).__name__ == "BackPressureError":  # the arm's queue is full
                raise RoutingError("overloaded", f"the {arm} is at capacity; retry") from None
            raise

    def _falls_back(self, route: Route) -> bool:
        return (
            route.mode == "canary"
            and route.serve == "candidate"
            and self._config.canary.fallback_on_error
        )

    async def _fallback(
        self, request: ReplayedRequest, candidate: RawAnswer
    ) -> tuple[Any, dict[str, RawAnswer]]:
        """A canary candidate failed: the incumbent answers, the failure is recorded."""
        started = time.perf_counter()
        result = await self._call_arm("incumbent", request)
        self._count_request("incumbent", "canary_fallback")
        raw = RawAnswer(result, time.perf_counter() - started)
        return result, {"candidate": candidate, "incumbent": raw}

    def _count_request(self, arm: str, mode: str) -> None:
        self._instruments.requests.add(
            1, {ATTR_ROUTER: self._base.name, ATTR_ARM: arm, ATTR_MODE: mode}
        )

    def _after_answer(
        self, route: Route, request: ReplayedRequest, answers: dict[str, RawAnswer]
    ) -> None:
        """Copy or record, by appending to a bounded buffer; a failure here is logged and
        counted, never the client's."""
        try:
            ids = current_request_ids()
            if route.mirror and "incumbent" in answers:
                self._offer_copy(request, answers["incumbent"], ids)
            elif route.mode == "canary":
                self._shipper.offer(
                    PendingObservation(
                        correlation_id=ids.correlation_id,
                        timestamp=time.time(),
                        mode="canary",
                        served_by=route.serve if len(answers) == 1 else "incumbent",
                        incumbent=answers.get("incumbent"),
                        candidate=answers.get("candidate"),
                    )
                )
        except Exception:
            logger.exception("serve-drift: recording a routed request failed")

    def _offer_copy(self, request: ReplayedRequest, incumbent: RawAnswer, ids: RequestIds) -> None:
        # Copies hold the request body: one too large to copy is counted, never buffered.
        if len(request.replay_body) > self._base.mirror.max_copy_bytes:
            self._too_large += 1
            self._count_copy("dropped_too_large")
            return
        copy = PendingCopy(
            correlation_id=ids.correlation_id,
            internal_id=ids.internal_id,
            timestamp=time.time(),
            request=request,
            incumbent=incumbent,
        )
        if not self._copies.offer(copy):
            self._count_copy("dropped_router_buffer")

    def _count_copy(self, outcome: str) -> None:
        self._instruments.mirrored.add(1, {ATTR_ROUTER: self._base.name, "outcome": outcome})

    async def _send_observations(self, batch: list[Any]) -> object:
        return await self._comparator.ingest.remote(batch)

    async def _send_copies(self, batch: list[Any]) -> object:
        return await self._comparator.mirror.remote(batch)

    # --- routing state ------------------------------------------------------------------------

    async def _ensure_state(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.get_running_loop().create_task(self._poll())
        if not self._state_known:  # a restarted router must not undo a promotion
            with contextlib.suppress(Exception):
                await within(self._refresh_state(), FIRST_STATE_TIMEOUT_S)
            self._state_known = True

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self._base.state_poll_s)
            try:
                await self._refresh_state()
            except Exception as exc:
                logger.info("serve-drift: routing state not refreshed: %s", exc)

    async def _refresh_state(self) -> None:
        self._apply_state(await self._comparator.routing_state.remote())

    def _apply_state(self, state: RoutingState) -> None:
        if state.epoch >= self._state.epoch:
            self._state = state
            self._state_known = True

    def _serving_arms(self) -> list[str]:
        if self._state.route_all_to is not None:
            return [self._state.route_all_to]
        if self._config.mode == "canary" and self._config.canary.share > 0:
            return ["incumbent", "candidate"]
        return ["incumbent"]

    # --- the other routes --------------------------------------------------------------------

    async def _forward(self, request: Request) -> Any:
        """Routes the router does not own go to the arm that answers clients."""
        body = await self._body(request)
        await self._ensure_state()
        return await self._call_arm(self._serving_arms()[0], ReplayedRequest.of(request, body))

    async def _health(self) -> JSONResponse:
        await self._ensure_state()
        probe = ReplayedRequest.build(method="GET", path="/healthz")
        statuses = await asyncio.gather(
            *(self._arm_health(arm, probe) for arm in self._serving_arms())
        )
        ready = all(status == "ready" for status in statuses)
        return JSONResponse({"status": "ready" if ready else "degraded"})

    async def _arm_health(self, arm: str, probe: ReplayedRequest) -> str:
        try:
            result = await within(self._call_arm(arm, probe), HEALTH_TIMEOUT_S)
            answer = read_json_answer(result)
        except Exception:
            return "unreachable"
        return str(answer.get("status", "degraded")) if isinstance(answer, dict) else "degraded"

    async def _labels(self, request: Request, correlation_id: str) -> Any:
        body = await self._body(request)
        replayed = ReplayedRequest.of(request, body)
        arms = self._arms.names()
        results = await asyncio.gather(
            *(self._call_arm(arm, replayed) for arm in arms), return_exceptions=True
        )
        per_arm = [label_results(result) for result in results]
        if not any(per_arm):  # nobody judged the items (a malformed body): the incumbent says why
            if isinstance(results[0], BaseException):
                raise RoutingError("arm_unavailable", "the incumbent did not answer")
            return results[0]
        merged = merge_answers([answers or [] for answers in per_arm])
        await self._labels_to_comparator(body, merged)
        return JSONResponse({"request_id": correlation_id, "results": merged})

    async def _labels_to_comparator(self, body: bytes, merged: list[dict[str, Any]]) -> None:
        """The arms have the labels; the comparison gets them too, retried a few times, so a
        comparator busy at low priority delays them rather than losing them."""
        try:
            labels = accepted_labels(read_json_answer(body), merged)
        except ValueError:
            return
        for attempt in range(LABEL_ATTEMPTS):
            if not labels:
                return
            try:
                await within(self._comparator.submit_labels.remote(labels), COMPARATOR_TIMEOUT_S)
                return
            except Exception as exc:
                logger.warning("serve-drift: labels not passed to the comparator: %s", exc)
                await asyncio.sleep(0.5 * (attempt + 1))

    # --- admin: the shadow view and changes -------------------------------------------------

    async def _shadow(self, request: Request, method: str, last: str) -> JSONResponse:
        if (method, last) == ("GET", "shadow"):
            report = await self._comparator_call("report")
            return JSONResponse({**report.to_dict(), "routing": self._routing_view()})
        if (method, last) == ("GET", "history"):
            changes = await self._comparator_call("history", 50)
            return JSONResponse({"changes": [c.to_dict() for c in changes]})
        if method == "POST" and last in ACTIONS:
            body = await self._body(request, max_bytes=MAX_ADMIN_BODY_BYTES)
            return await self._change(last, json_object(body))
        raise RoutingError(
            "not_found",
            "shadow routes: GET /shadow, GET /shadow/history, "
            "POST /shadow/promote, /shadow/rollback, /shadow/resume",
        )

    async def _change(self, action: str, body: dict[str, Any]) -> JSONResponse:
        change = change_request(action, body)
        if change is None:
            return JSONResponse({"applied": False, "detail": "a resolved alert changes nothing"})
        answer: ChangeAnswer = await self._comparator_call("change", change)
        if answer.applied:
            self._apply_state(answer.state)
        status = 200 if answer.applied or answer.code == "no_change" else 409
        return JSONResponse(answer.to_dict(), status_code=status)

    async def _comparator_call(self, method: str, *args: Any) -> Any:
        try:
            call = getattr(self._comparator, method).remote(*args)
            return await within(call, COMPARATOR_TIMEOUT_S * 2)
        except Exception:
            raise RoutingError("comparator_unavailable", "the comparator did not answer") from None

    def _routing_view(self) -> dict[str, Any]:
        """What this router replica does now (the comparator knows the state, not the mode)."""
        return {
            "mode": self._config.mode,
            "mirror_fraction": self._config.mirror.fraction,
            "canary_share": self._config.canary.share,
            "state": self._state.to_dict(),
            "replica": {
                "pid": os.getpid(),
                "copies_shipped": self._copies.shipped,
                "copies_dropped": dict(self._copies.dropped),
                "copies_too_large": self._too_large,
                "copies_pending": self._copies.pending(),
                "observations_shipped": self._shipper.shipped,
                "observations_dropped": dict(self._shipper.dropped),
            },
        }

    @contextlib.contextmanager
    def _route_span(
        self, request: Request, correlation_id: str, route: Route
    ) -> Iterator[trace.Span]:
        parent = None
        if self._base.telemetry.trust_client_traceparent and "traceparent" in request.headers:
            parent = propagate.extract(request.headers)
        kind = SpanKind.SERVER if parent is not None else SpanKind.INTERNAL
        with tel.tracer().start_as_current_span(ROUTE_SPAN, context=parent, kind=kind) as span:
            span.set_attributes(
                {
                    tel.ATTR_CORRELATION_ID: correlation_id,
                    ATTR_ROUTER: self._base.name,
                    ATTR_MODE: route.mode,
                    ATTR_ARM: route.serve,
                    "serve_drift.shadow.mirrored": route.mirror,
                }
            )
            yield span


def _trace_carrier() -> dict[str, str]:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


def _mark_arm(result: Any, answers: Mapping[str, RawAnswer]) -> Any:
    """Say which arm answered (a header), on responses that have headers."""
    headers = getattr(result, "headers", None)
    if headers is not None and hasattr(headers, "__setitem__"):
        headers[ARM_HEADER] = "incumbent" if len(answers) > 1 else next(iter(answers))
    return result
