"""Shadow traffic: copies of answered requests sent to the candidate, fire and forget.

``offer`` is all the request path does: a ``put_nowait`` into a bounded queue (a full queue
drops the copy and counts it). ``max_in_flight`` workers take copies off the queue, up to
``batch_size`` at a time (whatever is waiting: a worker never waits to fill a batch), and
make one call for them, bounded by ``timeout_s`` (then cancelled). A candidate that raises,
hangs, dies or answers garbage therefore costs the incumbent's requests nothing beyond that
enqueue: its failures end up as counted outcomes, never as the client's.

>>> import asyncio
>>> async def demo():
...     async def call(jobs): return [f"answer to {job}" for job in jobs]
...     seen = []
...     queue = MirrorQueue(queue_size=2, max_in_flight=1, timeout_s=1.0, call=call,
...                         done=lambda job, outcome: seen.append(outcome))
...     accepted = [queue.offer(i) for i in range(4)]  # no worker has run yet: 2 fit
...     await queue.drain()
...     return accepted, seen, queue.counts["dropped_queue_full"]
>>> asyncio.run(demo())
([True, True, False, False], ['answer to 0', 'answer to 1'], 2)
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

from serve_drift.routing.aio import within

logger = logging.getLogger(__name__)

J = TypeVar("J")

Outcome = Any


class MirrorTimeout(Exception):
    """The candidate did not answer a mirrored request within ``timeout_s``."""


class MirrorQueue(Generic[J]):
    """Bounded queue plus ``max_in_flight`` workers on the running event loop.

    ``call(jobs)`` returns one outcome per job, in order (or raises, or returns another
    number of outcomes: that exception is then every job's outcome); ``done(job, outcome)``
    records each. ``counts`` holds ``dropped_queue_full`` and ``sent``; the caller's
    ``done`` counts the rest. At most ``queue_size`` jobs wait and ``max_in_flight *
    batch_size`` are at the candidate.
    """

    def __init__(
        self,
        *,
        queue_size: int,
        max_in_flight: int,
        timeout_s: float,
        call: Callable[[list[J]], Awaitable[Sequence[Outcome]]],
        done: Callable[[J, Outcome], None],
        batch_size: int = 1,
    ) -> None:
        self._queue: asyncio.Queue[J] | None = None
        self._size = queue_size
        self._workers_wanted = max_in_flight
        self.timeout_s = timeout_s
        self._call = call
        self._done = done
        self._batch_size = batch_size
        self._workers: list[asyncio.Task[None]] = []
        self.counts: Counter[str] = Counter()
        self._busy = 0

    def offer(self, job: J) -> bool:
        """Queue a copy; False (dropped, counted) when the queue is full. Never waits."""
        queue = self._ensure_started()
        try:
            queue.put_nowait(job)
        except asyncio.QueueFull:
            self.counts["dropped_queue_full"] += 1
            return False
        self.counts["sent"] += 1
        return True

    def pending(self) -> int:
        """Copies waiting plus copies at the candidate now."""
        return (0 if self._queue is None else self._queue.qsize()) + self._busy

    async def drain(self) -> None:
        """Wait until every queued copy has been handled (tests, shutdown)."""
        if self._queue is not None:
            await self._queue.join()

    async def stop(self) -> None:
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()

    def _ensure_started(self) -> asyncio.Queue[J]:
        if self._queue is None:
            # A worker holds one job beyond the queue, so the queue itself holds the rest.
            self._queue = asyncio.Queue(maxsize=self._size)
        if not self._workers:
            loop = asyncio.get_running_loop()
            self._workers = [loop.create_task(self._work()) for _ in range(self._workers_wanted)]
        return self._queue

    async def _work(self) -> None:
        assert self._queue is not None
        while True:
            jobs = [await self._queue.get()]
            while len(jobs) < self._batch_size and not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            self._busy += len(jobs)
            try:
                self._record(jobs, await self._outcomes(jobs))
            finally:
                self._busy -= len(jobs)
                for _ in jobs:
                    self._queue.task_done()

    def _record(self, jobs: list[J], outcomes: Sequence[Outcome]) -> None:
        for job, outcome in zip(jobs, outcomes, strict=True):
            try:
                self._done(job, outcome)
            except Exception:  # a failing recorder must not stop the worker
                logger.exception("serve-drift: recording a mirrored request failed")

    async def _outcomes(self, jobs: list[J]) -> Sequence[Outcome]:
        try:
            outcomes = await within(self._call(jobs), self.timeout_s)
        except asyncio.TimeoutError:
            return [MirrorTimeout(f"no answer within {self.timeout_s:g} s")] * len(jobs)
        except Exception as exc:
            return [exc] * len(jobs)
        if len(outcomes) != len(jobs):
            wrong = RuntimeError(f"{len(outcomes)} outcomes for {len(jobs)} copies")
            return [wrong] * len(jobs)
        return outcomes
