"""Reading a request body within a size and a time limit."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncIterator, Awaitable, Mapping
from typing import Protocol, TypeVar

from serve_drift.ingress.errors import IngressError

T = TypeVar("T")

# The context the body's deadline timer runs in. A timer scheduled the usual way (wait_for,
# asyncio.timeout) runs in a copy of the request's context, and once cancelled it waits in the
# event loop's heap until its due time or a purge: the copy would keep the request's objects
# (its span, capture, marks) alive for a hundred requests and more, long enough for the garbage
# collector to promote them to its oldest generation and collect the whole heap more often.
_DEADLINE_CONTEXT = contextvars.Context()


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
        body = await _within(_collect(request, max_bytes=max_bytes), timeout_s=timeout_s)
    except TimeoutError:
        raise IngressError(
            "body_timeout", f"the request body did not arrive within {timeout_s:g} s"
        ) from None
    if not body:
        raise IngressError("empty_body", "the request body is empty")
    return body


async def _within(awaitable: Awaitable[T], *, timeout_s: float) -> T:
    """``await awaitable``, or :class:`TimeoutError` after ``timeout_s``: what
    ``asyncio.timeout`` does, with its timer in :data:`_DEADLINE_CONTEXT`."""
    task = asyncio.current_task()
    if task is None:  # not in a task: nothing to cancel, so the standard way
        return await asyncio.wait_for(awaitable, timeout_s)
    expired = False

    def expire() -> None:
        nonlocal expired
        expired = True
        task.cancel()

    cancelling = task.cancelling()
    timer = asyncio.get_running_loop().call_later(timeout_s, expire, context=_DEADLINE_CONTEXT)
    try:
        return await awaitable
    except asyncio.CancelledError:
        # Ours only if no one else cancelled the task meanwhile (as asyncio.timeout decides).
        if expired and task.uncancel() <= cancelling:
            raise TimeoutError from None
        raise
    finally:
        timer.cancel()  # a cancelled handle drops its callback: nothing of the request is kept


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
