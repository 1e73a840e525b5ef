"""Moves routed requests' answers from a router replica to the comparator, off the request path.

The request path only appends a :class:`PendingObservation` (the raw responses and their
latencies) to a bounded buffer; a background task parses the answers
(:func:`~serve_drift.routing.answers.read_answer`) and sends them in batches. A full buffer or
an unreachable comparator drops and counts: losing a comparison never costs a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from serve_drift.config import ShippingConfig
from serve_drift.routing.aio import within
from serve_drift.routing.answers import Answer, read_answer
from serve_drift.routing.instruments import router_instruments
from serve_drift.routing.messages import Observation

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RawAnswer:
    """What an arm returned and how long it took, parsed later; or an ``answer`` already
    known (a failure, or one the mirror worker parsed)."""

    result: Any = None
    latency_s: float = 0.0
    answer: Answer | None = None

    def resolve(self) -> Answer:
        if self.answer is not None:
            return self.answer
        return read_answer(self.result, latency_s=self.latency_s)


@dataclass(frozen=True)
class PendingObservation:
    correlation_id: str
    timestamp: float
    mode: str
    served_by: str
    incumbent: RawAnswer | None = None
    candidate: RawAnswer | None = None

    def resolve(self) -> Observation:
        return Observation(
            correlation_id=self.correlation_id,
            timestamp=self.timestamp,
            mode=self.mode,
            served_by=self.served_by,
            incumbent=None if self.incumbent is None else self.incumbent.resolve(),
            candidate=None if self.candidate is None else self.candidate.resolve(),
        )


SendObservations = Callable[[list[Observation]], Awaitable[object]]


class ObservationShipper:
    def __init__(self, *, config: ShippingConfig, send: SendObservations) -> None:
        self._config = config
        self._send = send
        self._buffer: deque[PendingObservation] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self.shipped = 0
        self.dropped: Counter[str] = Counter()

    def offer(self, item: PendingObservation) -> None:
        """Never blocks: a full buffer drops the observation and counts it."""
        if len(self._buffer) >= self._config.max_queue:
            self._drop("queue_full", 1)
            return
        self._buffer.append(item)
        if len(self._buffer) >= self._config.batch_size:
            self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        while self._buffer:
            await self._send_batch()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await within(self._wakeup.wait(), self._config.flush_interval_s)
            self._wakeup.clear()
            await self.flush()

    async def _send_batch(self) -> None:
        n = min(self._config.batch_size, len(self._buffer))
        items = [self._buffer.popleft() for _ in range(n)]
        try:
            batch = [item.resolve() for item in items]
            await within(self._send(batch), self._config.send_timeout_s)
        except asyncio.CancelledError:
            self._drop("shutdown", n)
            raise
        except Exception as exc:  # the comparator's failure is counted, never the client's
            logger.warning("serve-drift: %d shadow observations not delivered: %s", n, exc)
            self._drop("comparator_unreachable", n)
            return
        self.shipped += n

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] += n
        router_instruments().observations_dropped.add(n, {"reason": reason})
