"""Reading a request body within a size and a time limit."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

from serve_drift.ingress.errors import IngressError


class StreamingRequest(Protocol):
    """What we need from a Starlette ``Request``."""

    @property
    def headers(self) -> Mapping[str, str]: ...

    def stream(self) -> AsyncIterator[bytes]: ...


def _too_large(max_bytes: int) -> IngressError:
    return IngressError("body_too_large", f"the body exceeds {max_bytes} bytes")


def check_declared_length(headers: Mapping[str, str], *, max_bytes: int) -> None:
    """Refuse an oversized body from its ``Content-Length`` before reading a byte of it."""
    declared = headers.get("content-length")
    # The HTTP server already answers 400 to a malformed Content-Length; be lenient here.
    if declared is not None and declared.strip().isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)


async def read_body(request: StreamingRequest, *, max_bytes: int, timeout_s: float) -> bytes:
    """The whole body, or ``body_too_large`` (413), ``body_timeout`` (408), ``empty_body``.

    The size is checked as chunks arrive, so a chunked upload without a ``Content-Length``
    is cut off at the limit instead of being buffered whole.
    """
    check_declared_length(request.headers, max_bytes=max_bytes)
    try:
        body = await asyncio.wait_for(_collect(request, max_bytes=max_bytes), timeout_s)
    except asyncio.TimeoutError:
        raise IngressError(
            "body_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    if not body:
        raise IngressError("empty_body", "the request body is empty")
    return body


async def _collect(request: StreamingRequest, *, max_bytes: int) -> bytes:
    from starlette.requests import ClientDisconnect

    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise _too_large(max_bytes)
            chunks.append(chunk)
    except ClientDisconnect:
        raise IngressError(
            "client_disconnected", "the client disconnected before sending the whole body"
        ) from None
    return b"".join(chunks)
