"""Correlation IDs: the client's ``X-Request-ID`` as Ray Serve saw it, or one of ours."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

MAX_CORRELATION_ID_LENGTH = 128
_UNSAFE = re.compile(r"[^\x21-\x7e]")  # anything but printable, non-space ASCII


@dataclass(frozen=True)
class RequestIds:
    """``correlation_id`` may repeat (clients reuse IDs); ``internal_id`` never does."""

    correlation_id: str
    internal_id: str


def sanitize_correlation_id(raw: str) -> str:
    """Make a client-supplied ID safe for logs, span attributes and headers.

    >>> sanitize_correlation_id("abc\\r\\nSet-Cookie: x")
    'abc__Set-Cookie:_x'
    """
    return _UNSAFE.sub("_", raw[:MAX_CORRELATION_ID_LENGTH])


def _new_id() -> str:
    return os.urandom(16).hex()  # as random as uuid4, at a third of the cost


def _serve_request_context() -> tuple[str, str]:
    # The getter is private and empty in local testing mode or outside a request: read it
    # defensively so a Ray upgrade can only cost us the client's ID, never a request.
    try:
        from ray.serve.context import _get_serve_request_context

        ctx = _get_serve_request_context()
        return str(ctx.request_id or ""), str(getattr(ctx, "_internal_request_id", "") or "")
    except Exception:
        return "", ""


# The IDs the monitoring wrapper settled on for the request being handled, so the handler sees
# the same ones even where they were generated here (Ray's context is empty in local testing).
_BOUND: ContextVar[RequestIds | None] = ContextVar("serve_drift_request_ids", default=None)


@contextmanager
def bind_request_ids(ids: RequestIds) -> Iterator[RequestIds]:
    """Make ``ids`` what :func:`current_request_ids` returns inside the ``with`` block."""
    token = _BOUND.set(ids)
    try:
        yield ids
    finally:
        _BOUND.reset(token)


def current_request_ids() -> RequestIds:
    """IDs for the request being handled, generating whatever Ray Serve did not provide."""
    bound = _BOUND.get()
    if bound is not None:
        return bound
    request_id, internal_id = _serve_request_context()
    correlation_id = sanitize_correlation_id(request_id) if request_id else _new_id()
    return RequestIds(correlation_id=correlation_id, internal_id=internal_id or _new_id())
