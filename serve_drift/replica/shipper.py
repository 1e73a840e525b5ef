"""Moves embeddings from a replica to the monitor without ever blocking a request.

Requests only ``offer`` to a bounded buffer (a lock and an append); a background task drains
it in batches, moves the tensors to host memory in a worker thread (one device sync per batch,
not per request) and sends them to the monitor. A full buffer or an unreachable monitor drops
the batch and counts it by reason: losing telemetry must never cost a response. ``shipped``
counts only rows the monitor took *and* recorded in its event store; rows it took into its
windows but could not record count as dropped, reason ``monitor_not_recorded``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np
import torch

from serve_drift.config import ShippingConfig
from serve_drift.messages import EventBatch, InferenceEvent, IngestReceipt
from serve_drift.telemetry.instruments import replica_instruments

logger = logging.getLogger(__name__)

SendBatch = Callable[[EventBatch], Awaitable[object]]


@dataclass(frozen=True)
class PendingEmbedding:
    embedding: torch.Tensor  # 1-D, still on the model's device
    event: InferenceEvent
    probabilities: torch.Tensor | None = None  # 1-D softmax row, same device


class BoundedBuffer:
    """Thread-safe FIFO that refuses (rather than blocks or evicts) when full."""

    def __init__(self, *, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[PendingEmbedding] = deque()
        self._lock = threading.Lock()

    def offer(self, item: PendingEmbedding) -> bool:
        with self._lock:
            if len(self._items) >= self._capacity:
                return False
            self._items.append(item)
            return True

    def drain(self, *, max_items: int) -> list[PendingEmbedding]:
        with self._lock:
            n = min(max_items, len(self._items))
            return [self._items.popleft() for _ in range(n)]

    def __len__(self) -> int:
        return len(self._items)


def to_host_batch(items: list[PendingEmbedding], *, replica_id: str) -> EventBatch:
    """Stack on the device, then one copy to host memory for the whole batch."""
    embeddings = torch.stack([item.embedding for item in items]).to(torch.float32).cpu().numpy()
    return EventBatch(
        embeddings=np.ascontiguousarray(embeddings),
        events=tuple(item.event for item in items),
        replica_id=replica_id,
        probabilities=_stacked_probabilities(items),
    )


def _stacked_probabilities(items: list[PendingEmbedding]) -> np.ndarray | None:
    rows = [item.probabilities for item in items]
    if any(row is None for row in rows) or len({row.shape for row in rows if row is not None}) != 1:
        return None
    return torch.stack(rows).cpu().numpy()  # type: ignore[arg-type]


class EmbeddingShipper:
    """Owns the buffer and the background task that empties it into the monitor."""

    def __init__(self, *, config: ShippingConfig, send: SendBatch, replica_id: str) -> None:
        self._config = config
        self._send = send
        self._replica_id = replica_id
        self._buffer = BoundedBuffer(capacity=config.max_queue)
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self.shipped = 0
        self.dropped: dict[str, int] = {}
        self.last_failure: str | None = None  # cleared by the next successful send

    def offer(self, item: PendingEmbedding) -> None:
        if not self._buffer.offer(item):
            self._count_drop("queue_full", 1)
            return
        if len(self._buffer) >= self._config.batch_size and self._wakeup is not None:
            self._wakeup.set()

    def ensure_started(self) -> None:
        """Start the drain task on the running loop (the replica's), once."""
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._run())

    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Send everything buffered now (tests, shutdown)."""
        while len(self._buffer):
            await self._send_one_batch()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout=self._config.flush_interval_s)
            self._wakeup.clear()
            await self.flush()

    async def _send_one_batch(self) -> None:
        items = self._buffer.drain(max_items=self._config.batch_size)
        if not items:
            return
        try:
            batch = await self._host_batch(items)
            receipt = await asyncio.wait_for(self._send(batch), timeout=self._config.send_timeout_s)
        except asyncio.CancelledError:
            self._count_drop("shutdown", len(items))
            raise
        except Exception as exc:  # the monitor's failure is ours to count, not the client's
            logger.warning("serve-drift: dropped %d embeddings: %s", len(items), exc)
            self._count_drop("monitor_unreachable", len(items))
            self.last_failure = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.last_failure = None
        if isinstance(receipt, IngestReceipt) and receipt.recorded is False:
            # In the windows, but not in the record: "shipped" promises both.
            self._count_drop("monitor_not_recorded", len(items))
            return
        self.shipped += len(items)
        replica_instruments().embeddings_shipped.add(len(items))

    async def _host_batch(self, items: list[PendingEmbedding]) -> EventBatch:
        # A device-to-host copy waits for the GPU: do it in a thread so the loop keeps serving.
        # Host tensors need no copy, and a thread hop would cost more than the stacking.
        if items[0].embedding.device.type == "cpu":
            return to_host_batch(items, replica_id=self._replica_id)
        return await asyncio.to_thread(to_host_batch, items, replica_id=self._replica_id)

    def _count_drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        replica_instruments().embeddings_dropped.add(n, {"reason": reason})
