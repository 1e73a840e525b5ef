"""Ready-made image classification app: ``POST /predict``, ``GET /drift``, ``GET /healthz``.

Start it with ``serve run deployments/digits.yaml`` or ``serve.run(build_app({...}))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from serve_drift._config import DriftConfig
from serve_drift._deploy import monitored_app
from serve_drift._ids import current_request_ids
from serve_drift._ingress import IngressError, decode_images
from serve_drift._wrap import monitored, replica_monitor
from serve_drift.apps._models import LoadedModel, ModelSpec, load_model, model_version

MONITOR_TIMEOUT_S = 2.0


class AppArgs(BaseModel):
    """The ``args`` of the app in a Serve YAML config."""

    model_config = ConfigDict(extra="forbid")

    model: ModelSpec = ModelSpec()
    drift: dict[str, Any] = Field(default_factory=dict)
    deployment: dict[str, Any] = Field(default_factory=dict)
    monitor: dict[str, Any] = Field(default_factory=dict)
    top_k: int = Field(5, ge=1)


def error_response(error: IngressError, correlation_id: str) -> JSONResponse:
    body = {"error": {"code": error.code, "message": error.message, "request_id": correlation_id}}
    return JSONResponse(body, status_code=error.status)


class ImageClassifier:
    """Serves one image classifier; drift monitoring is added by ``build_app``."""

    def __init__(self, model: Mapping[str, Any], top_k: int = 5) -> None:
        loaded: LoadedModel = load_model(ModelSpec.model_validate(dict(model)))
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(self.device).eval()
        self.loaded = loaded
        self.top_k = min(top_k, len(loaded.labels))

    async def __call__(self, request: Request) -> Response:
        # Match the last path segment, so the app works under any route_prefix.
        route = (request.method, request.url.path.rstrip("/").rsplit("/", 1)[-1])
        if route == ("POST", "predict"):
            return await self.predict(request)
        if route == ("GET", "drift"):
            return await self._drift(request)
        if route == ("GET", "healthz"):
            return await self._health()
        return JSONResponse(
            {
                "error": {
                    "code": "not_found",
                    "message": "try POST /predict, GET /drift or GET /healthz",
                }
            },
            status_code=404,
        )

    async def predict(self, request: Request) -> Response:
        correlation_id = current_request_ids().correlation_id
        try:
            images = decode_images(
                content_type=request.headers.get("content-type", ""), body=await request.body()
            )
        except IngressError as error:
            return error_response(error, correlation_id)
        predictions = self._classify(images)
        body: dict[str, Any] = {"model_version": self.loaded.version, "request_id": correlation_id}
        body.update(predictions[0] if len(predictions) == 1 else {"predictions": predictions})
        return JSONResponse(body)

    @torch.no_grad()
    def _classify(self, images: list[Any]) -> list[dict[str, Any]]:
        logits = self.model(self.loaded.preprocess(images).to(self.device))
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

    async def _drift(self, request: Request) -> Response:
        limit = int(request.query_params.get("limit", "50"))
        monitor = replica_monitor(self)
        try:
            results = await asyncio.wait_for(
                monitor.monitor_call("results", max(1, min(limit, 500))), MONITOR_TIMEOUT_S
            )
        except Exception:
            return JSONResponse(
                {
                    "error": {
                        "code": "monitor_unavailable",
                        "message": "the drift monitor did not answer",
                    }
                },
                status_code=503,
            )
        return JSONResponse({"model_version": self.loaded.version, "results": results})

    async def _health(self) -> Response:
        monitor = replica_monitor(self)
        replica = monitor.replica_health()
        try:
            monitor_health = await asyncio.wait_for(
                monitor.monitor_call("health"), MONITOR_TIMEOUT_S
            )
        except Exception as exc:
            monitor_health = {
                "status": "unreachable",
                "reasons": [f"drift monitor did not answer ({type(exc).__name__})"],
            }
        reasons = list(monitor_health.get("reasons", [])) + replica["reasons"]
        status = (
            "ready"
            if monitor_health.get("status") == "ready" and not replica["reasons"]
            else "degraded"
        )
        return JSONResponse(
            {
                "status": status,
                "reasons": reasons,
                "model_version": self.loaded.version,
                "replica": replica,
                "monitor": monitor_health,
            }
        )


def _drift_config(args: AppArgs) -> DriftConfig:
    drift = dict(args.drift)
    drift.setdefault("model_name", args.model.arch or args.model.source)
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
    options = {
        "name": "ImageClassifier",
        "max_ongoing_requests": 32,
        "max_queued_requests": 256,
        **parsed.deployment,
    }
    deployment: Any = serve.deployment(cls)
    deployment = deployment.options(**options)
    return monitored_app(
        deployment,
        parsed.model.model_dump(mode="json"),
        top_k=parsed.top_k,
        monitor_options=parsed.monitor,
    )
