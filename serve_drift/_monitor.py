"""The drift monitor deployment: one per monitored app, fed by every replica."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

import numpy as np

from serve_drift import _telemetry as tel
from serve_drift._config import DriftConfig
from serve_drift._drift_runner import DriftRunner
from serve_drift._events import EventBatch
from serve_drift._reference import ReferenceSet
from serve_drift._results import DriftResult
from serve_drift._windows import CountWindows, Window
from serve_drift.detectors import build_detector

logger = logging.getLogger(__name__)

MAX_PENDING_WINDOWS = 8
MAX_RESULTS_KEPT = 500


class MonitorState:
    """Windows, detectors and results; no Ray here, so it is unit-testable as it is."""

    def __init__(self, config: DriftConfig) -> None:
        self.config = config
        self.reference = ReferenceSet.load(config.reference_path) if config.reference_path else None
        self.windows = CountWindows(size=config.window.size)
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
        self._instruments = tel.monitor_instruments()

    def _build_runner(self) -> DriftRunner:
        assert self.reference is not None
        detectors = [
            build_detector(d, reference=self.reference.embeddings) for d in self.config.detectors
        ]
        return DriftRunner(
            config=self.config,
            detectors=detectors,
            reference_size=len(self.reference.embeddings),
            reference_version=self.reference.version,
        )

    def accept(self, batch: EventBatch) -> list[Window]:
        """Keep finite rows of the reference's dimension that ingress did not exclude; return
        windows that filled."""
        self.counts["received"] += len(batch.events)
        self._instruments.embeddings_received.add(len(batch.events))
        usable = self._usable_rows(batch.embeddings)
        self.counts["rejected"] += int((~usable).sum())
        return self.windows.add(batch, keep=usable & ~self._excluded_rows(batch, usable=usable))

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

    def health(self) -> dict[str, Any]:
        reasons = []
        if self.reference is None:
            reasons.append("no reference set configured: windows are collected but not tested")
        if self.last_error is not None:
            reasons.append(f"last drift test failed: {self.last_error}")
        return {
            "status": "degraded" if reasons else "ready",
            "reasons": reasons,
            "reference": None if self.reference is None else self.reference.lineage_dict(),
            "window_size": self.windows.size,
            "rows_in_open_windows": self.windows.pending_rows(),
            **self.counts,
        }


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
        self._queue: asyncio.Queue[Window] | None = None
        self._worker: asyncio.Task[None] | None = None

    async def ingest(self, batch: EventBatch) -> int:
        """Accept a batch from a replica; drift tests run in the background."""
        for window in self._state.accept(batch):
            self._enqueue(window)
        return len(batch.events)

    def _enqueue(self, window: Window) -> None:
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._worker = asyncio.get_running_loop().create_task(self._test_windows())
        if self._queue.qsize() >= MAX_PENDING_WINDOWS:
            # Tests cannot keep up: skip the oldest pending window, and say so in counters.
            self._queue.get_nowait()
            self._state.counts["windows_skipped"] += 1
        self._queue.put_nowait(window)

    async def _test_windows(self) -> None:
        assert self._queue is not None
        while True:
            window = await self._queue.get()
            await asyncio.to_thread(self._state.test, window)

    async def results(self, limit: int = 50) -> list[dict[str, Any]]:
        """Latest drift results, newest last, as JSON-ready dicts."""
        return [r.to_dict() for r in list(self._state.results)[-limit:]]

    async def health(self) -> dict[str, Any]:
        pending = 0 if self._queue is None else self._queue.qsize()
        return {**self._state.health(), "pending_windows": pending, "checked_at": time.time()}

    def reconfigure(self, user_config: Mapping[str, Any]) -> None:
        """Serve ``user_config``: ``{"window_size": int}`` applies without a restart."""
        size = user_config.get("window_size")
        if size is not None:
            self._state.windows.resize(int(size))
