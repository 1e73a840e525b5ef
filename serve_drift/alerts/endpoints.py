"""HTTP handlers for the app to mount: maintenance and open alerts, both admin operations.

They take a Starlette request and answer JSON in the app's error contract
(``{"error": {"code", "message", "request_id"}}``). Nothing is reachable without the app's
admin credential check: ``check_admin(request)`` (sync or async) must return true, else the
answer is 401 ``unauthorized``. Suggested paths (the CLI uses them):
:data:`MAINTENANCE_PATH` and :data:`ALERTS_PATH`.

- ``GET  /admin/maintenance``: the status;
- ``POST /admin/maintenance`` ``{"who", "why", "duration_s"}`` or ``{"who", "why", "until"}``
  (Unix seconds): start (at most 14 days);
- ``DELETE /admin/maintenance?who=...``: stop;
- ``GET  /admin/alerts``: the open incidents.

``control`` is a :class:`~serve_drift.alerts.control.MaintenanceService` or anything with the
same methods, returning values or awaitables (a Ray Serve handle's ``.remote()`` calls do).

>>> import asyncio, httpx
>>> from starlette.applications import Starlette
>>> from starlette.routing import Route
>>> from serve_drift.alerts import AlertPipeline, AlertsConfig, MaintenanceService
>>> pipeline = AlertPipeline.from_config(AlertsConfig(sinks=()), model_name="m", started_at=0.0)
>>> async def route(request):
...     return await maintenance_endpoint(
...         request, control=MaintenanceService(pipeline), check_admin=lambda r: False)
>>> app = Starlette(routes=[Route(MAINTENANCE_PATH, route)])
>>> async def status_code():
...     transport = httpx.ASGITransport(app=app)
...     async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
...         return (await client.get(MAINTENANCE_PATH)).status_code
>>> asyncio.run(status_code())  # no admin credential
401
"""

from __future__ import annotations

import inspect
import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from starlette.requests import Request
from starlette.responses import JSONResponse

from serve_drift.alerts.control import MaintenanceStatus
from serve_drift.alerts.incidents import Incident
from serve_drift.alerts.maintenance import MAX_MAINTENANCE_S

__all__ = [
    "ALERTS_PATH",
    "MAINTENANCE_PATH",
    "AdminCheck",
    "alerts_endpoint",
    "maintenance_endpoint",
]

MAINTENANCE_PATH = "/admin/maintenance"
ALERTS_PATH = "/admin/alerts"
_MAX_BODY = 8192

AdminCheck = Callable[[Request], bool | Awaitable[bool]]


class MaintenanceControl(Protocol):
    def status(self) -> MaintenanceStatus | Awaitable[MaintenanceStatus]: ...

    def start(
        self, *, who: str, why: str, duration_s: float
    ) -> MaintenanceStatus | Awaitable[MaintenanceStatus]: ...

    def stop(self, *, who: str) -> MaintenanceStatus | Awaitable[MaintenanceStatus]: ...


class _BadRequest(Exception):
    pass


async def _resolve(value: Any) -> Any:
    return await value if inspect.isawaitable(value) else value


def _error(request: Request, status: int, code: str, message: str) -> JSONResponse:
    request_id = request.headers.get("x-request-id", "")
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    return JSONResponse(body, status_code=status)


async def _admitted(request: Request, check_admin: AdminCheck) -> bool:
    return bool(await _resolve(check_admin(request)))


async def maintenance_endpoint(
    request: Request, *, control: MaintenanceControl, check_admin: AdminCheck
) -> JSONResponse:
    """``GET``/``POST``/``DELETE`` maintenance (see the module docstring)."""
    if not await _admitted(request, check_admin):
        return _error(request, 401, "unauthorized", "maintenance needs the admin credential")
    try:
        if request.method == "GET":
            status = await _resolve(control.status())
        elif request.method == "POST":
            who, why, duration_s = _start_request(await _json(request))
            status = await _resolve(control.start(who=who, why=why, duration_s=duration_s))
        elif request.method == "DELETE":
            status = await _resolve(control.stop(who=_who(request.query_params.get("who"))))
        else:
            return _error(request, 405, "method_not_allowed", "use GET, POST or DELETE")
    except _BadRequest as exc:
        return _error(request, 400, "invalid_maintenance", str(exc))
    return JSONResponse(status.to_dict())


async def alerts_endpoint(
    request: Request,
    *,
    open_incidents: Callable[[], Sequence[Incident] | Awaitable[Sequence[Incident]]],
    check_admin: AdminCheck,
) -> JSONResponse:
    """``GET``: the open incidents, newest first."""
    if not await _admitted(request, check_admin):
        return _error(request, 401, "unauthorized", "alerts need the admin credential")
    incidents = await _resolve(open_incidents())
    ordered = sorted(incidents, key=lambda i: i.opened_at, reverse=True)
    return JSONResponse({"open": [incident.to_dict() for incident in ordered]})


async def _json(request: Request) -> dict[str, Any]:
    body = await request.body()
    if len(body) > _MAX_BODY:
        raise _BadRequest(f"body over {_MAX_BODY} bytes")
    try:
        data = json.loads(body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise _BadRequest("body is not JSON") from None
    if not isinstance(data, dict):
        raise _BadRequest("body must be a JSON object")
    return data


def _who(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _BadRequest("'who' is required: the person or system acting")
    return value.strip()[:200]


def _start_request(data: dict[str, Any]) -> tuple[str, str, float]:
    why = data.get("why")
    if not isinstance(why, str) or not why.strip():
        raise _BadRequest("'why' is required: what the maintenance is for")
    duration_s = _duration(data)
    if not (0 < duration_s <= MAX_MAINTENANCE_S):
        raise _BadRequest(f"maintenance lasts more than 0 and at most {MAX_MAINTENANCE_S:.0f} s")
    return _who(data.get("who")), why.strip()[:500], duration_s


def _duration(data: dict[str, Any]) -> float:
    if "duration_s" in data:
        value = data["duration_s"]
    elif "until" in data:
        value = _number(data["until"], "until") - time.time()
    else:
        raise _BadRequest("give 'duration_s' or 'until' (Unix seconds)")
    return _number(value, "duration_s")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _BadRequest(f"'{name}' must be a number")
    return float(value)
