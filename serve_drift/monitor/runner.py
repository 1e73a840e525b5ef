"""Runs every configured detector on a window, with a span linked to the window's requests."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
from opentelemetry import trace
from opentelemetry.trace import Link, SpanContext, TraceFlags

from serve_drift.config import DriftConfig
from serve_drift.detectors import DriftDetector
from serve_drift.detectors.accuracy import AccuracyEstimator
from serve_drift.messages import DriftResult, DriftStatistic, InferenceEvent
from serve_drift.monitor.windows import Window
from serve_drift.telemetry import instruments as tel

SPAN_NAME = "serve_drift.drift_test"


def sample_events(events: Sequence[InferenceEvent], *, k: int) -> list[InferenceEvent]:
    """Evenly spaced sample, so links cover the whole window and stay reproducible."""
    if k <= 0:
        return []
    if len(events) <= k:
        return list(events)
    picks = np.linspace(0, len(events) - 1, num=k).round().astype(int)
    return [events[i] for i in picks]


def _link(event: InferenceEvent) -> Link | None:
    try:
        context = SpanContext(
            trace_id=int(event.trace_id, 16),
            span_id=int(event.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED),
        )
    except ValueError:
        return None
    if not context.is_valid:
        return None
    return Link(context, {tel.ATTR_CORRELATION_ID: event.correlation_id})


def _optional_attributes(result: DriftResult) -> dict[str, float]:
    """The raw p-value of a calibrated detector and the window's accuracy estimate, if any."""
    values = {
        tel.ATTR_P_VALUE_UNCALIBRATED: result.uncalibrated_p_value,
        tel.ATTR_ESTIMATED_ACCURACY: result.estimated_accuracy,
    }
    return {name: value for name, value in values.items() if value is not None}


class DriftRunner:
    """Owns the detectors for one reference set and turns windows into typed results."""

    def __init__(
        self,
        *,
        config: DriftConfig,
        detectors: Sequence[DriftDetector],
        reference_size: int,
        reference_version: str,
        reference_model_version: str = "",
        accuracy: AccuracyEstimator | None = None,
    ) -> None:
        self._config = config
        self._accuracy = accuracy
        self._detectors = list(detectors)
        self._reference_size = reference_size
        self._reference_version = reference_version
        self._reference_model_version = reference_model_version
        self._p_value_thresholds = tuple(d.p_value_threshold for d in config.detectors)
        self._instruments = tel.monitor_instruments()

    def run(self, window: Window) -> list[DriftResult]:
        sampled = sample_events(window.events, k=self._config.telemetry.link_sample_size)
        links = [link for link in map(_link, sampled) if link is not None]
        estimate = self._estimate_accuracy(window)
        if estimate is not None:
            self._record_estimate(estimate, window)
        # The same estimate goes on every result of the window, so any alert rule can use it.
        return [
            self._run_one(detector, threshold, window, links, sampled, estimate)
            for detector, threshold in zip(self._detectors, self._thresholds(), strict=True)
        ]

    @property
    def detector_names(self) -> tuple[str, ...]:
        """The detectors' names, in the config's order (the alert rules' scopes)."""
        return tuple(d.name for d in self._detectors)

    @property
    def accuracy_baseline(self) -> float | None:
        """The accuracy estimate on the reference itself: a clean window's expected estimate
        (the alert signal ``estimated_accuracy_baseline``), or None without an estimator."""
        return None if self._accuracy is None else self._accuracy.baseline

    def _estimate_accuracy(self, window: Window) -> float | None:
        """The window's label-free accuracy estimate, once for all its results."""
        if self._accuracy is None or window.probabilities is None:
            return None
        found = self._accuracy.estimate(
            embeddings=window.embeddings, probabilities=window.probabilities
        )
        return found.accuracy

    def _record_estimate(self, estimate: float, window: Window) -> None:
        self._instruments.estimated_accuracy.set(
            estimate,
            {
                tel.ATTR_MODEL_NAME: self._config.model_name,
                tel.ATTR_MODEL_VERSION: window.model_version,
                tel.ATTR_REFERENCE_VERSION: self._reference_version,
            },
        )

    def _thresholds(self) -> list[float]:
        return list(self._p_value_thresholds)

    @property
    def thresholds(self) -> tuple[float, ...]:
        """The p-value thresholds in force, one per detector (a new runner takes them over)."""
        return self._p_value_thresholds

    def set_thresholds(self, thresholds: Sequence[float]) -> None:
        """New p-value thresholds, one per detector, for the windows tested from now on."""
        if len(thresholds) != len(self._detectors):
            raise ValueError(f"{len(thresholds)} thresholds for {len(self._detectors)} detectors")
        self._p_value_thresholds = tuple(float(t) for t in thresholds)

    def _run_one(
        self,
        detector: DriftDetector,
        threshold: float,
        window: Window,
        links: list[Link],
        sampled: list[InferenceEvent],
        estimate: float | None,
    ) -> DriftResult:
        attributes = self._attributes(detector, window)
        with tel.tracer().start_as_current_span(
            SPAN_NAME, links=links, attributes={**attributes, **self._version_attributes(window)}
        ) as span:
            started = time.perf_counter()
            statistic = detector.test(window.embeddings, probabilities=window.probabilities)
            duration = time.perf_counter() - started
            result = replace(
                self._result(detector, threshold, window, statistic, duration, span, sampled),
                estimated_accuracy=estimate,
            )
            span.set_attributes(
                {
                    tel.ATTR_P_VALUE: result.p_value,
                    tel.ATTR_DISTANCE: result.distance,
                    tel.ATTR_IS_DRIFT: result.is_drift,
                    tel.ATTR_TEST_ID: result.test_id,
                    **{f"{tel.ATTR_P_VALUE}.{name}": p for name, p in result.component_p_values},
                    **_optional_attributes(result),
                }
            )
        self._record_metrics(result, attributes)
        return result

    def _attributes(self, detector: DriftDetector, window: Window) -> dict[str, str | int]:
        return {
            tel.ATTR_MODEL_NAME: self._config.model_name,
            tel.ATTR_MODEL_VERSION: window.model_version,
            tel.ATTR_REFERENCE_VERSION: self._reference_version,
            tel.ATTR_DETECTOR: detector.name,
            tel.ATTR_BACKEND: detector.backend,
            tel.ATTR_WINDOW_INDEX: window.index,
            tel.ATTR_WINDOW_SIZE: len(window.embeddings),
        }

    def _version_attributes(self, window: Window) -> dict[str, str | bool]:
        """Span attributes only (not metric labels: they would split every series)."""
        return {
            tel.ATTR_REFERENCE_MODEL_VERSION: self._reference_model_version,
            tel.ATTR_VERSION_MISMATCH: self._mismatch(window),
        }

    def _mismatch(self, window: Window) -> bool:
        known = bool(self._reference_model_version)
        return known and window.model_version != self._reference_model_version

    def _result(
        self,
        detector: DriftDetector,
        threshold: float,
        window: Window,
        statistic: DriftStatistic,
        duration: float,
        span: trace.Span,
        sampled: list[InferenceEvent],
    ) -> DriftResult:
        span_context = span.get_span_context()
        return DriftResult(
            test_id=uuid.uuid4().hex,
            detector=detector.name,
            backend=detector.backend,
            is_drift=statistic.p_value < threshold,
            p_value=statistic.p_value,
            p_value_threshold=threshold,
            distance=statistic.distance,
            distance_threshold=statistic.distance_threshold,
            window_index=window.index,
            window_size=len(window.embeddings),
            reference_size=self._reference_size,
            model_name=self._config.model_name,
            model_version=window.model_version,
            reference_version=self._reference_version,
            first_event_at=window.events[0].timestamp,
            last_event_at=window.events[-1].timestamp,
            tested_at=time.time(),
            duration_s=duration,
            trace_id=trace.format_trace_id(span_context.trace_id),
            span_id=trace.format_span_id(span_context.span_id),
            correlation_ids_sample=tuple(e.correlation_id for e in sampled),
            component_p_values=tuple((c.name, c.p_value) for c in statistic.components),
            skipped_components=statistic.skipped,
            uncalibrated_p_value=statistic.uncalibrated_p_value,
            reference_model_version=self._reference_model_version or None,
            version_mismatch=self._mismatch(window),
        )

    def _record_metrics(self, result: DriftResult, attributes: dict[str, str | int]) -> None:
        metric_attrs = {
            k: v
            for k, v in attributes.items()
            if k not in (tel.ATTR_WINDOW_INDEX, tel.ATTR_WINDOW_SIZE)
        }
        inst = self._instruments
        inst.windows_tested.add(1, {**metric_attrs, tel.ATTR_IS_DRIFT: result.is_drift})
        inst.p_value.record(result.p_value, metric_attrs)
        inst.distance.record(max(result.distance, 0.0), metric_attrs)
        inst.p_value_last.set(result.p_value, metric_attrs)
        inst.distance_last.set(result.distance, metric_attrs)
        inst.is_drift.set(int(result.is_drift), metric_attrs)
        inst.test_duration.record(result.duration_s, metric_attrs)
