"""Maintenance as an operation: the engine, the stored record, and an Alertmanager silence.

:class:`MaintenanceService` is what the monitor exposes (the HTTP handler in
:mod:`serve_drift.alerts.endpoints` and the CLI call it): starting maintenance holds the engine's
notifications back, persists the window (so a restarted monitor continues it), and, with an
Alertmanager configured, creates a silence on the app's alerts; stopping does the reverse. An
Alertmanager that cannot be reached does not stop maintenance from being set in the engine: the
answer says so in ``silence_error``.

>>> from serve_drift.alerts.config import AlertsConfig
>>> from serve_drift.alerts.pipeline import AlertPipeline
>>> pipeline = AlertPipeline.from_config(AlertsConfig(sinks=()), model_name="digits",
...     started_at=0.0)
>>> service = MaintenanceService(pipeline, clock=lambda: 100.0)
>>> service.start(who="alice", why="retraining", duration_s=600).active
True
>>> service.stop(who="alice").active
False
>>> pipeline.close()
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from serve_drift.alerts.alertmanager import AlertmanagerError, AlertmanagerSilences
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.pipeline import AlertPipeline

__all__ = ["MaintenanceService", "MaintenanceStatus"]

logger = logging.getLogger(__name__)

Persist = Callable[[MaintenanceWindow], object]


@dataclass(frozen=True)
class MaintenanceStatus:
    """The answer of every maintenance operation."""

    active: bool
    window: MaintenanceWindow | None
    silence_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "maintenance": None if self.window is None else self.window.to_dict(),
            "silence_error": self.silence_error,
        }


class MaintenanceService:
    """Start, stop and report maintenance for one :class:`AlertPipeline`.

    ``persist`` stores each window as it starts and ends (e.g. the event store's
    ``write_maintenance``); ``silences`` mirrors it into Alertmanager.
    """

    def __init__(
        self,
        pipeline: AlertPipeline,
        *,
        silences: AlertmanagerSilences | None = None,
        persist: Persist | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._pipeline = pipeline
        self._silences = silences
        self._persist = persist
        self._clock = clock

    def status(self) -> MaintenanceStatus:
        window = self._pipeline.maintenance(at=self._clock())
        return MaintenanceStatus(active=window is not None, window=window)

    def start(self, *, who: str, why: str, duration_s: float) -> MaintenanceStatus:
        """Maintenance from now for ``duration_s`` (replaces one in force)."""
        now = self._clock()
        if self.status().active:
            self.stop(who=who)
        window = MaintenanceWindow.starting(at=now, duration_s=duration_s, who=who, why=why)
        window, error = self._silence(window)
        self._pipeline.set_maintenance(window, at=now)
        self._store(window)
        return MaintenanceStatus(active=True, window=window, silence_error=error)

    def stop(self, *, who: str) -> MaintenanceStatus:
        """End maintenance now; incidents it held back are notified."""
        previous, _ = self._pipeline.clear_maintenance(at=self._clock(), by=who)
        error = None
        if previous is not None:
            self._store(previous)
            error = self._expire(previous)
        return MaintenanceStatus(active=False, window=previous, silence_error=error)

    def _silence(self, window: MaintenanceWindow) -> tuple[MaintenanceWindow, str | None]:
        if self._silences is None:
            return window, None
        try:
            silence_id = self._silences.create(window)
        except AlertmanagerError as exc:
            return window, str(exc)
        return MaintenanceWindow.from_dict({**window.to_dict(), "silence_id": silence_id}), None

    def _expire(self, window: MaintenanceWindow) -> str | None:
        if self._silences is None or window.silence_id is None:
            return None
        try:
            self._silences.expire(window.silence_id)
        except AlertmanagerError as exc:
            return str(exc)
        return None

    def _store(self, window: MaintenanceWindow) -> None:
        if self._persist is None:
            return
        try:
            self._persist(window)
        except Exception:  # the engine holds it anyway; a restart would lose it
            logger.warning("serve-drift: could not store maintenance", exc_info=True)
