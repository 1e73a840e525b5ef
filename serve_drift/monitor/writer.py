"""The event log's own thread: a slow or failing store never stops drift testing.

Every store write of the monitor (compact rows at arrival, sampled events and results of
tested windows, labels) is a job on one bounded queue, run in order by one thread. A full
queue refuses the job at once: the caller counts what it carried as dropped, by reason, and
moves on. Drift tests run elsewhere (their own thread), so a store locked for seconds delays
only the record, never detection.
"""

from __future__ import annotations

import concurrent.futures
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from serve_drift.errors import ServeDriftError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class WriterQueueFull(ServeDriftError):
    """The event-log writer has ``queue_size`` jobs waiting: this one was not taken."""

    code = "event_log_queue_full"


@dataclass(frozen=True)
class _Job:
    work: Callable[[], Any]
    future: concurrent.futures.Future[Any]


class EventLogWriter:
    """One daemon thread running submitted jobs in order, from a queue of ``queue_size``.

    >>> writer = EventLogWriter(queue_size=4)
    >>> writer.submit(lambda: 6 * 7).result(timeout=5)
    42
    >>> writer.close(timeout_s=5)
    """

    def __init__(self, *, queue_size: int, name: str = "serve-drift-event-log") -> None:
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], T]) -> concurrent.futures.Future[T]:
        """Queue ``work``; its future holds the result or the exception it raised.

        Raises :class:`WriterQueueFull` at once when the queue is full (never blocks)."""
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        try:
            self._jobs.put_nowait(_Job(work, future))
        except queue.Full:
            raise WriterQueueFull(f"{self._jobs.maxsize} event-log jobs are waiting") from None
        return future

    def pending(self) -> int:
        return self._jobs.qsize()

    def close(self, *, timeout_s: float) -> None:
        """Let queued jobs finish (for at most ``timeout_s``), then stop the thread."""
        try:
            self._jobs.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout=timeout_s)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            if not job.future.set_running_or_notify_cancel():
                continue
            try:
                job.future.set_result(job.work())
            except BaseException as exc:  # the job's owner decides; the thread goes on
                job.future.set_exception(exc)
