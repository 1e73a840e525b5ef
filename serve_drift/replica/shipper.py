"""Moves embeddings from a replica to the monitor without ever blocking a request.

Requests only ``offer`` their captured rows to a bounded buffer (a lock and an append); a
background task drains it every few dozen rows and ends the drain's request spans with its
outputs (:meth:`~serve_drift.replica.batch.BatchBuilder.answer`), then, once a batch's worth
has accumulated or at the flush interval, lets the sampler choose the rows to ship
(:mod:`serve_drift.replica.sampler`), turns them into events in one vectorised pass, moves the
tensors to host memory (one device sync per batch, in a worker thread for GPU tensors) and
sends them to the monitor. A full buffer or an unreachable monitor drops the rows and counts
them by reason: losing telemetry must never cost a response. ``shipped`` counts only rows
the monitor took *and* recorded in its event store; rows it took into its windows but could
not record count as dropped, reason ``monitor_not_recorded``; rows the sampler left out count
as dropped, reason ``sampled_out``.
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from serve_drift.config import ShippingConfig
from serve_drift.messages import EventBatch, IngestReceipt
from serve_drift.replica.batch import Answered, BatchBuilder, PendingRows
from serve_drift.replica.sampler import RowSampler
from serve_drift.telemetry.instruments import replica_instruments

logger = logging.getLogger(__name__)

SendBatch = Callable[[EventBatch], Awaitable[object]]
T = TypeVar("T")
SAMPLED_OUT = "sampled_out"

# Rows the drain task answers at once (ends their spans): soon enough that a request's span
# objects are freed before the garbage collector's middle generation, which runs every few
# hundred requests, promotes them to the oldest, whose size decides how often the whole heap
# is collected; large enough that the vectorised outputs stay cheap per row.
ANSWER_ROWS = 32


class _HasRows(Protocol):
    @property
    def rows(self) -> int: ...


Entry = TypeVar("Entry", bound=_HasRows)


def take_whole(entries: deque[Entry], *, max_rows: int) -> tuple[list[Entry], int]:
    """Whole entries off the front of ``entries`` until ``max_rows`` is reached (at least
    one), and their rows."""
    taken: list[Entry] = []
    rows = 0
    while entries and (not taken or rows + entries[0].rows <= max_rows):
        entry = entries.popleft()
        taken.append(entry)
        rows += entry.rows
    return taken, rows


class BoundedBuffer:
    """Thread-safe FIFO of requests' rows that refuses (rather than blocks or evicts) when its
    ``capacity`` in rows is reached; drained rows count against it until :meth:`release`."""

    def __init__(self, *, capacity: int) -> None:
        self._capacity = capacity
        self._items: deque[PendingRows] = deque()
        self._rows = 0
        self._held = 0  # drained, not yet shipped or dropped
        self._lock = threading.Lock()

    def offer(self, item: PendingRows) -> bool:
        with self._lock:
            if self._rows + self._held + item.rows > self._capacity:
                return False
            self._items.append(item)
            self._rows += item.rows
            return True

    def drain(self, *, max_rows: int) -> list[PendingRows]:
        """Whole requests, oldest first, until ``max_rows`` is reached (at least one)."""
        with self._lock:
            taken, rows = take_whole(self._items, max_rows=max_rows)
            self._rows -= rows
            self._held += rows
            return taken

    def release(self, rows: int) -> None:
        """Drained rows that are gone now (shipped or dropped)."""
        with self._lock:
            self._held -= rows

    def __len__(self) -> int:
        return self._rows


class EmbeddingShipper:
    """Owns the buffer, the sampler and the background task that empties them into the monitor.

    ``on_tick`` runs at every flush interval and flush (the runtime records its request counts
    and latencies then).
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
        self._answer_rows = min(ANSWER_ROWS, config.batch_size)
        self._answered: deque[Answered] = deque()  # oldest first, waiting for the send
        self._answered_rows = 0
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
        if len(self._buffer) >= self._answer_rows and self._wakeup is not None:
            self._wakeup.set()
        return True

    def _ship_rows(self) -> int:
        """Answered rows that make the task ship before the flush interval."""
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
        """Rows offered and not yet shipped or dropped."""
        return len(self._buffer) + self._answered_rows

    async def flush(self) -> None:
        """Send everything buffered now (tests, shutdown)."""
        self._tick()
        while len(self._buffer) or self._answered_rows:
            await self._answer_waiting()
            await self._ship(full_only=False)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.flush()

    async def _run(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        loop = asyncio.get_running_loop()
        interval = self._config.flush_interval_s
        # The interval wakes the task as the offers do, through the event: no wait_for, whose
        # Python 3.11 form can swallow a cancellation that arrives as the event is set (the
        # task would then outlive stop() and the loop's shutdown). The timer says it fired
        # (the loop runs a timer up to its clock's resolution early: comparing clocks would
        # miss a tick, and no timer would be left to wake the task).
        due = False

        def interval_elapsed() -> None:
            nonlocal due
            due = True
            wakeup.set()

        timer = loop.call_later(interval, interval_elapsed)
        try:
            while True:
                await wakeup.wait()
                wakeup.clear()
                await self._answer_waiting()
                # Between ticks, ship only full batches; at the interval, what is there. Only
                # the rows answered now: rows arriving meanwhile wait for their own batch
                # instead of leaving one by one behind a steady stream of requests.
                at_tick, due = due, False
                if at_tick:
                    timer = loop.call_later(interval, interval_elapsed)
                    self._tick()
                await self._ship(full_only=not at_tick)
        finally:
            timer.cancel()

    async def _answer_waiting(self) -> None:
        """End the spans of every row waiting now and keep the rows for the send, in drains
        of at most a batch (an uncapped send then takes one drain's rows at a time)."""
        waiting = len(self._buffer)  # rows arriving meanwhile wait for the next wake-up
        while waiting > 0:
            items = self._buffer.drain(max_rows=self._config.batch_size)
            if not items:
                return
            rows = sum(item.rows for item in items)
            waiting -= rows
            try:
                answered = await _off_loop(items[0], self._builder.answer, items)
            except Exception as exc:  # a bug in batching must not stop the shipping
                self._batch_failed(rows, exc)
                continue
            self._answered.append(answered)
            self._answered_rows += rows

    async def _ship(self, *, full_only: bool) -> None:
        least = self._ship_rows() if full_only else 1
        while self._answered_rows and self._answered_rows >= least:
            await self._ship_answered()

    def _batch_failed(self, rows: int, exc: Exception) -> None:
        logger.warning("serve-drift: could not build a batch of %d rows: %s", rows, exc)
        self._count_drop("batch_failed", rows)
        self._buffer.release(rows)

    def _tick(self) -> None:
        if self._on_tick is not None:
            try:
                self._on_tick()
            except Exception:  # counts are telemetry: never stop the shipping for them
                logger.warning("serve-drift: replica tick failed", exc_info=True)

    async def _ship_answered(self) -> None:
        """Sample, build and send the oldest answered rows (a batch's worth; capped, all of
        them: the sampler draws from everything since the last send)."""
        capped = self.sampler.rate is not None
        parts = self._take_answered(
            max_rows=self._config.max_queue if capped else self._config.batch_size
        )
        rows = sum(part.rows for part in parts)
        first = parts[0].items[0]
        try:
            drained = await _off_loop(
                first, self._builder.ship, parts, sampler=self.sampler, now=time.monotonic()
            )
        except Exception as exc:  # a bug in batching must not stop the shipping
            self._batch_failed(rows, exc)
            return
        if drained.unsampled:
            self._count_drop(SAMPLED_OUT, drained.unsampled)
            self._unreported += drained.unsampled
        batch = drained.batch
        if batch is None and self._unreported:  # no row to ship: still report those left out
            batch = self._builder.empty(width=first.embeddings.shape[1])
        try:
            for chunk in _chunks(batch, size=self._config.batch_size):
                await self._send_one(chunk)
        finally:
            self._buffer.release(rows)

    def _take_answered(self, *, max_rows: int) -> list[Answered]:
        """Whole answered drains, oldest first, until ``max_rows`` is reached (at least one)."""
        taken, rows = take_whole(self._answered, max_rows=max_rows)
        self._answered_rows -= rows
        return taken

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


async def _off_loop(first: PendingRows, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``call(*args, **kwargs)``; in a worker thread when ``first``'s tensors are on a device:
    reading them back waits for it, and the loop must keep serving meanwhile. Host tensors need
    no copy, and a thread hop would cost more than the batching."""
    if first.embeddings.device.type == "cpu":
        return call(*args, **kwargs)
    return await asyncio.to_thread(call, *args, **kwargs)


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
