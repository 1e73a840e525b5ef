"""The error contract: a stable code per rejection, its HTTP status, and a message we wrote.

Messages are ours alone. A library's exception text can quote the payload, a file path or a
host name, so it never reaches a client: callers raise ``from None`` and pass a fixed message.
"""

from __future__ import annotations

from typing import Any

from serve_drift.errors import ServeDriftError

# code -> HTTP status. The README's error table is this dictionary.
STATUS_BY_CODE: dict[str, int] = {
    "empty_body": 400,
    "invalid_json": 400,
    "invalid_base64": 400,
    "image_decode_failed": 400,
    "invalid_tensor": 400,
    "client_disconnected": 400,
    "invalid_query": 400,
    "invalid_labels": 400,
    "invalid_maintenance": 400,
    "unauthorized": 401,
    "admin_disabled": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "body_timeout": 408,
    "body_too_large": 413,
    "image_too_large": 413,
    "tensor_too_large": 413,
    "too_many_labels": 413,
    "unsupported_media_type": 415,
    "unsupported_image_format": 415,
    "invalid_schema": 422,
    "invalid_batch": 422,
    "json_too_deep": 422,
    "invalid_shape": 422,
    "unsupported_dtype": 422,
    "non_finite_values": 422,
    "tensor_out_of_range": 422,
    "implausible_input": 422,
    "internal_error": 500,
    "monitor_unavailable": 503,
    "event_store_unavailable": 503,
}


class IngressError(ServeDriftError):
    """A rejected request: an HTTP ``status``, a stable ``code`` and a human ``message``.

    >>> IngressError("empty_body", "the request body is empty").status
    400
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in STATUS_BY_CODE:
            raise ValueError(f"unknown ingress error code {code!r}")
        super().__init__(code, message)
        self.code = code
        self.status = STATUS_BY_CODE[code]
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


INTERNAL_ERROR = IngressError("internal_error", "the server failed to handle the request")


def error_body(error: IngressError, *, request_id: str) -> dict[str, Any]:
    """The whole JSON body of an error answer: nothing but code, message and request ID."""
    return {"error": {"code": error.code, "message": error.message, "request_id": request_id}}
