"""Moves embeddings from a replica to the monitor without ever blocking a request.

Requests only ``offer`` their captured rows to a bounded buffer (a lock and an append); a
background task drains it, turns the rows into events in one vectorised pass
(:mod:`serve_drift.replica.batch`), lets the sampler choose the rows to ship
(:mod:`serve_drift.replica.sampler`), moves the tensors to host memory (one device sync per
batch, in a worker thread for GPU tensors) and sends them to the monitor. A full buffer or an
unreachable monitor drops the rows and counts them by reason: losing telemetry must never cost a
response. ``shipped`` counts only rows the monitor took *and* recorded in its event store; rows
it took into its windows but could not record count as dropped, reason
``monitor_not_recorded``; rows the sampler left out count as dropped, reason ``sampled_out``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from serve_drift.config import ShippingConfig
from serve_drift.messages import EventBatch, IngestReceipt
from serve_drift.replica.batch import BatchBuilder, Drained, PendingRows
from serve_drift.replica.sampler import RowSampler
from serve_drift.telemetry.instruments import replica_instruments

logger = logging.getLogger(__name__)

SendBatch = Callable[[EventBatch], Awaitable[object]]
SAMPLED_OUT = "sampled_out"


class BoundedBuffer:
    """Thread-safe FIFO of requests' rows that refuses (rather than blocks or evicts) when its
    ``capacity`` in rows is reached."""

    def __init__(self, *, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[PendingRows] = deque()
        self._rows = 0
        self._lock = threading.Lock()

    def offer(self, item: PendingRows) -> bool:
        with self._lock:
            if self._rows + item.rows > self._capacity:
                return False
            self._items.append(item)
            self._rows += item.rows
            return True

    def drain(self, *, max_rows: int) -> list[PendingRows]:
        """Whole requests, oldest first, until ``max_rows`` is reached (at least one)."""
        with self._lock:
            taken: list[PendingRows] = []
            rows = 0
            while self._items and (not taken or rows + self._items[0].rows <= max_rows):
                item = self._items.popleft()
                taken.append(item)
                rows += item.rows
            self._rows -= rows
            return taken

    def __len__(self) -> int:
        return self._rows


class EmbeddingShipper:
    """Owns the buffer, the sampler and the background task that empties them into the monitor.

    ``on_tick`` runs at every wake-up of that task (the runtime flushes its request counts).
    """

    def __init__(
        self,
        *,
        config: ShippingConfig,
        send: SendBatch,
        builder: BatchBuilder,
        on_tick: Callable[[], None] | None = None,
    ) -> None:
        self._config = config
        self._send = send
        self._builder = builder
        self._on_tick = on_tick
        self._buffer = BoundedBuffer(capacity=config.max_queue)
        self.sampler = RowSampler(max_rows_per_s=config.max_rows_per_s, burst_s=config.burst_s)
        self._task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        self.shipped = 0
        self.dropped: dict[str, int] = {}
        self.last_failure: str | None = None  # cleared by the next successful send
        self._unreported = 0  # rows sampled out that no batch the monitor took has reported

    def offer(self, item: PendingRows) -> bool:
        """Queue a request's rows; False when the buffer is full (they are dropped, counted)."""
        if not self._buffer.offer(item):
            self._count_drop("queue_full", item.rows)
            return False
        waiting = len(self._buffer)
        # batch_size first: the wake threshold is never below it, and costs more to look up.
        wake = waiting >= self._config.batch_size and waiting >= self._wake_rows()
        if wake and self._wakeup is not None:
            self._wakeup.set()
        return True

    def _wake_rows(self) -> int:
        # Uncapped, a full batch leaves at once. Capped, the timer drains: the sampler then
        # draws from everything that arrived since the last drain, and the rows it keeps leave
        # in full batches instead of a trickle of tiny ones (a send costs the same either way).
        if self.sampler.rate is None:
            return self._config.batch_size
        return max(self._config.batch_size, self._config.max_queue // 2)

    def ensure_started(self) -> None:
        """Start the drain task on the running loop (the replica's), once."""
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            # In a context of its own: started from a request, the task would otherwise keep
            # that request's span current (its metrics would sample exemplars of it, and its
            # calls to the monitor be traced as that request's children) and pin its capture.
            self._task = asyncio.get_running_loop().create_task(
                self._run(), context=contextvars.Context()
            )

    def pending(self) -> int:
        return len(self._buffer)

    async def flush(self) -> None:
        """Send everything buffered now (tests, shutdown)."""
        self._tick()
        while len(self._buffer):
            await self._ship_drain()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            woken = False
            with contextlib.suppress(asyncio.TimeoutError):
                woken = await asyncio.wait_for(
                    self._wakeup.wait(), timeout=self._config.flush_interval_s
                )
            self._wakeup.clear()
            self._tick()
            # Woken by a full batch, ship full batches; at the interval, what is there. Only
            # the rows present now: rows arriving meanwhile wait for their own batch instead
            # of leaving one by one behind a steady stream of requests.
            await self._drain(rows=len(self._buffer), full_only=woken)

    async def _drain(self, *, rows: int, full_only: bool) -> None:
        least = self._wake_rows() if full_only else 1
        while rows > 0 and len(self._buffer) >= least:
            rows -= await self._ship_drain()

    def _tick(self) -> None:
        if self._on_tick is not None:
            try:
                self._on_tick()
            except Exception:  # counts are telemetry: never stop the shipping for them
                logger.warning("serve-drift: replica tick failed", exc_info=True)

    async def _ship_drain(self) -> int:
        """Drain, sample, build and send; returns the rows drained."""
        capped = self.sampler.rate is not None
        items = self._buffer.drain(
            max_rows=self._config.max_queue if capped else self._config.batch_size
        )
        rows = sum(item.rows for item in items)
        if not items:
            return 0
        try:
            drained = await self._build(items)
        except Exception as exc:  # a bug in batching must not stop the shipping
            logger.warning("serve-drift: could not build a batch of %d rows: %s", rows, exc)
            self._count_drop("batch_failed", rows)
            return rows
        if drained.unsampled:
            self._count_drop(SAMPLED_OUT, drained.unsampled)
            self._unreported += drained.unsampled
        batch = drained.batch
        if batch is None and self._unreported:  # no row to ship: still report those left out
            batch = self._builder.empty(width=items[0].embeddings.shape[1])
        for chunk in _chunks(batch, size=self._config.batch_size):
            await self._send_one(chunk)
        return rows

    async def _build(self, items: list[PendingRows]) -> Drained:
        # A device-to-host copy waits for the GPU: do it in a thread so the loop keeps serving.
        # Host tensors need no copy, and a thread hop would cost more than the batching.
        now = time.monotonic()
        if items[0].embeddings.device.type == "cpu":
            return self._builder.build(items, sampler=self.sampler, now=now)
        return await asyncio.to_thread(self._builder.build, items, sampler=self.sampler, now=now)

    async def _send_one(self, batch: EventBatch) -> None:
        n, unsampled = len(batch.events), self._unreported
        batch = dataclasses.replace(batch, unsampled=unsampled)
        try:
            receipt = await asyncio.wait_for(self._send(batch), timeout=self._config.send_timeout_s)
        except asyncio.CancelledError:
            self._count_drop("shutdown", n)
            raise
        except Exception as exc:  # the monitor's failure is ours to count, not the client's
            logger.warning("serve-drift: dropped %d embeddings: %s", n, exc)
            self._count_drop("monitor_unreachable", n)
            self.last_failure = f"{type(exc).__name__}: {exc}"[:200]
            return
        self.last_failure = None
        self._unreported -= unsampled  # the monitor has counted them now
        self._take_receipt(receipt, n)

    def _take_receipt(self, receipt: Any, n: int) -> None:
        if not isinstance(receipt, IngestReceipt):
            self._count_shipped(n)  # an older monitor, or a test double: it took the rows
            return
        self.sampler.advise(receipt.max_rows_per_s)
        if receipt.recorded is False:
            # In the windows, but not in the record: "shipped" promises both.
            self._count_drop("monitor_not_recorded", n)
            return
        self._count_shipped(n)

    def _count_shipped(self, n: int) -> None:
        self.shipped += n
        replica_instruments().embeddings_shipped.add(n)

    def _count_drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n
        replica_instruments().embeddings_dropped.add(n, {"reason": reason})


def _chunks(batch: EventBatch | None, *, size: int) -> list[EventBatch]:
    """The shipped rows in batches of ``size`` rows."""
    if batch is None:
        return []
    if len(batch.events) <= size:
        return [batch]
    probabilities = batch.probabilities
    return [
        dataclasses.replace(
            batch,
            embeddings=batch.embeddings[start : start + size],
            events=batch.events[start : start + size],
            probabilities=None if probabilities is None else probabilities[start : start + size],
        )
        for start in range(0, len(batch.events), size)
    ]
