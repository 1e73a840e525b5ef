"""Ingress: decode, limit, check and quarantine inputs, with a stable error contract.

The ready-made app uses all of it; in your own handler, use :class:`IngressGate` (whole
requests) or :func:`decode_payload` (bytes you already hold)::

    gate = IngressGate(config=IngressConfig(), input_shape=(3, 224, 224))
    try:
        admitted = await gate.admit(request, correlation_id=cid, internal_id=iid)
    except IngressError as error:
        return JSONResponse(gate.reject(error, request_id=cid), status_code=error.status)

Every error is an :class:`IngressError` with a ``code`` from :data:`STATUS_BY_CODE`.
"""

from serve_drift.ingress.body import read_body
from serve_drift.ingress.config import (
    CHECK_NAMES,
    BlurCheck,
    ConstantCheck,
    DarkCheck,
    IngressConfig,
    LimitsConfig,
    PlausibilityConfig,
    ProfileCheck,
    QuarantineConfig,
    SaturatedCheck,
)
from serve_drift.ingress.errors import STATUS_BY_CODE, IngressError, error_body
from serve_drift.ingress.gate import Admitted, IngressGate
from serve_drift.ingress.images import ALLOWED_FORMATS, DecodedImage, decode_image
from serve_drift.ingress.payload import Payload, decode_payload
from serve_drift.ingress.plausibility import Finding, evaluate
from serve_drift.ingress.profile import InputProfile
from serve_drift.ingress.quarantine import QuarantineEntry, QuarantineStore
from serve_drift.request_context import mark_request

__all__ = [
    "ALLOWED_FORMATS",
    "CHECK_NAMES",
    "STATUS_BY_CODE",
    "Admitted",
    "BlurCheck",
    "ConstantCheck",
    "DarkCheck",
    "DecodedImage",
    "Finding",
    "IngressConfig",
    "IngressError",
    "IngressGate",
    "InputProfile",
    "LimitsConfig",
    "Payload",
    "PlausibilityConfig",
    "ProfileCheck",
    "QuarantineConfig",
    "QuarantineEntry",
    "QuarantineStore",
    "SaturatedCheck",
    "decode_image",
    "decode_payload",
    "error_body",
    "evaluate",
    "mark_request",
    "read_body",
]
