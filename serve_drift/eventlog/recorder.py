"""The event path as the drift monitor uses it: sample, store in batches, export, account.

The drift monitor does three things:

1. ``recorder.accept(len(batch.events))`` when a replica's batch arrives: those events are now
   owed an outcome;
2. ``recorder.record(records, in_drift_window=...)`` once their window is tested (or right away
   for events that will never be in a tested window, with ``in_drift_window=False``);
3. ``recorder.drop(n, reason=...)`` for events it gives up on (e.g. a full pending queue).

Each kept record is written to the :class:`~serve_drift.eventlog.store.EventStore` (chunks of
``max_batch``, one transaction each) and, if an exporter is given, emitted as an OTLP log
record. ``stored`` counts only records the store committed; a failed write counts its records
as ``dropped`` with the store's reason (``store_disk_full``, ``store_locked``...). The OTLP copy
is best effort and does not change the accounting.

>>> import tempfile, os
>>> from serve_drift.eventlog.sampling import Sampler
>>> from serve_drift.eventlog.store import EventStore
>>> recorder = EventRecorder(store=EventStore(os.path.join(tempfile.mkdtemp(), "e.db")),
...                          sampler=Sampler(rate=0.0, seed=0))
>>> recorder.accept(1)
>>> recorder.drop(1, reason="monitor_queue_full")
>>> recorder.accounting().check(settled=True)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from serve_drift.eventlog.otlp_logs import EventLogExporter
from serve_drift.eventlog.sampling import Accounting, AccountingSnapshot, Sampler
from serve_drift.eventlog.schema import DriftTestRecord, EventRecord, InferenceRecord
from serve_drift.eventlog.store import BaseEventStore, StoreError, StoreHealth
from serve_drift.telemetry.instruments import event_log_instruments

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventLogHealth:
    """The event store's health and the accounting of every event the monitor accepted."""

    event_store: StoreHealth
    events: AccountingSnapshot
    degraded: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_store": self.event_store.to_dict(),
            "events": self.events.to_dict(),
            "degraded": self.degraded,
        }


@dataclass(frozen=True)
class RecordOutcome:
    """What became of one ``record()`` call's events."""

    stored: int
    sampled_out: int
    dropped: int
    drop_reason: str | None = None


class EventRecorder:
    """Sampling + durable store + optional OTLP copy + accounting. Thread-safe; blocking I/O."""

    def __init__(
        self,
        *,
        store: BaseEventStore,
        sampler: Sampler,
        exporter: EventLogExporter | None = None,
        max_batch: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.store = store
        self.sampler = sampler
        self.exporter = exporter
        self.max_batch = max_batch
        self._accounting = Accounting()
        self._instruments = event_log_instruments()

    def accept(self, n: int) -> None:
        """``n`` events arrived; each now needs ``record`` or ``drop``."""
        self._accounting.accept(n)
        self._instruments.accepted.add(n)

    def sampled_out_at_replica(self, n: int) -> None:
        """``n`` served events a replica's sampler left out (it shipped a weighted sample):
        accepted and resolved as ``sampled_out`` at once, their sampled neighbours' weights
        standing for them."""
        if n:
            self.accept(n)
            self._accounting.sampled_out(n)
            self._instruments.sampled_out.add(n)

    def record(self, records: Sequence[InferenceRecord], *, in_drift_window: bool) -> RecordOutcome:
        """Sample, store and export accepted events; returns after the store committed them."""
        kept, sampled_out = self.sampler.apply(records, in_drift_window=in_drift_window)
        self._accounting.sampled_out(sampled_out)
        self._instruments.sampled_out.add(sampled_out)
        stored, dropped, reason = 0, 0, None
        for start in range(0, len(kept), self.max_batch):
            chunk = kept[start : start + self.max_batch]
            failure = self._write(chunk)
            if failure is None:
                stored += len(chunk)
            else:
                dropped, reason = dropped + len(chunk), failure
        self._export(kept)
        return RecordOutcome(
            stored=stored, sampled_out=sampled_out, dropped=dropped, drop_reason=reason
        )

    def _write(self, chunk: list[InferenceRecord]) -> str | None:
        """Store one chunk; returns the drop reason on failure (and counts it), else None."""
        started = time.perf_counter()
        try:
            receipt = self.store.write_batch(chunk)
        except StoreError as exc:
            reason = f"store_{exc.reason}"
            self.drop(len(chunk), reason=reason)
            logger.warning(
                "serve-drift: event store write failed (%s); %d events dropped", exc, len(chunk)
            )
            return reason
        self._instruments.write_duration.record(time.perf_counter() - started)
        # Already-present ids were stored by an earlier attempt of the same events: either way
        # each id is in the store exactly once, and each accepted event is counted once here.
        self._accounting.stored(receipt.committed)
        self._instruments.stored.add(receipt.committed)
        return None

    def drop(self, n: int, *, reason: str) -> None:
        """Count ``n`` accepted events as lost, with a short reason."""
        self._accounting.dropped(n, reason=reason)
        self._instruments.dropped.add(n, {"reason": reason})

    def record_drift_results(self, results: Sequence[object]) -> bool:
        """Store and export drift results (``DriftResult`` or ``DriftTestRecord``); False if the
        store failed (already reported in its health)."""
        records = [
            r if isinstance(r, DriftTestRecord) else DriftTestRecord.from_result(r) for r in results
        ]
        self._export(records)
        try:
            self.store.write_drift_results(records)
        except StoreError as exc:
            logger.warning("serve-drift: could not store %d drift results: %s", len(records), exc)
            return False
        return True

    def _export(self, records: Sequence[EventRecord]) -> None:
        if self.exporter is not None and records:
            self.exporter.export(records)

    def accounting(self) -> AccountingSnapshot:
        return self._accounting.snapshot()

    def health(self) -> EventLogHealth:
        """Store health and accounting, for the monitor's ``health()``."""
        store = self.store.health()
        return EventLogHealth(event_store=store, events=self.accounting(), degraded=store.degraded)
