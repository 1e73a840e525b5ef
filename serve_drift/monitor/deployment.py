"""The drift monitor deployment, and binding it with a monitored deployment into one app.

Its methods return typed values (:class:`~serve_drift.messages.DriftResult`,
:class:`~serve_drift.monitor.state.MonitorHealth`, ...) across the Ray boundary; only the HTTP
edge (the ready-made app) turns them into JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from serve_drift.alerts import Incident, MaintenanceStatus
from serve_drift.config import DriftConfig, MonitorUpdate
from serve_drift.eventlog.store import LabelAnswer, StoreError
from serve_drift.messages import DriftResult, EventBatch, InferenceEvent, IngestReceipt
from serve_drift.monitor.alerting import AlertHistory, alerts_config
from serve_drift.monitor.reference_swap import SwapRequest, swap_reference
from serve_drift.monitor.state import MAX_PENDING_WINDOWS, Job, MonitorHealth, MonitorState
from serve_drift.monitor.traffic_sample import TrafficSnapshot
from serve_drift.monitor.windows import Window
from serve_drift.monitor.writer import EventLogWriter, WriterQueueFull
from serve_drift.replica.decorator import MONITOR_KWARG
from serve_drift.telemetry.setup import shutdown_telemetry

logger = logging.getLogger(__name__)

TICK_S = 1.0  # how often time windows are checked for their end, at most


def _lower_priority(niceness: int) -> None:
    try:
        os.nice(max(0, niceness - os.nice(0)))
    except (AttributeError, OSError):  # not on this platform, or not permitted: run as is
        logger.info("serve-drift: could not lower the monitor's CPU priority")


class DriftMonitor:
    """Serve deployment body; see :func:`monitor_deployment` for the deployment.

    Three lanes, so that none waits for another: the event loop takes batches and answers
    calls; one detection thread tests windows (at most ``MAX_PENDING_WINDOWS`` waiting, beyond
    that a window is logged untested and counted); the event log's writer thread does every
    store write (:class:`~serve_drift.monitor.writer.EventLogWriter`, bounded).
    """

    def __init__(self, config: Mapping[str, Any] | DriftConfig) -> None:
        self._config = (
            config if isinstance(config, DriftConfig) else DriftConfig.model_validate(config)
        )
        _lower_priority(self._config.monitor_niceness)
        if self._config.telemetry.configure_sdk:
            from serve_drift.telemetry.setup import configure_telemetry

            configure_telemetry(
                service_name=f"{self._config.model_name}-drift-monitor",
                **self._config.telemetry.sdk_arguments(),
            )
        self._state = MonitorState(self._config)
        self._detection = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-drift-test")
        # Loading and calibrating a new reference takes seconds: never on the detection thread.
        self._swaps = ThreadPoolExecutor(max_workers=1, thread_name_prefix="serve-drift-swap")
        self._writer = EventLogWriter(queue_size=self._config.events.writer_queue_size)
        self._pending_windows = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._ticking = False
        self._state.alerts.start_ticking()  # silence rules fire even without traffic

    async def ingest(self, batch: EventBatch) -> IngestReceipt:
        """Take a replica's batch into the windows at once, then wait (bounded) until the
        event store has recorded its requests; tests and logging run in the background."""
        self._start_ticking()
        for job in self._state.accept(batch):
            self._dispatch(job)
        recorded = await self._record_arrivals(batch.events)
        share = self._state.replicas.share(now=time.monotonic())
        reference = self._state.reference
        return IngestReceipt(
            accepted=len(batch.events),
            recorded=recorded,
            max_rows_per_s=share,
            reference_version=None if reference is None else reference.version,
        )

    def _dispatch(self, job: Job) -> None:
        if not isinstance(job, Window):
            self._log(job, [])
        elif self._pending_windows >= MAX_PENDING_WINDOWS:
            self._log(self._state.skip(job), [])
        else:
            self._pending_windows += 1
            self._spawn(self._detect(job))

    async def _detect(self, window: Window) -> None:
        loop = asyncio.get_running_loop()
        try:
            results = await loop.run_in_executor(self._detection, self._state.test, window)
        finally:
            self._pending_windows -= 1
        self._log(window, results)
        self._state.alert_on(window, results)  # evaluated on the alert lane, not here

    def _log(self, job: Job, results: list[DriftResult]) -> None:
        event_log = self._state.event_log
        if event_log is None:
            return
        try:
            self._writer.submit(functools.partial(self._state.log, job, results))
        except WriterQueueFull:
            event_log.recorder.drop(len(job.events), reason="event_log_queue_full")
            if results:
                logger.warning("serve-drift: %d drift results not stored", len(results))

    async def _record_arrivals(self, events: tuple[InferenceEvent, ...]) -> bool | None:
        event_log = self._state.event_log
        if event_log is None:
            return None
        try:
            future = self._writer.submit(functools.partial(event_log.record_arrivals, events))
            await asyncio.wait_for(
                asyncio.wrap_future(future), self._config.events.arrival_timeout_s
            )
        except (WriterQueueFull, StoreError, TimeoutError) as exc:
            self._state.counts.unrecorded += len(events)
            logger.warning("serve-drift: %d requests not recorded at arrival: %s", len(events), exc)
            return False
        return True

    def _start_ticking(self) -> None:
        # Time windows close on the clock, not only when the next batch arrives.
        if not self._ticking and self._config.window.duration_s is not None:
            self._ticking = True
            self._spawn(self._tick())

    async def _tick(self) -> None:
        interval_s = min(
            TICK_S, (self._config.window.stride_s or self._config.window.duration_s or TICK_S) / 4
        )
        while True:
            await asyncio.sleep(interval_s)
            for job in self._state.due(time.time()):
                self._dispatch(job)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)  # a strong reference until it is done
        task.add_done_callback(self._tasks.discard)

    async def submit_labels(self, items: list[Any]) -> list[LabelAnswer] | None:
        """Join parsed ground-truth labels to served requests by correlation ID; ``None`` when
        the event log is disabled. Raises when the store fails (nothing was joined)."""
        event_log = self._state.event_log
        if event_log is None:
            return None
        future = self._writer.submit(functools.partial(event_log.submit_labels, items))
        return await asyncio.wrap_future(future)

    async def traffic_sample(self, model_version: str | None = None) -> TrafficSnapshot:
        """The uniform sample of accepted traffic, for ``serve-drift reference from-traffic``."""
        return self._state.traffic.snapshot(model_version=model_version)

    async def results(self, limit: int = 50) -> list[DriftResult]:
        """Latest drift results, newest last (after a restart, the stored ones first)."""
        return list(self._state.results)[-limit:]

    async def health(self) -> MonitorHealth:
        return self._state.health(
            pending_windows=self._pending_windows, event_log_queue=self._writer.pending()
        )

    async def maintenance(self, operation: str, **kwargs: Any) -> MaintenanceStatus:
        """``status``, ``start`` (``who``, ``why``, ``duration_s``) or ``stop`` (``who``)
        maintenance; it runs on the alert lane (store, Alertmanager) and is awaited here."""
        if operation not in ("status", "start", "stop"):
            raise ValueError(f"unknown maintenance operation {operation!r}")
        future = self._state.alerts.maintenance_call(operation, **kwargs)
        return await asyncio.wrap_future(future)

    async def alerts(self, state: str | None = "open", limit: int = 100) -> list[Incident]:
        """Incidents newest first (``state``: ``open``, ``resolved`` or ``None`` for all)."""
        work = functools.partial(self._state.alerts.incidents, state=state, limit=limit)
        return await asyncio.get_running_loop().run_in_executor(None, work)

    async def alert(self, incident_id: str) -> AlertHistory | None:
        """One incident (an id or a unique prefix) with its transitions."""
        work = functools.partial(self._state.alerts.history, incident_id)
        return await asyncio.get_running_loop().run_in_executor(None, work)

    def __del__(self) -> None:
        # Serve calls __del__ before it kills a stopped replica: let queued store writes
        # finish, then export buffered telemetry, each within its bound (no exit hook runs).
        with contextlib.suppress(Exception):
            self._writer.close(timeout_s=self._config.events.arrival_timeout_s)
            self._state.alerts.close(timeout_s=self._config.events.arrival_timeout_s)
            shutdown_telemetry()

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config``: window, threshold and reference changes apply without a
        restart.

        Keys (see :class:`~serve_drift.config.MonitorUpdate`): ``window_size``, ``window``
        (any ``WindowConfig`` fields), ``p_value_threshold`` or ``p_value_thresholds``,
        ``on_version_mismatch``, and ``reference_path`` (with ``reference_sha256`` and
        ``changed_by``). An invalid update raises and changes nothing. A reference is swapped
        in the background, between windows; one that cannot be used leaves the current one
        in place, and health says why (:mod:`serve_drift.monitor.reference_swap`).
        """
        update = MonitorUpdate.model_validate(dict(user_config))
        self._state.reconfigure(update)
        self._config = self._state.config
        request = SwapRequest.of(update)
        if request is not None:
            self._swaps.submit(
                swap_reference,
                request,
                state=self._state,
                install=lambda prepared: self._detection.submit(self._state.install, prepared),
                store=self._store_change,
            )

    def _store_change(self, change: Mapping[str, Any]) -> None:
        event_log = self._state.event_log
        if event_log is not None:
            with contextlib.suppress(WriterQueueFull):  # health lists it all the same
                self._writer.submit(functools.partial(event_log.record_reference_change, change))


def monitor_deployment(config: DriftConfig, *, name: str, **options: Any) -> Any:
    """The drift monitor as a Serve deployment; ``options`` go to ``Deployment.options``.

    One replica: it owns the windows. Give it a GPU with ``ray_actor_options={"num_gpus": 1}``.
    """
    from ray import serve

    defaults: dict[str, Any] = {
        "name": name,
        "num_replicas": 1,
        "max_ongoing_requests": 256,
        "ray_actor_options": {"num_cpus": 0.5},
    }
    deployment: Any = serve.deployment(DriftMonitor)
    return deployment.options(**{**defaults, **options})


def monitored_app(
    deployment: Any, *args: Any, monitor_options: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    """``deployment.bind(*args, **kwargs)`` plus the drift monitor it ships embeddings to.

    >>> # app = monitored_app(Classifier, weights="w.pt"); serve.run(app)
    """
    config: DriftConfig | None = getattr(deployment.func_or_class, "serve_drift_config", None)
    if config is None:
        raise TypeError("monitored_app needs a deployment whose class is decorated with @monitored")
    alerts_config(config)  # a bad ``alerts`` section fails here, not in the monitor's start
    options = dict(monitor_options or {})
    name = str(options.pop("name", None) or config.monitor_name(deployment.name))
    monitor_config = config.model_copy(update={"monitor_deployment": name})
    monitor = monitor_deployment(monitor_config, name=name, **options).bind(
        monitor_config.model_dump(mode="json")
    )
    return deployment.bind(*args, **{MONITOR_KWARG: monitor}, **kwargs)
