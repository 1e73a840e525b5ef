"""The router's own HTTP answers: the same error body as the ready-made app's ingress.

``{"error": {"code", "message", "request_id"}}`` and nothing else; codes are stable.
Answers from the arms pass through untouched.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from serve_drift.errors import ServeDriftError

STATUS_BY_CODE: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "admin_disabled": 403,
    "not_found": 404,
    "decision_not_promote": 409,
    "no_fallback": 409,
    "invalid_target": 400,
    "arm_unavailable": 503,
    "comparator_unavailable": 503,
    "overloaded": 503,
}
MAX_ADMIN_BODY_BYTES = 1 << 20


class RoutingError(ServeDriftError):
    """A request the router answers itself with an error.

    >>> RoutingError("arm_unavailable", "the incumbent is not deployed").status
    503
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown routing error code {code!r}")
        super().__init__(message)
        self.code = code
        self.status = STATUS_BY_CODE[code]
        self.message = message


def error_response(*, code: str, message: str, status: int, request_id: str) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "request_id": request_id}}
    response = JSONResponse(body, status_code=status)
    if code == "unauthorized":
        response.headers["www-authenticate"] = 'Bearer realm="serve-drift"'
    if status == 503:
        response.headers["retry-after"] = "1"
    return response


def json_object(body: bytes) -> dict[str, Any]:
    """An admin request's optional JSON object body ({} when empty)."""
    if not body.strip():
        return {}
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RoutingError("invalid_request", "the body is not JSON") from None
    if not isinstance(value, dict):
        raise RoutingError("invalid_request", "the body must be a JSON object")
    return value
