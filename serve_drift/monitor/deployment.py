"""The drift monitor deployment, and binding it with a monitored deployment into one app.

Its methods return typed values (:class:`~serve_drift.messages.DriftResult`,
:class:`~serve_drift.monitor.state.MonitorHealth`, ...) across the Ray boundary; only the HTTP
edge (the ready-made app) turns them into JSON.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from serve_drift.config import DriftConfig, MonitorUpdate
from serve_drift.eventlog.store import LabelAnswer
from serve_drift.messages import DriftResult, EventBatch
from serve_drift.monitor.state import MAX_PENDING_WINDOWS, Job, MonitorHealth, MonitorState
from serve_drift.monitor.traffic_sample import TrafficSnapshot
from serve_drift.monitor.windows import Window
from serve_drift.replica.decorator import MONITOR_KWARG

logger = logging.getLogger(__name__)


def _lower_priority(niceness: int) -> None:
    try:
        os.nice(max(0, niceness - os.nice(0)))
    except (AttributeError, OSError):  # not on this platform, or not permitted: run as is
        logger.info("serve-drift: could not lower the monitor's CPU priority")


class DriftMonitor:
    """Serve deployment body; see :func:`monitor_deployment` for the deployment."""

    def __init__(self, config: Mapping[str, Any] | DriftConfig) -> None:
        self._config = (
            config if isinstance(config, DriftConfig) else DriftConfig.model_validate(config)
        )
        _lower_priority(self._config.monitor_niceness)
        if self._config.telemetry.configure_sdk:
            from serve_drift.telemetry.setup import configure_telemetry

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

    async def submit_labels(self, items: list[Any]) -> list[LabelAnswer] | None:
        """Join parsed ground-truth labels to stored events by correlation ID; ``None`` when
        the event log is disabled. Raises when the store fails (nothing was joined)."""
        if self._state.event_log is None:
            return None
        return await asyncio.to_thread(self._state.event_log.submit_labels, items)

    async def traffic_sample(self, model_version: str | None = None) -> TrafficSnapshot:
        """The uniform sample of accepted traffic, for ``serve-drift reference from-traffic``."""
        return self._state.traffic.snapshot(model_version=model_version)

    async def results(self, limit: int = 50) -> list[DriftResult]:
        """Latest drift results, newest last."""
        return list(self._state.results)[-limit:]

    async def health(self) -> MonitorHealth:
        return self._state.health(pending_windows=self._pending_windows)

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config``: window and threshold changes apply without a restart.

        Keys (see :class:`~serve_drift.config.MonitorUpdate`): ``window_size``, ``window``
        (any ``WindowConfig`` fields), ``p_value_threshold`` or ``p_value_thresholds``.
        An invalid update raises and changes nothing.
        """
        self._state.reconfigure(MonitorUpdate.model_validate(dict(user_config)))


def monitor_deployment(config: DriftConfig, **options: Any) -> Any:
    """The drift monitor as a Serve deployment; ``options`` go to ``Deployment.options``.

    One replica: it owns the windows. Give it a GPU with ``ray_actor_options={"num_gpus": 1}``.
    """
    from ray import serve

    defaults: dict[str, Any] = {
        "name": config.monitor_deployment,
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
    monitor = monitor_deployment(config, **(monitor_options or {})).bind(
        config.model_dump(mode="json")
    )
    return deployment.bind(*args, **{MONITOR_KWARG: monitor}, **kwargs)
