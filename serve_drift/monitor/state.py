"""The drift monitor's state: windows, detectors, results and counts. No Ray here."""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from serve_drift.config import DriftConfig, MonitorUpdate
from serve_drift.eventlog.recorder import EventLogHealth
from serve_drift.eventlog.store import StoreError
from serve_drift.messages import DriftResult, EventBatch, InferenceEvent
from serve_drift.monitor.alerting import AlertsHealth, MonitorAlerts, WindowMeasures, share
from serve_drift.monitor.calibration import MonitorDetectors
from serve_drift.monitor.event_log import MonitorEventLog
from serve_drift.monitor.reference_swap import (
    PreparedReference,
    ReferenceChange,
    build_runner,
    check_versions,
)
from serve_drift.monitor.runner import DriftRunner
from serve_drift.monitor.shares import ReplicaShares
from serve_drift.monitor.traffic_sample import TrafficSample
from serve_drift.monitor.windows import Window, make_windows, reconfigure_windows
from serve_drift.reference.reference_set import ReferenceSet
from serve_drift.telemetry import instruments as tel

logger = logging.getLogger(__name__)

MAX_PENDING_WINDOWS = 8
FLAG_UNUSABLE_EMBEDDING = "unusable_embedding"  # non-finite, or not the reference's dimension
MAX_RESULTS_KEPT = 500
MAX_CHANGES_KEPT = 20  # reference changes listed in health (all are in the event store)


@dataclass
class MonitorCounts:
    """What the monitor did with the rows it received, since it started."""

    received: int = 0
    rejected: int = 0  # non-finite, or not the reference's dimension
    flagged: int = 0
    excluded: int = 0  # kept out of windows by ingress (e.g. blank frames, sentinel runs)
    windows_tested: int = 0
    windows_skipped: int = 0  # tests could not keep up: logged, not tested
    test_errors: int = 0
    unrecorded: int = 0  # reached windows, but the store did not record them at arrival
    unsampled: int = 0  # served rows replicas left out of their sample (counted, not shipped)
    windows_refused: int = 0  # not tested: the reference is of another model version (refuse)


@dataclass(frozen=True)
class MonitorHealth:
    """The monitor's answer to ``health()``; ``pid`` says which process answered (a restarted
    monitor is a new one). JSON only at the HTTP edge (:meth:`to_dict`)."""

    status: str  # "ready" or "degraded"
    reasons: tuple[str, ...]
    reference: Mapping[str, Any] | None  # the reference set's lineage, with its version
    window_size: int
    rows_in_open_windows: int
    rows_lost_at_restart: int  # rows of the window open when the previous process stopped
    pending_windows: int
    event_log_queue: int  # store jobs waiting for the event log's writer
    counts: MonitorCounts
    event_log: EventLogHealth | None
    checked_at: float
    pid: int
    alerts: AlertsHealth | None = None  # open incidents, maintenance, sink outcomes
    # The reference's model version against the deployment's, and the latest reference
    # changes (swaps applied or refused), oldest first.
    version_check: Mapping[str, Any] | None = None
    reference_changes: tuple[Mapping[str, Any], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, with the counts at the top level beside the rest."""
        nested = ("counts", "event_log", "alerts")
        data = {k: v for k, v in asdict(self).items() if k not in nested}
        data["reasons"] = list(self.reasons)
        data["reference_changes"] = [dict(change) for change in self.reference_changes]
        data["event_log"] = None if self.event_log is None else self.event_log.to_dict()
        data["alerts"] = None if self.alerts is None else self.alerts.to_dict()
        return {**data, **asdict(self.counts)}


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
        self.traffic = TrafficSample(
            capacity=config.traffic_sample_size, model_name=config.model_name
        )
        self.results: deque[DriftResult] = deque(maxlen=MAX_RESULTS_KEPT)
        self.counts = MonitorCounts()
        self.replicas = ReplicaShares(
            budget_rows_per_s=config.shipping.monitor_max_rows_per_s,
            window_s=config.shipping.share_window_s,
        )
        self.last_error: str | None = None
        self.version_check = check_versions(config, self.reference)
        self.swap_error: str | None = None  # the last swap's refusal, until one succeeds
        self.reference_changes: deque[ReferenceChange] = deque(maxlen=MAX_CHANGES_KEPT)
        self.detectors: MonitorDetectors | None = None  # calibrated for reference and window
        self.runner = self._build_runner() if self.reference is not None else None
        self.event_log = self._build_event_log()
        self.rows_lost_at_restart = 0
        if self.event_log is not None:
            self._resume_from(self.event_log)
        self._instruments = tel.monitor_instruments()
        self.alerts = self._build_alerts()
        self._alerted = (0, 0, 0)  # received, flagged, dropped at the previous tested window

    def _resume_from(self, event_log: MonitorEventLog) -> None:
        """A restarted monitor continues window numbering (indices key stored events and
        results), answers with the results it had, and says how many rows of the window that
        was open when it stopped were lost with that process's memory."""
        try:
            self.windows.start_at(event_log.store.next_window_index())
            self.results.extend(event_log.recent_results(limit=MAX_RESULTS_KEPT))
            since = self.results[-1].last_event_at if self.results else 0.0
            self.rows_lost_at_restart = event_log.store.count_served(unwindowed_since=since)
            stored = event_log.reference_changes(limit=MAX_CHANGES_KEPT)
            self.reference_changes.extend(ReferenceChange.from_dict(c) for c in stored)
        except StoreError as exc:  # an unreadable store starts the monitor afresh, degraded
            logger.warning("serve-drift: could not resume from the event store: %s", exc)

    def _build_event_log(self) -> MonitorEventLog | None:
        if not self.config.events.enabled:
            return None
        version = "none" if self.reference is None else self.reference.version
        return MonitorEventLog(self.config, reference_version=version)

    def _build_alerts(self) -> MonitorAlerts:
        store = None if self.event_log is None else self.event_log.store
        alerts = MonitorAlerts(
            self.config,
            store=store,
            detectors=() if self.runner is None else self.runner.detector_names,
            accuracy_baseline=None if self.runner is None else self.runner.accuracy_baseline,
        )
        if self.event_log is not None:
            self.event_log.on_metrics = alerts.metrics  # label and sentinel metrics
        return alerts

    def alert_on(self, window: Window, results: list[DriftResult]) -> None:
        """Hand a tested window (or a failed test) to the alert lane; never blocks."""
        if results:
            measures = self._window_measures()
            self.alerts.window_tested(results=results, events=window.events, measures=measures)
        elif self.runner is not None and self.last_error is not None:
            self.alerts.detector_failed(model_version=window.model_version, error=self.last_error)

    def _window_measures(self) -> WindowMeasures:
        """Flagged and lost shares of the events received since the previous tested window."""
        lost = None
        if self.event_log is not None:
            lost = self.event_log.recorder.accounting().dropped_total
        now = (self.counts.received, self.counts.flagged, lost or 0)
        before, self._alerted = self._alerted, now
        received = now[0] - before[0]
        return WindowMeasures(
            flagged_share=share(now[1] - before[1], received),
            dropped_share=None if lost is None else share(now[2] - before[2], received),
        )

    def _build_runner(self) -> DriftRunner:
        assert self.reference is not None
        # Calibration: at start-up, before any traffic is tested.
        self.detectors, runner = build_runner(self.config, self.reference)
        return runner

    def install(self, prepared: PreparedReference) -> None:
        """Swap in a prepared reference. Runs on the detection thread, between two windows."""
        if self.runner is not None:
            prepared.runner.set_thresholds(self.runner.thresholds)  # runtime changes persist
        self.reference, self.detectors = prepared.reference, prepared.detectors
        self.runner = prepared.runner
        self.alerts.use_runner(
            detectors=self.runner.detector_names, accuracy_baseline=self.runner.accuracy_baseline
        )
        self.version_check = check_versions(self.config, prepared.reference)
        if self.event_log is not None:
            self.event_log.reference_version = prepared.reference.version
        self.swap_error = None
        self.reference_changes.append(prepared.change)

    def refuse(self, change: ReferenceChange) -> None:
        """A swap that could not be made: the current reference stays, health says why."""
        self.swap_error = (
            f"{change.code}: reference swap to {change.path} refused, still testing against "
            f"{change.from_version}: {change.reason}"
        )
        self.reference_changes.append(change)

    def accept(self, batch: EventBatch) -> list[Job]:
        """Keep finite rows of the reference's dimension that ingress did not exclude in
        windows; return the windows that filled and, for the event log, the rows kept out."""
        self.counts.received += len(batch.events)
        self.counts.unsampled += batch.unsampled
        self.replicas.heard(batch.replica_id, now=time.monotonic())
        self._instruments.embeddings_received.add(len(batch.events))
        if self.event_log is not None:
            self.event_log.recorder.accept(len(batch.events))
            self.event_log.recorder.sampled_out_at_replica(batch.unsampled)
        usable = self._usable_rows(batch)
        self.counts.rejected += int((~usable).sum())
        keep = usable & ~self._excluded_rows(batch, usable=usable)
        self.traffic.add(batch, keep=keep)
        jobs: list[Job] = list(self.windows.add(batch, keep=keep))
        if not keep.all():
            jobs.append(Untested(_kept_out_events(batch, keep=keep, usable=usable)))
        return [*jobs, *self.due(time.time())]

    def due(self, now: float) -> list[Job]:
        """Time windows whose end has passed, and rows no window will test (short time
        windows, full ones' overflow). Called on every batch and on the monitor's timer, so a
        time window closes even when traffic stops."""
        jobs: list[Job] = list(self.windows.flush_due(now))
        untested = self.windows.take_untested()
        if untested:
            jobs.append(Untested(untested))
        return jobs

    def process(self, job: Job) -> list[DriftResult]:
        """Test a window and log its events; or just log events that no test will cover."""
        results = self.test(job) if isinstance(job, Window) else []
        self.log(job, results)
        if isinstance(job, Window):
            self.alert_on(job, results)
        return results

    def skip(self, window: Window) -> Untested:
        """Tests cannot keep up: the window goes untested, but its events are still logged."""
        self.counts.windows_skipped += 1
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
        self.counts.flagged += sum(1 for e in batch.events if e.flags)
        n_excluded = int((excluded & usable).sum())
        self.counts.excluded += n_excluded
        self._count_rejected("excluded_by_ingress", n_excluded)
        return excluded

    def _usable_rows(self, batch: EventBatch) -> np.ndarray:
        """Rows a detector can test: a finite embedding of the reference's dimension and, when
        the replica sent softmax rows, a finite probability row (one NaN must not cost the
        whole window: the row goes, counted, like a bad embedding)."""
        embeddings = batch.embeddings
        finite = np.isfinite(embeddings).all(axis=1)
        self._count_rejected("non_finite", int((~finite).sum()))
        if batch.probabilities is not None:
            probabilities = np.asarray(batch.probabilities)
            valid = np.isfinite(probabilities).all(axis=1)
            valid &= ((probabilities >= 0) & (probabilities <= 1)).all(axis=1)
            self._count_rejected("invalid_probabilities", int((finite & ~valid).sum()))
            finite &= valid
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
        if self.version_check is not None and self.version_check.refuses(window.model_version):
            self.counts.windows_refused += 1
            return []
        try:
            results = [
                replace(r, sampling_rate=window.sampling_rate) for r in self.runner.run(window)
            ]
        except Exception as exc:
            logger.exception("serve-drift: drift test failed on window %d", window.index)
            self.counts.test_errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            self._instruments.monitoring_errors.add(1, {"stage": "drift_test"})
            return []
        self.results.extend(results)
        self.counts.windows_tested += 1
        return results

    def reconfigure(self, update: MonitorUpdate) -> None:
        """Apply a validated runtime update: windows first checked, then both applied."""
        window = update.window_config(self.config.window)
        thresholds = _thresholds(update, count=len(self.config.detectors))
        if window != self.config.window:
            self.windows = reconfigure_windows(self.windows, old=self.config.window, new=window)
            if self.detectors is not None:  # recalibrated at the first window of the new size
                self.detectors.set_window_size(window.size)
        if thresholds is not None and self.runner is not None:
            self.runner.set_thresholds(thresholds)
        policy = update.on_version_mismatch or self.config.on_version_mismatch
        self.config = self.config.model_copy(
            update={"window": window, "on_version_mismatch": policy}
        )
        self.version_check = check_versions(self.config, self.reference)

    def health(self, *, pending_windows: int = 0, event_log_queue: int = 0) -> MonitorHealth:
        reasons = []
        if self.reference is None:
            reasons.append("no reference set configured: windows are collected but not tested")
        if self.last_error is not None:
            reasons.append(f"last drift test failed: {self.last_error}")
        reasons.extend(self._reference_reasons())
        if self.detectors is not None:
            reasons.extend(self.detectors.warnings())
        event_log = None if self.event_log is None else self.event_log.health()
        if event_log is not None and event_log.degraded:
            reasons.append("the event store is failing: events are being dropped (see event_log)")
        alerts = self.alerts.health()
        reasons.extend(alerts.reasons())
        return MonitorHealth(
            status="degraded" if reasons else "ready",
            reasons=tuple(reasons),
            reference=None if self.reference is None else self.reference.lineage_dict(),
            window_size=self.windows.size,
            rows_in_open_windows=self.windows.pending_rows(),
            rows_lost_at_restart=self.rows_lost_at_restart,
            pending_windows=pending_windows,
            event_log_queue=event_log_queue,
            counts=replace(self.counts),
            event_log=event_log,
            checked_at=time.time(),
            pid=os.getpid(),
            alerts=alerts,
            version_check=None if self.version_check is None else self.version_check.to_dict(),
            reference_changes=tuple(c.to_dict() for c in self.reference_changes),
        )

    def _reference_reasons(self) -> list[str]:
        check = None if self.version_check is None else self.version_check.reason()
        return [reason for reason in (check, self.swap_error) if reason is not None]


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
