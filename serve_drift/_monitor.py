"""The drift monitor deployment: one per monitored app, fed by every replica."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from serve_drift import _telemetry as tel
from serve_drift._config import DriftConfig, MonitorUpdate
from serve_drift._drift_runner import DriftRunner
from serve_drift._event_log import MonitorEventLog
from serve_drift._events import EventBatch, InferenceEvent
from serve_drift._reference import ReferenceSet
from serve_drift._results import DriftResult
from serve_drift._traffic_sample import TrafficSample
from serve_drift._windows import Window, make_windows, reconfigure_windows
from serve_drift.detectors import build_detector

logger = logging.getLogger(__name__)

MAX_PENDING_WINDOWS = 8
FLAG_UNUSABLE_EMBEDDING = "unusable_embedding"  # non-finite, or not the reference's dimension
MAX_RESULTS_KEPT = 500


@dataclass(frozen=True)
class Untested:
    """Events that will never be in a tested window: kept out by checks, or a skipped window."""

    events: tuple[InferenceEvent, ...]


Job = Window | Untested


class MonitorState:
    """Windows, detectors and results; no Ray here, so it is unit-testable as it is."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.reference = ReferenceSet.load(config.reference_path) if config.reference_path else None
        self.windows = make_windows(config.window)
        self.traffic = TrafficSample(capacity=config.traffic_sample_size)
        self.results: deque[DriftResult] = deque(maxlen=MAX_RESULTS_KEPT)
        self.counts = {
            "received": 0,
            "rejected": 0,
            "flagged": 0,
            "excluded": 0,
            "windows_tested": 0,
            "windows_skipped": 0,
            "test_errors": 0,
        }
        self.last_error: str | None = None
        self.runner = self._build_runner() if self.reference is not None else None
        self.event_log = self._build_event_log()
        if self.event_log is not None:
            # Window indices key stored events and results: a restarted monitor continues them.
            self.windows.start_at(self.event_log.store.next_window_index())
        self._instruments = tel.monitor_instruments()

    def _build_event_log(self) -> MonitorEventLog | None:
        if not self.config.events.enabled:
            return None
        version = "none" if self.reference is None else self.reference.version
        return MonitorEventLog(self.config, reference_version=version)

    def _build_runner(self) -> DriftRunner:
        assert self.reference is not None
        detectors = [
            build_detector(
                d,
                reference=self.reference.embeddings,
                reference_probabilities=self.reference.probabilities,
            )
            for d in self.config.detectors
        ]
        return DriftRunner(
            config=self.config,
            detectors=detectors,
            reference_size=len(self.reference.embeddings),
            reference_version=self.reference.version,
        )

    def accept(self, batch: EventBatch) -> list[Job]:
        """Keep finite rows of the reference's dimension that ingress did not exclude in
        windows; return the windows that filled and, for the event log, the rows kept out."""
        self.counts["received"] += len(batch.events)
        self._instruments.embeddings_received.add(len(batch.events))
        if self.event_log is not None:
            self.event_log.recorder.accept(len(batch.events))
        usable = self._usable_rows(batch.embeddings)
        self.counts["rejected"] += int((~usable).sum())
        keep = usable & ~self._excluded_rows(batch, usable=usable)
        self.traffic.add(batch, keep=keep)
        jobs: list[Job] = list(self.windows.add(batch, keep=keep))
        jobs.extend(self.windows.flush_due(time.time()))  # time windows whose end has passed
        untested = self.windows.take_untested()  # short time windows, full ones' overflow
        if untested:
            jobs.append(Untested(untested))
        if not keep.all():
            jobs.append(Untested(_kept_out_events(batch, keep=keep, usable=usable)))
        return jobs

    def process(self, job: Job) -> list[DriftResult]:
        """Test a window and log its events; or just log events that no test will cover."""
        results = self.test(job) if isinstance(job, Window) else []
        self.log(job, results)
        return results

    def skip(self, window: Window) -> Untested:
        """Tests cannot keep up: the window goes untested, but its events are still logged."""
        self.counts["windows_skipped"] += 1
        return Untested(window.events)

    def log(self, job: Job, results: list[DriftResult]) -> None:
        if self.event_log is None:
            return
        window = job.index if isinstance(job, Window) else None
        try:
            self.event_log.record(job.events, drift_window=window, results=results)
        except Exception:  # the store counts its own failures; anything else is ours
            logger.exception("serve-drift: event log failed")
            self._instruments.monitoring_errors.add(1, {"stage": "event_log"})

    def _excluded_rows(self, batch: EventBatch, *, usable: np.ndarray) -> np.ndarray:
        """Rows ingress flagged and asked to keep out of windows (e.g. blank frames)."""
        excluded = np.array([e.exclude_from_drift for e in batch.events], dtype=bool)
        self.counts["flagged"] += sum(1 for e in batch.events if e.flags)
        n_excluded = int((excluded & usable).sum())
        self.counts["excluded"] += n_excluded
        self._count_rejected("excluded_by_ingress", n_excluded)
        return excluded

    def _usable_rows(self, embeddings: np.ndarray) -> np.ndarray:
        finite = np.isfinite(embeddings).all(axis=1)
        self._count_rejected("non_finite", int((~finite).sum()))
        if self.reference is not None and embeddings.shape[1] != self.reference.embeddings.shape[1]:
            self._count_rejected("dimension_mismatch", int(finite.sum()))
            return np.zeros(len(embeddings), dtype=bool)
        return finite

    def _count_rejected(self, reason: str, n: int) -> None:
        if n:
            self._instruments.embeddings_rejected.add(n, {"reason": reason})

    def test(self, window: Window) -> list[DriftResult]:
        """Run the detectors; a failure is recorded and counted, never propagated to senders."""
        if self.runner is None:
            return []
        try:
            results = self.runner.run(window)
        except Exception as exc:
            logger.exception("serve-drift: drift test failed on window %d", window.index)
            self.counts["test_errors"] += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._instruments.monitoring_errors.add(1, {"stage": "drift_test"})
            return []
        self.results.extend(results)
        self.counts["windows_tested"] += 1
        return results

    def reconfigure(self, update: MonitorUpdate) -> None:
        """Apply a validated runtime update: windows first checked, then both applied."""
        window = update.window_config(self.config.window)
        thresholds = _thresholds(update, count=len(self.config.detectors))
        if window != self.config.window:
            self.windows = reconfigure_windows(self.windows, old=self.config.window, new=window)
        if thresholds is not None and self.runner is not None:
            self.runner.set_thresholds(thresholds)
        self.config = self.config.model_copy(update={"window": window})

    def health(self) -> dict[str, Any]:
        reasons = []
        if self.reference is None:
            reasons.append("no reference set configured: windows are collected but not tested")
        if self.last_error is not None:
            reasons.append(f"last drift test failed: {self.last_error}")
        if self.event_log is not None and self.event_log.store.health().degraded:
            reasons.append("the event store is failing: events are being dropped (see event_log)")
        return {
            "status": "degraded" if reasons else "ready",
            "reasons": reasons,
            "reference": None if self.reference is None else self.reference.lineage_dict(),
            "window_size": self.windows.size,
            "rows_in_open_windows": self.windows.pending_rows(),
            **self.counts,
            "event_log": None if self.event_log is None else self.event_log.health(),
        }


def _thresholds(update: MonitorUpdate, *, count: int) -> list[float] | None:
    if update.p_value_threshold is not None:
        return [update.p_value_threshold] * count
    if update.p_value_thresholds is not None:
        if len(update.p_value_thresholds) != count:
            raise ValueError(
                f"p_value_thresholds has {len(update.p_value_thresholds)} entries for "
                f"{count} configured detectors"
            )
        return list(update.p_value_thresholds)
    return None


def _kept_out_events(
    batch: EventBatch, *, keep: np.ndarray, usable: np.ndarray
) -> tuple[InferenceEvent, ...]:
    """Events kept out of windows; an unusable embedding is a data-quality flag of its own."""
    return tuple(
        event if ok else replace(event, flags=(*event.flags, FLAG_UNUSABLE_EMBEDDING))
        for event, kept, ok in zip(batch.events, keep, usable, strict=True)
        if not kept
    )


def _lower_priority(niceness: int) -> None:
    try:
        os.nice(max(0, niceness - os.nice(0)))
    except (AttributeError, OSError):  # not on this platform, or not permitted: run as is
        logger.info("serve-drift: could not lower the monitor's CPU priority")


class DriftMonitor:
    """Serve deployment body; see :func:`serve_drift.monitor_deployment` for the deployment."""

    def __init__(self, config: Mapping[str, Any] | DriftConfig) -> None:
        self._config = (
            config if isinstance(config, DriftConfig) else DriftConfig.model_validate(config)
        )
        _lower_priority(self._config.monitor_niceness)
        if self._config.telemetry.configure_sdk:
            from serve_drift.telemetry_setup import configure_telemetry

            configure_telemetry(service_name=f"{self._config.model_name}-drift-monitor")
        self._state = MonitorState(self._config)
        self._queue: asyncio.Queue[Job] | None = None
        self._worker: asyncio.Task[None] | None = None
        self._pending_windows = 0

    async def ingest(self, batch: EventBatch) -> int:
        """Accept a batch from a replica; drift tests and event logging run in the background."""
        for job in self._state.accept(batch):
            self._enqueue(job)
        return len(batch.events)

    def _enqueue(self, job: Job) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._work())
        if isinstance(job, Window):
            if self._pending_windows >= MAX_PENDING_WINDOWS:
                job = self._state.skip(job)
            else:
                self._pending_windows += 1
        self._queue.put_nowait(job)

    async def _work(self) -> None:
        # One worker thread at a time: detectors and the SQLite store are used serially.
        assert self._queue is not None
        while True:
            job = await self._queue.get()
            await asyncio.to_thread(self._state.process, job)
            if isinstance(job, Window):
                self._pending_windows -= 1

    async def submit_labels(self, items: list[Any]) -> list[dict[str, Any]] | None:
        """Join parsed ground-truth labels to stored events by correlation ID; ``None`` when
        the event log is disabled. Raises when the store fails (nothing was joined)."""
        if self._state.event_log is None:
            return None
        return await asyncio.to_thread(self._state.event_log.submit_labels, items)

    async def traffic_sample(self, model_version: str | None = None) -> dict[str, Any]:
        """The uniform sample of accepted traffic, for ``serve-drift reference from-traffic``."""
        snapshot = self._state.traffic.snapshot(model_version=model_version)
        return {
            "model_name": self._config.model_name,
            "model_version": snapshot.model_version,
            "embeddings": snapshot.embeddings,
            "probabilities": snapshot.probabilities,
            "seen": snapshot.seen,
            "first_timestamp": snapshot.first_timestamp,
            "last_timestamp": snapshot.last_timestamp,
        }

    async def results(self, limit: int = 50) -> list[dict[str, Any]]:
        """Latest drift results, newest last, as JSON-ready dicts."""
        return [r.to_dict() for r in list(self._state.results)[-limit:]]

    async def health(self) -> dict[str, Any]:
        return {
            **self._state.health(),
            "pending_windows": self._pending_windows,
            "checked_at": time.time(),
            "pid": os.getpid(),  # which process answered: a restarted monitor is a new one
        }

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config``: window and threshold changes apply without a restart.

        Keys (see :class:`~serve_drift._config.MonitorUpdate`): ``window_size``, ``window``
        (any ``WindowConfig`` fields), ``p_value_threshold`` or ``p_value_thresholds``.
        An invalid update raises and changes nothing.
        """
        self._state.reconfigure(MonitorUpdate.model_validate(dict(user_config)))
