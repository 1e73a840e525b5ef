"""Reading a body within its time limit: the answer, the timeout, someone else's cancellation,
and a deadline timer that keeps nothing of the request alive once the body has arrived."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import weakref
from collections.abc import AsyncIterator

import pytest

from serve_drift.ingress.body import read_body
from serve_drift.ingress.errors import IngressError

_REQUEST_STATE: contextvars.ContextVar[object] = contextvars.ContextVar("request_state")


class _Request:
    """A streaming request whose chunks arrive after ``delay_s`` each."""

    def __init__(self, chunks: list[bytes], *, delay_s: float = 0.0) -> None:
        self.headers: dict[str, str] = {}
        self._chunks, self._delay_s = chunks, delay_s

    async def stream(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            await asyncio.sleep(self._delay_s)
            yield chunk


class _State:
    """Something a request keeps in its context (its span, its capture)."""


def test_the_body_arrives_within_the_limit() -> None:
    body = asyncio.run(read_body(_Request([b"ab", b"cd"]), max_bytes=10, timeout_s=5.0))
    assert body == b"abcd"


def test_a_body_slower_than_the_limit_is_a_body_timeout() -> None:
    slow = _Request([b"ab", b"cd"], delay_s=0.2)
    with pytest.raises(IngressError) as refused:
        asyncio.run(read_body(slow, max_bytes=10, timeout_s=0.05))
    assert refused.value.code == "body_timeout"


def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def run() -> None:
        task = asyncio.ensure_future(
            read_body(_Request([b"ab"], delay_s=1.0), max_bytes=10, timeout_s=5.0)
        )
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


def test_after_the_body_arrives_the_deadline_timer_keeps_nothing_of_the_request() -> None:
    async def run() -> None:
        # A live timer due before the body's deadline: the cancelled deadline stays in the
        # loop's heap behind it, as it does in a replica serving a steady stream of requests.
        keep_heap = asyncio.get_running_loop().call_later(1.0, lambda: None)
        state = _State()
        token = _REQUEST_STATE.set(state)
        await read_body(_Request([b"ab"]), max_bytes=10, timeout_s=30.0)
        _REQUEST_STATE.reset(token)
        seen = weakref.ref(state)
        del state
        gc.collect()
        assert seen() is None  # while the loop still runs, the cancelled timer in its heap
        keep_heap.cancel()

    asyncio.run(run())
