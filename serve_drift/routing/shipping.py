"""Moves what the router saw from a router replica to the comparator, off the request path.

The request path only appends to a bounded buffer: a :class:`PendingObservation` (canary: the
raw responses and their latencies) or a shadow copy of the request. A background task
prepares them (parsing answers with :func:`~serve_drift.routing.answers.read_answer`) and
sends them in batches, one call per batch. A full buffer or an unreachable comparator drops
and counts: losing a comparison never costs a response.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from serve_drift.config import ShippingConfig
from serve_drift.routing.aio import within
from serve_drift.routing.answers import Answer, read_answer
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.instruments import router_instruments
from serve_drift.routing.messages import MirrorCopy, Observation

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


@dataclass(frozen=True)
class PendingCopy:
    """A shadow copy as the request path leaves it: the incumbent's answer still unparsed."""

    correlation_id: str
    internal_id: str
    timestamp: float
    request: ReplayedRequest
    incumbent: RawAnswer

    def resolve(self) -> MirrorCopy:
        return MirrorCopy(
            correlation_id=self.correlation_id,
            internal_id=self.internal_id,
            timestamp=self.timestamp,
            request=self.request,
            incumbent=self.incumbent.resolve(),
        )


T = TypeVar("T")
Send = Callable[[list[Any]], Awaitable[object]]


class BatchShipper(Generic[T]):
    """A bounded buffer, emptied in batches by a background task into ``send``.

    ``prepare`` turns the buffered items into what is sent (it runs in the background task,
    so parsing answers never happens on the request path); ``what`` names them in logs and in
    the ``serve_drift.shadow.observations.dropped`` counter's ``kind``.
    """

    def __init__(
        self,
        *,
        config: ShippingConfig,
        send: Send,
        prepare: Callable[[T], Any],
        what: str = "observation",
    ) -> None:
        self._config = config
        self._send = send
        self._prepare = prepare
        self._what = what
        self._buffer: deque[T] = deque()
        self._task: asyncio.Task[None] | None = None
        self._wakeup = asyncio.Event()
        self.shipped = 0
        self.dropped: Counter[str] = Counter()

    def offer(self, item: T) -> bool:
        """Never blocks: a full buffer drops the item and counts it (False)."""
        if len(self._buffer) >= self._config.max_queue:
            self._drop("queue_full", 1)
            return False
        self._buffer.append(item)
        if len(self._buffer) >= self._config.batch_size:
            self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

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
            batch = [self._prepare(item) for item in items]
            await within(self._send(batch), self._config.send_timeout_s)
        except asyncio.CancelledError:
            self._drop("shutdown", n)
            raise
        except Exception as exc:  # the comparator's failure is counted, never the client's
            logger.warning("serve-drift: %d shadow %ss not delivered: %s", n, self._what, exc)
            self._drop("comparator_unreachable", n)
            return
        self.shipped += n

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] += n
        router_instruments().observations_dropped.add(n, {"reason": reason, "kind": self._what})


def observation_shipper(*, config: ShippingConfig, send: Send) -> BatchShipper[PendingObservation]:
    """Canary observations: answers parsed in the background, then sent."""
    return BatchShipper(config=config, send=send, prepare=PendingObservation.resolve)


def copy_shipper(*, config: ShippingConfig, send: Send) -> BatchShipper[PendingCopy]:
    """Shadow copies: the incumbent's answer parsed in the background, then sent."""
    return BatchShipper(config=config, send=send, prepare=PendingCopy.resolve, what="copy")
