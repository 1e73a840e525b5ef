"""The monitor's alerting: the app's rules evaluated on every window, label update and tick.

:class:`MonitorAlerts` holds one :class:`~serve_drift.alerts.AlertPipeline` built from the
app's ``alerts`` section (none: the default rules). Every signal is a job on a lane of its own,
one thread behind a bounded queue, so neither the detection thread nor the event loop ever
waits for a rule, a store write or a sink: they hand the job over and go on, and a full lane
drops the signal and counts it. Incidents and maintenance live in the event store, so a
restarted monitor resumes its open incidents and a maintenance window still in force.

>>> from serve_drift.config import DriftConfig
>>> alerts = MonitorAlerts(DriftConfig(alerts={"sinks": []}), store=None, clock=lambda: 0.0)
>>> alerts.tick(at=7200.0).result(timeout=5)[0].incident.rule
'monitor-silent'
>>> alerts.health().open_incidents
1
>>> alerts.close()
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from serve_drift.alerts import (
    AlertmanagerSilences,
    AlertPipeline,
    AlertsConfig,
    DetectorFailed,
    Incident,
    LabelMetrics,
    MaintenanceService,
    MaintenanceStatus,
    MaintenanceWindow,
    SentinelRun,
    Signal,
    Tick,
    Transition,
    WindowTested,
    config_from_mapping,
    maintenance_matchers,
)
from serve_drift.config import DriftConfig
from serve_drift.eventlog.schema import ConceptMetricsRecord
from serve_drift.messages import DriftResult, InferenceEvent
from serve_drift.monitor.event_log import SENTINEL
from serve_drift.monitor.writer import EventLogWriter, WriterQueueFull

__all__ = [
    "AlertHistory",
    "AlertStore",
    "AlertsHealth",
    "MonitorAlerts",
    "WindowMeasures",
    "alerts_config",
]

logger = logging.getLogger(__name__)

LANE_SIZE = 256  # signals waiting for the alert lane; beyond, dropped and counted
T = TypeVar("T")
# A signal's evaluation: its transitions once the lane ran it; None when the lane was full.
Pending = concurrent.futures.Future[list[Transition]] | None


class AlertStore(Protocol):
    """What alerting needs of the event store (the SQLite store and any other backend)."""

    def write_alert_transitions(self, transitions: Sequence[Any]) -> object: ...
    def write_maintenance(self, window: Any) -> None: ...
    def active_maintenance(self, *, at: float) -> dict[str, Any] | None: ...
    def alert_incidents(
        self, *, state: str | None = None, rule: str | None = None, limit: int = 100
    ) -> list[Any]: ...
    def alert_incident(self, incident_id: str) -> Any | None: ...
    def alert_transitions(self, incident_id: str) -> list[Any]: ...


def alerts_config(config: DriftConfig) -> AlertsConfig:
    """The app's ``alerts`` section, validated (``None``: the default rules).

    >>> len(alerts_config(DriftConfig()).rules) > 0
    True
    """
    return config_from_mapping(config.alerts)


@dataclass(frozen=True)
class WindowMeasures:
    """What the monitor measured since the previous tested window, beside the drift tests.

    ``flagged_share``: events ingress flagged, over events received; ``dropped_share``: events
    the event log lost, over events received (``None`` without an event log)."""

    flagged_share: float | None = None
    dropped_share: float | None = None


@dataclass(frozen=True)
class AlertsHealth:
    """The alert pipeline in the monitor's health: open incidents, maintenance, sinks."""

    rules: int
    open_incidents: int
    open: tuple[tuple[str, str], ...]  # (rule, severity) of each open incident
    maintenance: bool
    sinks: dict[str, dict[str, Any]]  # name -> delivered, failed, dropped, last_error, failing
    sink_failures: int
    signals_dropped: int  # the alert lane was full
    lane_pending: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "rules": self.rules,
            "open_incidents": self.open_incidents,
            "open": [{"rule": r, "severity": s} for r, s in self.open],
            "maintenance": self.maintenance,
            "sinks": self.sinks,
            "sink_failures": self.sink_failures,
            "signals_dropped": self.signals_dropped,
            "lane_pending": self.lane_pending,
        }

    def reasons(self) -> list[str]:
        """Why the alert pipeline makes the monitor degraded: a sink whose last notification
        was not delivered, so an on-call engineer would not hear of an incident through it
        (cleared by its next delivery; the counts stay in ``sinks``)."""
        return [
            f"alert sink {name!r} is failing: notifications are not reaching it "
            f"(last error: {sink.get('last_error') or 'its queue is full'})"
            for name, sink in self.sinks.items()
            if sink.get("failing")
        ]


@dataclass(frozen=True)
class AlertHistory:
    """One incident as stored, with its transitions (oldest first) as JSON documents."""

    incident: Incident
    transitions: tuple[dict[str, Any], ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        return {"incident": self.incident.to_dict(), "transitions": list(self.transitions)}


class MonitorAlerts:
    """The alert pipeline of one monitor, on its own lane; its public calls never block.

    ``store``: the event store (incident history, open-incident resume, maintenance), or
    ``None`` when the event log is disabled (then incidents live in memory only).
    """

    def __init__(
        self,
        config: DriftConfig,
        *,
        store: AlertStore | None,
        detectors: Sequence[str] = (),
        accuracy_baseline: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = alerts_config(config)
        self.model_name = config.model_name
        self._store = store
        self._detectors = tuple(detectors)
        self._baseline = accuracy_baseline
        self._clock = clock
        self.pipeline = self._pipeline(started_at=clock())
        self.maintenance = MaintenanceService(
            self.pipeline, silences=self._silences(), persist=self._persist, clock=clock
        )
        self._lane = EventLogWriter(queue_size=LANE_SIZE, name="serve-drift-alerts")
        self._open: tuple[Incident, ...] = tuple(self.pipeline.engine.open_incidents())
        self.signals_dropped = 0
        self._ticker: threading.Thread | None = None
        self._stop = threading.Event()

    # --- construction -------------------------------------------------------------------------

    def _pipeline(self, *, started_at: float) -> AlertPipeline:
        incidents, maintenance = self._resume(at=started_at)
        return AlertPipeline.from_config(
            self.config,
            model_name=self.model_name,
            started_at=started_at,
            record=None if self._store is None else self._store.write_alert_transitions,
            open_incidents=incidents,
            maintenance=maintenance,
        )

    def _resume(self, *, at: float) -> tuple[list[Incident], MaintenanceWindow | None]:
        """Open incidents and maintenance in force, as the previous process left them."""
        if self._store is None:
            return [], None
        try:
            stored = self._store.alert_incidents(state="open", limit=10_000)
            window = self._store.active_maintenance(at=at)
        except Exception as exc:  # an unreadable store starts alerting afresh
            logger.warning("serve-drift: could not resume alerts from the event store: %s", exc)
            return [], None
        incidents = [Incident.from_dict(s.document) for s in stored]
        return incidents, None if window is None else MaintenanceWindow.from_dict(window)

    def _silences(self) -> AlertmanagerSilences | None:
        url = self.config.alertmanager.url
        if url is None:
            return None
        matchers = maintenance_matchers(self.config, model_name=self.model_name)
        return AlertmanagerSilences(url, matchers=matchers)

    def _persist(self, window: MaintenanceWindow) -> None:
        if self._store is not None:
            self._store.write_maintenance(window)

    def use_runner(self, *, detectors: Sequence[str], accuracy_baseline: float | None) -> None:
        """A new reference was swapped in: its detectors and its accuracy baseline from now."""
        self._detectors = tuple(detectors)
        self._baseline = accuracy_baseline

    # --- signals (never block) ----------------------------------------------------------------

    def window_tested(
        self,
        *,
        results: Sequence[DriftResult],
        events: Sequence[InferenceEvent],
        measures: WindowMeasures,
    ) -> Pending:
        """A tested window: its results, and what else the monitor measured over it."""
        if not results:
            return None
        baseline = self._baseline  # the reference that tested it, even if swapped meanwhile
        return self._observe(lambda: self._window_signal(results, events, measures, baseline))

    def _window_signal(
        self,
        results: Sequence[DriftResult],
        events: Sequence[InferenceEvent],
        measures: WindowMeasures,
        baseline: float | None,
    ) -> WindowTested:
        first = results[0]
        return WindowTested(
            at=max(r.tested_at for r in results),
            model_name=first.model_name,
            model_version=first.model_version,
            window_index=first.window_index,
            results=tuple(scoped_results(results)),
            estimated_accuracy=first.estimated_accuracy,
            estimated_accuracy_baseline=baseline,
            flagged_share=measures.flagged_share,
            dropped_share=measures.dropped_share,
            latency_p99_s=latency_p99_s(events),
        )

    def detector_failed(self, *, model_version: str, error: str) -> Pending:
        """The window could not be tested: every configured detector failed on it."""
        at = self._clock()
        signals = [
            DetectorFailed(
                at=at,
                model_name=self.model_name,
                model_version=model_version,
                detector=name,
                error=error[:500],
            )
            for name in scoped_names(self._detectors)
        ]
        return self._observe_all(signals)

    def metrics(self, record: ConceptMetricsRecord) -> Pending:
        """Label metrics of a window (or of a sentinel run) were recomputed."""
        return self._observe(lambda: metrics_signal(record))

    def tick(self, *, at: float | None = None) -> Pending:
        """Time passed: silence rules and reminders."""
        now = self._clock() if at is None else at
        return self._observe(lambda: Tick(at=now))

    def _observe(self, signal: Callable[[], Signal]) -> Pending:
        return self._on_lane(lambda: self._remember(self.pipeline.observe(signal())))

    def _observe_all(self, signals: Sequence[Signal]) -> Pending:
        def work() -> list[Transition]:
            return self._remember([t for s in signals for t in self.pipeline.observe(s)])

        return self._on_lane(work)

    def _remember(self, transitions: list[Transition]) -> list[Transition]:
        # A snapshot for health(): read from any thread without touching the engine.
        self._open = tuple(self.pipeline.engine.open_incidents())
        return transitions

    def _on_lane(self, work: Callable[[], T]) -> concurrent.futures.Future[T] | None:
        try:
            return self._lane.submit(work)
        except WriterQueueFull:
            self.signals_dropped += 1
            logger.warning("serve-drift: the alert lane is full; a signal was dropped")
            return None

    # --- operations (run on the lane, awaited by the caller) ----------------------------------

    def maintenance_call(self, operation: str, **kwargs: Any) -> concurrent.futures.Future[Any]:
        """``status``/``start``/``stop`` of :class:`MaintenanceService`, on the lane (it writes
        the store and may call Alertmanager). Raises ``WriterQueueFull`` when the lane is full.
        """
        method: Callable[..., MaintenanceStatus] = getattr(self.maintenance, operation)
        return self._lane.submit(lambda: self._after(method(**kwargs)))

    def _after(self, status: MaintenanceStatus) -> MaintenanceStatus:
        self._remember([])
        return status

    def incidents(self, *, state: str | None, limit: int) -> list[Incident]:
        """Incidents newest first: from the store (history), else the open ones in memory.
        Blocks on the store: call it from a worker thread."""
        if self._store is None:
            open_now = sorted(self._open, key=lambda i: i.opened_at, reverse=True)
            return [] if state == "resolved" else open_now[:limit]
        stored = self._store.alert_incidents(state=state, limit=limit)
        return [Incident.from_dict(s.document) for s in stored]

    def history(self, incident_id: str) -> AlertHistory | None:
        """One incident (an id or a unique prefix) with its transitions; ``None`` if unknown."""
        if self._store is None:
            found = [i for i in self._open if i.incident_id.startswith(incident_id)]
            return AlertHistory(found[0]) if len(found) == 1 else None
        stored = self._store.alert_incident(incident_id)
        if stored is None:
            return None
        transitions = self._store.alert_transitions(stored.incident_id)
        return AlertHistory(
            Incident.from_dict(stored.document), tuple(t.document for t in transitions)
        )

    # --- timer, health, shutdown --------------------------------------------------------------

    def start_ticking(self) -> None:
        """A daemon thread hands the lane a tick every ``tick_interval_s`` (silence rules)."""
        if self._ticker is not None:
            return
        self._ticker = threading.Thread(target=self._tick_loop, name="serve-drift-alerts-tick")
        self._ticker.daemon = True
        self._ticker.start()

    def _tick_loop(self) -> None:
        while not self._stop.wait(self.config.tick_interval_s):
            self.tick()

    def health(self) -> AlertsHealth:
        stats = self.pipeline.dispatcher.stats()
        at = self._clock()
        return AlertsHealth(
            rules=len(self.config.rules),
            open_incidents=len(self._open),
            open=tuple((i.rule, i.severity) for i in self._open),
            maintenance=self.pipeline.engine.maintenance_active(at=at),
            sinks={name: s.__dict__.copy() for name, s in stats.items()},
            sink_failures=sum(s.failed + s.dropped for s in stats.values()),
            signals_dropped=self.signals_dropped,
            lane_pending=self._lane.pending(),
        )

    def drain(self, *, timeout_s: float = 10.0) -> bool:
        """Wait until every signal handed over so far is evaluated and its notifications sent
        (tests and shutdown); whether that happened in time."""
        deadline = time.monotonic() + timeout_s
        while True:  # a full lane takes the marker once it has room
            try:
                marker = self._lane.submit(lambda: None)
                break
            except WriterQueueFull:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.01)
        try:
            marker.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            return False
        return self.pipeline.dispatcher.drain(timeout_s=timeout_s)

    def close(self, *, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._lane.close(timeout_s=timeout_s)
        self.pipeline.close(timeout_s=timeout_s)


# --- signal construction ----------------------------------------------------------------------


def metrics_signal(record: ConceptMetricsRecord) -> LabelMetrics | SentinelRun:
    """A concept-metrics record as the alert signal it is (a sentinel run, or a window's)."""
    m = record.metrics
    if record.tag == SENTINEL:
        return SentinelRun(
            at=record.computed_at,
            model_name=record.model_name,
            model_version=record.model_version,
            accuracy=m.accuracy,
            n_images=m.n_labelled,
        )
    return LabelMetrics(
        at=record.computed_at,
        model_name=record.model_name,
        model_version=record.model_version,
        window_index=record.window_index,
        n_labels=m.n_labelled,
        accuracy=m.accuracy,
        f1_macro=m.f1_macro,
        ece=m.ece,
    )


def latency_p99_s(events: Sequence[InferenceEvent]) -> float | None:
    """The handler's 99th percentile latency over a window's events (``None``: not measured).

    >>> latency_p99_s([])
    """
    values = [e.latency_s for e in events if e.latency_s is not None and e.latency_s >= 0]
    return float(np.percentile(values, 99)) if values else None


def scoped_names(names: Sequence[str]) -> list[str]:
    """Detector names as alert scopes: ``name`` where unique, else ``name#2``, ``name#3``...

    >>> scoped_names(["combined", "mmd", "mmd"])
    ['combined', 'mmd', 'mmd#2']
    """
    seen: Counter[str] = Counter()
    scoped = []
    for name in names:
        seen[name] += 1
        scoped.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return scoped


def scoped_results(results: Sequence[DriftResult]) -> list[DriftResult]:
    """Results whose detector names are unique within the window: two detectors of one kind
    (alibi's and our MMD) are two scopes, not one history fed twice per window."""
    names = scoped_names([r.detector for r in results])
    return [
        r if r.detector == n else replace(r, detector=n)
        for r, n in zip(results, names, strict=True)
    ]


def share(part: int, whole: int) -> float | None:
    """``part / whole`` clipped to [0, 1]; ``None`` when nothing was received.

    >>> share(1, 4), share(0, 0)
    (0.25, None)
    """
    return None if whole <= 0 else min(1.0, max(0.0, part / whole))
