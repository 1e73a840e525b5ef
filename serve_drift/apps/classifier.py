"""Ready-made image classification app: ``POST /predict``, ``GET /drift``, ``GET /healthz``.

Start it with ``serve run deployments/digits.yaml`` or ``serve.run(build_app({...}))``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_drift import _env
from serve_drift.alerts.control import MaintenanceStatus
from serve_drift.alerts.endpoints import maintenance_endpoint
from serve_drift.apps.model_loading import LoadedModel, ModelSpec, load_model, model_version
from serve_drift.config import DriftConfig
from serve_drift.eventlog.labels import parse_labels
from serve_drift.ingress import (
    CHECK_NAMES,
    Admitted,
    IngressConfig,
    IngressError,
    IngressGate,
    InputProfile,
    QuarantineStore,
)
from serve_drift.monitor.deployment import monitored_app
from serve_drift.replica.decorator import monitored, replica_monitor
from serve_drift.replica.runtime import SENTINEL_SOURCE
from serve_drift.request_context import current_request_ids, mark_request, request_source
from serve_drift.telemetry import instruments as tel

MONITOR_TIMEOUT_S = 2.0
LABELS_TIMEOUT_S = 10.0
LABEL_SOURCES = ("feedback", "sentinel")
ALERT_STATES = ("open", "resolved", "all")
MAX_DRIFT_LIMIT = 500
_LIMIT = re.compile(r"[1-9][0-9]?|[1-4][0-9]{2}|500")  # 1..500, ASCII digits ("²".isdigit())
# Backpressure: a replica takes this many requests at once and each proxy queues this many
# more; beyond that Ray Serve's proxy answers 503 at once (with Retry-After) instead of
# letting latency grow without bound. Override under ``deployment:`` in the app's args.
DEFAULT_DEPLOYMENT_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 64,
}
DEFAULT_BACKPRESSURE = {"status_code": 503, "retry_after_s": 1}


class AppArgs(BaseModel):
    """The ``args`` of the app in a Serve YAML config."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = ModelSpec()
    drift: dict[str, Any] = Field(default_factory=dict)
    deployment: dict[str, Any] = Field(default_factory=dict)
    monitor: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(5, ge=1)
    ingress: IngressConfig = Field(default_factory=IngressConfig)


def model_input_shape(spec: ModelSpec) -> tuple[int, int, int] | None:
    """What a client that preprocesses itself must send (per input, without the batch);
    ``None``: images only (a factory model that names no ``input_shape``)."""
    if spec.input_shape is not None:
        return spec.input_shape
    if spec.source == "digits":
        from serve_drift.models.digits import IMAGE_SIZE

        return (1, IMAGE_SIZE, IMAGE_SIZE)
    return None if spec.source == "factory" else (3, spec.image_size, spec.image_size)


@functools.cache
def digits_input_profile() -> InputProfile:
    """Pixel statistics of the images the digits reference set was embedded from."""
    from serve_drift.models.default_reference import DATA_VERSION
    from serve_drift.models.digits import split_digits

    return InputProfile.from_images(split_digits(seed=0).reference_images, source=DATA_VERSION)


def _input_profile(spec: ModelSpec, config: IngressConfig) -> InputProfile | None:
    path = config.plausibility.out_of_profile.profile_path
    if path:
        return InputProfile.load(path)
    return digits_input_profile() if spec.source == "digits" else None


def _quarantine_store(config: IngressConfig) -> QuarantineStore | None:
    """Only when some check quarantines: otherwise nothing is ever written to disk."""
    checks = config.plausibility
    if not any(checks.check(name).action == "quarantine" for name in CHECK_NAMES):
        return None
    settings = config.quarantine
    return QuarantineStore(
        directory=Path(settings.directory or _env.cache_dir() / "quarantine"),
        max_items=settings.max_items,
        max_bytes=settings.max_bytes,
        max_age_s=settings.max_age_s,
    )


def _error_response(body: dict[str, Any], status: int) -> JSONResponse:
    return JSONResponse(body, status_code=status)


class ImageClassifier:
    """Serves one image classifier; drift monitoring is added by ``build_app``."""

    def __init__(
        self,
        model: Mapping[str, Any],
        *,
        top_k: int = 5,
        ingress: Mapping[str, Any] | None = None,
    ) -> None:
        spec = ModelSpec.model_validate(dict(model))
        loaded: LoadedModel = load_model(spec)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        self.loaded = loaded
        self.top_k = min(top_k, len(loaded.labels))
        config = IngressConfig.model_validate(dict(ingress or {}))
        self.gate = IngressGate(
            config=config,
            input_shape=model_input_shape(spec),
            profile=_input_profile(spec, config),
            quarantine=_quarantine_store(config),
            labels=self._metric_labels(),
        )

    def _metric_labels(self) -> dict[str, str]:
        """The model name and version every serve-drift metric carries (from the monitoring
        config when the class is monitored, which is how ``build_app`` serves it)."""
        config: DriftConfig | None = getattr(type(self), "serve_drift_config", None)
        name = config.model_name if config is not None else "model"
        version = config.model_version if config is not None else self.loaded.version
        return {tel.ATTR_MODEL_NAME: name, tel.ATTR_MODEL_VERSION: version}

    async def __call__(self, request: Request) -> Response:
        correlation_id = current_request_ids().correlation_id
        try:
            return await self._route(request, correlation_id)
        except Exception as exc:  # never a traceback, a path or a library message to a client
            return _error_response(self.gate.internal_error(exc, request_id=correlation_id), 500)

    async def _route(self, request: Request, correlation_id: str) -> Response:
        # Match the last path segments, so the app works under any route_prefix.
        segments = request.url.path.rstrip("/").rsplit("/", 2)
        route = (request.method, segments[-1])
        if route == ("POST", "predict"):
            return await self.predict(request)
        if route == ("GET", "healthz"):
            return await self._health()
        handler = _admin_handler(self, request.method, request.url.path)
        if handler is None:
            error = IngressError(
                "not_found",
                "try POST /predict or GET /healthz; admin: GET /drift, POST /labels, "
                "GET /admin/health, GET|POST|DELETE /admin/maintenance, GET /admin/alerts[/<id>]",
            )
            return self._reject(error, correlation_id)
        refused = self._refuse_unless_admin(request)
        if refused is not None:
            return self._reject(refused, correlation_id)
        return await handler(request, correlation_id)

    def _refuse_unless_admin(self, request: Request) -> IngressError | None:
        """Admin operations need the bearer credential; the answer never says which part of
        a wrong one was wrong."""
        admin = replica_monitor(self).admin
        if admin is None:
            return IngressError(
                "admin_disabled",
                "admin operations are disabled: no admin token is configured on the replicas",
            )
        if not admin.verify_headers(request.headers):
            return IngressError("unauthorized", "this operation needs a valid admin bearer token")
        return None

    def _reject(self, error: IngressError, correlation_id: str) -> JSONResponse:
        response: JSONResponse = self.gate.error_response(error, request_id=correlation_id)
        return response

    async def predict(self, request: Request) -> Response:
        """The monitored method: its span is the current span while ingress runs."""
        ids = current_request_ids()
        if request_source(request.headers) == SENTINEL_SOURCE and not replica_monitor(
            self
        ).is_sentinel(request.headers):
            # Sentinel runs stay out of drift windows: only the admin credential may ask that.
            mark_request(outcome="rejected")
            error = IngressError("unauthorized", "sentinel runs need a valid admin bearer token")
            return self._reject(error, ids.correlation_id)
        try:
            admitted = await self.gate.admit(
                request, correlation_id=ids.correlation_id, internal_id=ids.internal_id
            )
            body = self._answer(admitted, ids.correlation_id)
        except IngressError as error:
            return self._reject(error, ids.correlation_id)
        except Exception as exc:
            body = self.gate.internal_error(exc, request_id=ids.correlation_id)
            return _error_response(body, 500)
        return JSONResponse(body)

    def _answer(self, admitted: Admitted, correlation_id: str) -> dict[str, Any]:
        predictions = self._classify(admitted)
        for prediction, row in zip(predictions, admitted.verdict.rows, strict=True):
            if row.flags:
                prediction["flags"] = list(row.flags)
        body: dict[str, Any] = {"model_version": self.loaded.version, "request_id": correlation_id}
        body.update(predictions[0] if len(predictions) == 1 else {"predictions": predictions})
        return body

    def _model_input(self, admitted: Admitted) -> torch.Tensor:
        tensor = admitted.payload.tensor
        if tensor is not None:
            return torch.from_numpy(np.ascontiguousarray(tensor))
        return self.loaded.preprocess([decoded.image for decoded in admitted.payload.images])

    @torch.no_grad()
    def _classify(self, admitted: Admitted) -> list[dict[str, Any]]:
        logits = self.model(self._model_input(admitted).to(self.device))
        probs, indices = torch.softmax(logits.float(), dim=-1).topk(self.top_k, dim=-1)
        return [
            self._prediction(p, i) for p, i in zip(probs.tolist(), indices.tolist(), strict=True)
        ]

    def _prediction(self, probs: list[float], indices: list[int]) -> dict[str, Any]:
        top_k = [
            {"class_index": i, "label": self.loaded.labels[i], "confidence": p}
            for i, p in zip(indices, probs, strict=True)
        ]
        return {**top_k[0], "top_k": top_k}

    async def _drift(self, request: Request, correlation_id: str) -> Response:
        limit = request.query_params.get("limit", "50")
        if not _LIMIT.fullmatch(limit):
            error = IngressError(
                "invalid_query", f"limit must be a whole number 1..{MAX_DRIFT_LIMIT}"
            )
            return self._reject(error, correlation_id)
        monitor = replica_monitor(self)
        try:
            results = await asyncio.wait_for(
                monitor.monitor_call("results", int(limit)),
                MONITOR_TIMEOUT_S,
            )
        except Exception:
            error = IngressError("monitor_unavailable", "the drift monitor did not answer")
            return self._reject(error, correlation_id)
        return JSONResponse(
            {"model_version": self.loaded.version, "results": [r.to_dict() for r in results]}
        )

    async def _labels(self, request: Request, correlation_id: str) -> Response:
        """Ground truth, later: ``{"correlation_id": "...", "label": 3}`` or ``{"labels": [...]}``.
        Answers one status per item (``accepted``, ``unknown_correlation_id``, ...)."""
        source = request.query_params.get("source", "feedback")
        if source not in LABEL_SOURCES:
            invalid = IngressError(
                "invalid_query", f"source must be one of {', '.join(LABEL_SOURCES)}"
            )
            return self._reject(invalid, correlation_id)
        try:
            items = parse_labels(
                await self.gate.read_json(request),
                source=source,
                num_classes=len(self.loaded.labels),
            )
        except IngressError as error:
            return self._reject(error, correlation_id)
        except ValueError as exc:
            code = "too_many_labels" if "at most" in str(exc) else "invalid_labels"
            return self._reject(IngressError(code, str(exc)), correlation_id)
        try:
            answers = await asyncio.wait_for(
                replica_monitor(self).monitor_call("submit_labels", items), LABELS_TIMEOUT_S
            )
        except Exception:
            unavailable = IngressError(
                "event_store_unavailable", "labels could not be stored; retry"
            )
            return self._reject(unavailable, correlation_id)
        if answers is None:
            disabled = IngressError("event_store_unavailable", "the event log is disabled")
            return self._reject(disabled, correlation_id)
        return JSONResponse(
            {"request_id": correlation_id, "results": [a.to_dict() for a in answers]}
        )

    async def _maintenance(self, request: Request, correlation_id: str) -> Response:
        """``/admin/maintenance``: the admin check is done; the handler validates the body."""
        control = _MonitorMaintenance(replica_monitor(self))
        try:
            return await maintenance_endpoint(request, control=control, check_admin=_admitted)
        except Exception:
            error = IngressError("monitor_unavailable", "the drift monitor did not answer")
            return self._reject(error, correlation_id)

    async def _alerts(self, request: Request, correlation_id: str) -> Response:
        """``GET /admin/alerts?state=open|resolved|all&limit=``: incidents, newest first."""
        state = request.query_params.get("state", "open")
        limit = request.query_params.get("limit", "50")
        if state not in ALERT_STATES or not _LIMIT.fullmatch(limit):
            error = IngressError(
                "invalid_query",
                f"state is one of {', '.join(ALERT_STATES)}; limit 1..{MAX_DRIFT_LIMIT}",
            )
            return self._reject(error, correlation_id)
        wanted = None if state == "all" else state
        try:
            incidents = await asyncio.wait_for(
                replica_monitor(self).monitor_call("alerts", wanted, int(limit)),
                MONITOR_TIMEOUT_S,
            )
        except Exception:
            error = IngressError("monitor_unavailable", "the drift monitor did not answer")
            return self._reject(error, correlation_id)
        return JSONResponse({"state": state, "incidents": [i.to_dict() for i in incidents]})

    async def _alert(self, request: Request, correlation_id: str) -> Response:
        """``GET /admin/alerts/<id or unique prefix>``: the incident and its transitions."""
        incident_id = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        try:
            found = await asyncio.wait_for(
                replica_monitor(self).monitor_call("alert", incident_id), MONITOR_TIMEOUT_S
            )
        except Exception:
            error = IngressError("monitor_unavailable", "the drift monitor did not answer")
            return self._reject(error, correlation_id)
        if found is None:
            missing = IngressError("not_found", "no incident has that id (or the prefix is shared)")
            return self._reject(missing, correlation_id)
        return JSONResponse(found.to_dict())

    async def _health(self) -> Response:
        """Public: ready or degraded, nothing more (details are an admin operation)."""
        status, _ = await self._status()
        return JSONResponse({"status": status})

    async def _admin_health(self, request: Request, correlation_id: str) -> Response:
        status, details = await self._status()
        return JSONResponse({"status": status, **details})

    async def _status(self) -> tuple[str, dict[str, Any]]:
        monitor = replica_monitor(self)
        replica = monitor.replica_health()
        try:
            health = await asyncio.wait_for(monitor.monitor_call("health"), MONITOR_TIMEOUT_S)
            monitor_health = health.to_dict()
        except Exception as exc:
            monitor_health = {
                "status": "unreachable",
                "reasons": [f"drift monitor did not answer ({type(exc).__name__})"],
            }
        reasons = [*monitor_health["reasons"], *replica.reasons]
        ready = monitor_health["status"] == "ready" and not replica.reasons
        details = {
            "reasons": reasons,
            "model_version": self.loaded.version,
            "replica": replica.to_dict(),
            "monitor": monitor_health,
            "ingress": self._ingress_health(),
        }
        return ("ready" if ready else "degraded"), details

    def _ingress_health(self) -> dict[str, Any]:
        profile = self.gate.profile
        store = self.gate.quarantine
        return {
            "input_profile": None if profile is None else profile.source,
            "quarantine_directory": None if store is None else str(store.directory),
        }


def _admin_handler(app: ImageClassifier, method: str, path: str) -> Any:
    """The admin operation a path names (its last segments, so any route prefix works)."""
    segments = path.rstrip("/").split("/")
    last = segments[-1]
    parent = segments[-2] if len(segments) > 1 else ""
    if parent == "admin":
        by_name = {
            ("GET", "health"): app._admin_health,
            ("GET", "alerts"): app._alerts,
        }
        if last == "maintenance":  # GET, POST and DELETE: the handler answers 405 to the rest
            return app._maintenance
        return by_name.get((method, last))
    if method == "GET" and segments[-3:-1] == ["admin", "alerts"]:
        return app._alert
    return {("GET", "drift"): app._drift, ("POST", "labels"): app._labels}.get((method, last))


def _admitted(request: Request) -> bool:
    return True  # the app checked the admin credential before routing here


class _MonitorMaintenance:
    """Maintenance operations as calls on the drift monitor (they run on its alert lane)."""

    def __init__(self, monitor: Any) -> None:
        self._monitor = monitor

    async def _call(self, operation: str, **kwargs: Any) -> MaintenanceStatus:
        call = self._monitor.monitor_call("maintenance", operation, **kwargs)
        status: MaintenanceStatus = await asyncio.wait_for(call, MONITOR_TIMEOUT_S)
        return status

    async def status(self) -> MaintenanceStatus:
        return await self._call("status")

    async def start(self, *, who: str, why: str, duration_s: float) -> MaintenanceStatus:
        return await self._call("start", who=who, why=why, duration_s=duration_s)

    async def stop(self, *, who: str) -> MaintenanceStatus:
        return await self._call("stop", who=who)


def _drift_config(args: AppArgs) -> DriftConfig:
    drift = dict(args.drift)
    drift.setdefault("model_name", args.model.name)
    if args.model.source == "digits":
        from serve_drift.models.default_reference import ensure_digits_reference

        path, version = ensure_digits_reference()
        drift.setdefault("reference_path", str(path))
        drift.setdefault("model_version", version)
    else:
        drift.setdefault("model_version", model_version(args.model))
    return DriftConfig.model_validate(drift)


def build_app(args: Mapping[str, Any]) -> Any:
    """Serve application builder (``import_path: serve_drift.apps.classifier:build_app``)."""
    from ray import serve

    parsed = AppArgs.model_validate(dict(args))
    config = _drift_config(parsed)
    cls = monitored(config, methods=("predict",))(ImageClassifier)
    deployment: Any = serve.deployment(cls)
    deployment = deployment.options(**_deployment_options(parsed))
    return monitored_app(
        deployment,
        parsed.model.model_dump(mode="json"),
        top_k=parsed.top_k,
        ingress=parsed.ingress.model_dump(mode="json"),
        monitor_options=parsed.monitor,
    )


def _deployment_options(args: AppArgs) -> dict[str, Any]:
    from ray import serve

    options: dict[str, Any] = {"name": "ImageClassifier", **DEFAULT_DEPLOYMENT_OPTIONS}
    # Ray Serve 2.60 added the backpressure answer's status and Retry-After; older Rays
    # answer a plain 503 and would reject the unknown option.
    if "backpressure_config" in inspect.signature(serve.deployment).parameters:
        options["backpressure_config"] = DEFAULT_BACKPRESSURE
    return {**options, **args.deployment}
