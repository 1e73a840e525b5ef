"""What the drift monitor holds: the engine, and where its transitions go. Never raises.

After each tested window (and on labels, sentinel runs, and a timer) the monitor calls
:meth:`AlertPipeline.observe`. The transitions are recorded (``record``, e.g. the event store's
``write_alert_transitions``), counted in metrics, and handed to the sinks' queues; a failure in
any of those is logged and counted (``serve_drift.alerts.errors{stage}``), and detection goes on.
``record`` blocks on disk: call ``observe`` from a worker thread in asyncio code.

How a monitor wires it (``store`` is its event store)::

    open_incidents = [Incident.from_dict(s.document) for s in store.alert_incidents(state="open")]
    stored = store.active_maintenance(at=time.time())
    pipeline = AlertPipeline.from_config(
        alerts_config, model_name=config.model_name, started_at=time.time(),
        record=store.write_alert_transitions, open_incidents=open_incidents,
        maintenance=MaintenanceWindow.from_dict(stored) if stored else None)
    pipeline.observe(WindowTested(...))     # after each window: its DriftResults, estimates
    pipeline.observe(DetectorFailed(...))   # when a detector could not test a window
    pipeline.observe(LabelMetrics(...))     # when a window's label metrics are recomputed
    pipeline.observe(SentinelRun(...))      # after a sentinel run
    pipeline.observe(Tick(at=time.time()))  # every half minute or so: silence, reminders

>>> from serve_drift.alerts.config import AlertsConfig
>>> from serve_drift.alerts.signals import Tick
>>> pipeline = AlertPipeline.from_config(AlertsConfig(sinks=()), model_name="digits",
...     started_at=0.0)
>>> [t.incident.rule for t in pipeline.observe(Tick(at=4000.0))]
['monitor-silent']
>>> pipeline.close()
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Mapping, Sequence

from opentelemetry import metrics
from opentelemetry._logs import LoggerProvider

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Incident, Transition
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.metrics import AlertTelemetry
from serve_drift.alerts.signals import Signal
from serve_drift.alerts.sinks import AlertDispatcher, build_sinks

__all__ = ["AlertPipeline", "Recorder"]

logger = logging.getLogger(__name__)

Recorder = Callable[[Sequence[Transition]], object]


class AlertPipeline:
    """The engine plus its outputs; thread-safe (one lock around the engine)."""

    def __init__(
        self,
        engine: AlertEngine,
        *,
        model_name: str,
        dispatcher: AlertDispatcher | None = None,
        telemetry: AlertTelemetry | None = None,
        record: Recorder | None = None,
        meter: metrics.Meter | None = None,
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.dispatcher = dispatcher or AlertDispatcher([])
        self.telemetry = telemetry or AlertTelemetry(meter=meter)
        self._record = record
        self._lock = threading.Lock()
        self._errors = (meter or metrics.get_meter("serve_drift")).create_counter(
            "serve_drift.alerts.errors", unit="{error}", description="Alert pipeline failures."
        )

    @classmethod
    def from_config(
        cls,
        config: AlertsConfig,
        *,
        model_name: str,
        started_at: float,
        record: Recorder | None = None,
        open_incidents: Sequence[Incident] = (),
        maintenance: MaintenanceWindow | None = None,
        logger_provider: LoggerProvider | None = None,
        environ: Mapping[str, str] | None = None,
        meter: metrics.Meter | None = None,
    ) -> AlertPipeline:
        """Engine, sinks and metrics from the ``alerts`` config section.

        Raises :class:`~serve_drift.alerts.sinks.SinkSecretMissing` at startup when a webhook's
        secret variable is not set: better than sending unsigned alerts later.
        """
        engine = AlertEngine(
            config,
            started_at=started_at,
            model_names=(model_name,),
            open_incidents=open_incidents,
            maintenance=maintenance,
        )
        telemetry = AlertTelemetry(meter=meter)
        dispatcher = AlertDispatcher(
            build_sinks(config.sinks, environ=environ, logger_provider=logger_provider),
            queue_size=config.queue_size,
            severities=[sink.severities for sink in config.sinks],
            on_outcome=telemetry.record_outcome,
        )
        return cls(
            engine,
            model_name=model_name,
            dispatcher=dispatcher,
            telemetry=telemetry,
            record=record,
            meter=meter,
        )

    def observe(self, signal: Signal) -> list[Transition]:
        """Evaluate the rules on ``signal``; returns the transitions (``[]`` if the engine
        failed, which is logged and counted)."""
        try:
            with self._lock:
                transitions = self.engine.observe(signal)
        except Exception:
            self._failed("engine")
            return []
        self._deliver(signal, transitions, at=signal.at)
        return transitions

    def set_maintenance(self, window: MaintenanceWindow, *, at: float) -> list[Transition]:
        with self._lock:
            transitions = self.engine.set_maintenance(window, at=at)
        self._deliver(None, transitions, at=at)
        return transitions

    def clear_maintenance(
        self, *, at: float, by: str
    ) -> tuple[MaintenanceWindow | None, list[Transition]]:
        with self._lock:
            previous, transitions = self.engine.clear_maintenance(at=at, by=by)
        self._deliver(None, transitions, at=at)
        return previous, transitions

    def maintenance(self, *, at: float) -> MaintenanceWindow | None:
        """The maintenance window in force at ``at``, if any."""
        with self._lock:
            window = self.engine.maintenance
            return window if window is not None and window.active(at=at) else None

    def close(self, *, timeout_s: float = 5.0) -> None:
        self.dispatcher.close(timeout_s=timeout_s)

    def _deliver(self, signal: Signal | None, transitions: list[Transition], *, at: float) -> None:
        if transitions and self._record is not None:
            try:
                self._record(transitions)
            except Exception:  # a failing store must not stop notifications
                self._failed("record")
        try:
            self.telemetry.record(
                signal,
                transitions,
                model_name=self.model_name,
                rules=len(self.engine.config.rules),
                maintenance=self.engine.maintenance_active(at=at),
            )
        except Exception:
            self._failed("metrics")
        self.dispatcher.submit(transitions)

    def _failed(self, stage: str) -> None:
        logger.warning("serve-drift alerts: %s failed", stage, exc_info=True)
        try:
            self._errors.add(1, {"stage": stage})
        except Exception:
            logger.debug("serve-drift alerts: could not count the failure", exc_info=True)
