"""One asyncio helper: a bounded wait that never loses its caller's cancellation.

``asyncio.wait_for`` in Python 3.10 and 3.11 returns the result, swallowing a cancellation,
when the awaited call finishes in the same loop iteration as the cancel arrives; a background
loop built on it then never stops. :func:`within` waits with ``asyncio.wait`` instead.

>>> import asyncio
>>> async def slow():
...     await asyncio.sleep(10)
>>> async def demo():
...     try:
...         await within(slow(), 0.01)
...     except asyncio.TimeoutError:
...         return "timed out"
>>> asyncio.run(demo())
'timed out'
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout_s: float) -> T:
    """The result of ``awaitable``, or ``asyncio.TimeoutError`` after ``timeout_s`` (the call
    is then cancelled); cancelling the caller cancels the call too."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout_s)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise asyncio.TimeoutError(f"no answer within {timeout_s:g} s")
    return task.result()
