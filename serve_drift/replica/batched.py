"""Many requests in one handle call: the comparator's shadow copies, answered as one batch.

A Serve handle call costs the caller and the replica more CPU than a small model's whole
answer (serialising, routing, the replica's request bookkeeping); a shadow copy needs none of
it for itself. :func:`answer_batch` runs each :class:`~serve_drift.request_context.BatchedRequest`
through the deployment's own handler, as if it had come alone: under its own IDs (bound for
serve-drift, and set in Ray Serve's request context for code that reads them there), so each
copy keeps its request span, its captured embedding and its event, with its own correlation
ID. Copies run concurrently, each until ``timeout_s``; one that raises or overruns is a
:class:`~serve_drift.request_context.BatchedFailure` in its place, and the others still answer.

>>> import asyncio
>>> from serve_drift.request_context import BatchedRequest, RequestIds, current_request_ids
>>> async def handler(request):
...     return f"{request} as {current_request_ids().correlation_id}"
>>> items = [BatchedRequest(f"copy {i}", RequestIds(f"client-{i}", f"in-{i}")) for i in (1, 2)]
>>> [a.result for a in asyncio.run(answer_batch(handler, items, timeout_s=1.0))]
['copy 1 as client-1', 'copy 2 as client-2']
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Sequence
from typing import Any

from serve_drift.request_context import (
    BatchedAnswer,
    BatchedFailure,
    BatchedRequest,
    bind_request_ids,
    serve_context_for,
)

Outcome = BatchedAnswer | BatchedFailure


async def answer_batch(
    handler: Callable[[Any], Any], items: Sequence[BatchedRequest], *, timeout_s: float
) -> list[Outcome]:
    """One outcome per item, in order: what ``handler`` answered, or why it did not."""
    loop = asyncio.get_running_loop()
    tasks = [
        loop.create_task(_answer_one(handler, item), context=serve_context_for(item.ids))
        for item in items
    ]
    if not tasks:
        return []
    try:
        _, late = await asyncio.wait(tasks, timeout=timeout_s)
    finally:  # overran, or the caller gave up on the batch: nothing keeps running for it
        for task in tasks:
            task.cancel()
    return [_outcome(task, timeout_s=timeout_s, late=task in late) for task in tasks]


async def _answer_one(handler: Callable[[Any], Any], item: BatchedRequest) -> Outcome:
    started = time.perf_counter()
    try:
        with bind_request_ids(item.ids):
            result = await _call(handler, item.request)
    except Exception as exc:  # this copy's failure, not its batch neighbours'
        return BatchedFailure("error", time.perf_counter() - started, type(exc).__name__)
    return BatchedAnswer(result, time.perf_counter() - started)


async def _call(handler: Callable[[Any], Any], request: Any) -> Any:
    if inspect.iscoroutinefunction(handler):
        return await handler(request)
    # As Ray Serve runs a sync handler: in a thread (to_thread carries the context along).
    result = await asyncio.to_thread(handler, request)
    return await result if inspect.isawaitable(result) else result


def _outcome(task: asyncio.Task[Outcome], *, timeout_s: float, late: bool) -> Outcome:
    if late or task.cancelled():
        return BatchedFailure("timeout", timeout_s)
    return task.result()
