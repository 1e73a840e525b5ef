"""The monitor's detectors, calibrated for its reference set and window size.

What depends only on the reference and the detector config (the null draws of
:mod:`serve_drift.detectors.calibration`) is reused from the reference file when it was stored
there at build time (``serve-drift reference build`` stores the default detector's), and drawn
otherwise: when the monitor starts, and again for a new window size at the first window of that
size, in the monitor's worker thread. Either way it never touches the request path. A log line
says what each calibration found and cost.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from serve_drift.config import CalibrationConfig, DetectorConfig, DriftConfig
from serve_drift.detectors import DriftDetector, build_detector
from serve_drift.detectors.calibration import (
    CalibratedDetector,
    CalibrationMap,
    calibration_key,
    calibration_target,
    cannot_alarm_warning,
    draw_nulls,
    fit_calibration,
    window_ratio_warning,
)
from serve_drift.reference.reference_set import ReferenceSet

logger = logging.getLogger(__name__)

__all__ = ["MonitorDetectors", "build_monitor_detectors", "calibrate_reference"]


def calibrate_reference(
    reference: ReferenceSet,
    *,
    detectors: Sequence[DetectorConfig],
    window_size: int,
    plan: CalibrationConfig | None = None,
) -> ReferenceSet:
    """``reference`` with the null draws of ``detectors`` at ``window_size`` stored in it, so a
    monitor with that configuration starts without drawing them (``reference inspect`` prints
    what they say).

    >>> import numpy as np
    >>> ref = ReferenceSet.from_embeddings(np.random.default_rng(0).normal(size=(60, 3)),
    ...     model_name="m", model_version="1", data_version="d")
    >>> plan = CalibrationConfig(references=5, windows=5, min_references=2)
    >>> ref = calibrate_reference(ref, detectors=[DetectorConfig(backend="native", device="cpu")],
    ...     window_size=20, plan=plan)
    >>> len(ref.calibrations), ref.calibrations[0].null_p_values.shape
    (1, (5, 5))
    """
    draws = draw_nulls(
        detectors,
        embeddings=reference.embeddings,
        probabilities=reference.probabilities,
        window_size=window_size,
        plan=plan or CalibrationConfig(),
        reference_hash=reference.lineage.content_hash,
    )
    return reference.with_calibrations(draws)


@dataclass
class MonitorDetectors:
    """The configured detectors of one monitor, each calibrated (or not, and why)."""

    detectors: list[DriftDetector]
    reference: ReferenceSet
    plan: CalibrationConfig
    window_size: int
    configs: list[DetectorConfig] = field(default_factory=list)  # one per detector
    uncalibrated: dict[str, str] = field(default_factory=dict)  # detector label -> why

    def set_window_size(self, window_size: int) -> None:
        """Calibrate for ``window_size`` from the next window on (lazily, in the worker)."""
        self.window_size = window_size
        for detector in self.detectors:
            if isinstance(detector, CalibratedDetector):
                detector.window_size = window_size
        self._log_ratio()

    def prepare(self) -> None:
        """Calibrate every detector for the current window size now (at start-up)."""
        for detector in self.detectors:
            if isinstance(detector, CalibratedDetector):
                detector.prepare()
        self._log_ratio()

    def warnings(self) -> list[str]:
        """Health reasons: a window too large for the reference, detectors left uncalibrated,
        and calibrated detectors that can no longer alarm. Never calibrates (cheap)."""
        reasons = []
        ratio = self._ratio_warning()
        if ratio is not None:
            reasons.append(ratio)
        reasons.extend(
            f"{label} runs uncalibrated: {why}" for label, why in self.uncalibrated.items()
        )
        reasons.extend(self._cannot_alarm())
        return reasons

    def _cannot_alarm(self) -> list[str]:
        found = []
        for detector, config in zip(self.detectors, self.configs, strict=True):
            calibration = detector.cached() if isinstance(detector, CalibratedDetector) else None
            warning = (
                None
                if calibration is None
                else cannot_alarm_warning(config, calibration, alpha=config.p_value_threshold)
            )
            if warning is not None:
                found.append(f"{detector.name}/{detector.backend} {warning}")
        return found

    def _ratio_warning(self) -> str | None:
        return window_ratio_warning(
            window_size=self.window_size,
            reference_size=len(self.reference.embeddings),
            max_ratio=self.plan.max_window_ratio,
        )

    def _log_ratio(self) -> None:
        warning = self._ratio_warning()
        if warning is not None:
            logger.warning("serve-drift: %s", warning)


def build_monitor_detectors(config: DriftConfig, reference: ReferenceSet) -> MonitorDetectors:
    """Build every configured detector on ``reference``, calibrated unless calibration is off."""
    built = MonitorDetectors(
        detectors=[],
        reference=reference,
        plan=config.calibration,
        window_size=config.window.size,
    )
    drawn: dict[str, np.ndarray] = {}  # null draws shared by detectors with the same target
    for detector_config in config.detectors:
        detector = build_detector(
            detector_config,
            reference=reference.embeddings,
            reference_probabilities=reference.probabilities,
        )
        if config.calibration.enabled:
            detector = _calibrated(detector, detector_config, built=built, drawn=drawn)
        built.detectors.append(detector)
        built.configs.append(detector_config)
    return built


def _calibrated(
    detector: DriftDetector,
    config: DetectorConfig,
    *,
    built: MonitorDetectors,
    drawn: dict[str, np.ndarray],
) -> CalibratedDetector:
    _, transform = calibration_target(config)
    label = f"{detector.name}/{detector.backend}"

    def calibrate(window_size: int) -> CalibrationMap | None:
        try:
            calibration = _calibration(config, window_size=window_size, built=built, drawn=drawn)
        except Exception as exc:  # a detector that cannot calibrate still tests, uncalibrated
            logger.exception("serve-drift: calibrating %s failed", label)
            built.uncalibrated[label] = f"calibration failed ({type(exc).__name__}: {exc})"
            return None
        if calibration is None:
            built.uncalibrated[label] = (
                f"fewer than {built.plan.min_references} bootstrap references fit in "
                f"calibration.budget_s = {built.plan.budget_s:g} s; its false-alarm rate is "
                "controlled only on average over references"
            )
            return None
        built.uncalibrated.pop(label, None)
        _log_calibration(label, calibration, alpha=config.p_value_threshold)
        warning = cannot_alarm_warning(config, calibration, alpha=config.p_value_threshold)
        if warning is not None:
            logger.warning("serve-drift: %s %s", label, warning)
        return calibration

    return CalibratedDetector(
        detector, calibrate=calibrate, window_size=built.window_size, transform=transform
    )


def _calibration(
    config: DetectorConfig,
    *,
    window_size: int,
    built: MonitorDetectors,
    drawn: dict[str, np.ndarray],
) -> CalibrationMap | None:
    reference, plan = built.reference, built.plan
    key = calibration_key(
        config, window_size=window_size, plan=plan, reference_hash=reference.lineage.content_hash
    )
    stored = reference.calibration(key)
    if stored is not None:
        null = stored.null_p_values
    elif key in drawn:
        null = drawn[key]
    else:
        started = time.monotonic()
        (draws,) = draw_nulls(
            [config],
            embeddings=reference.embeddings,
            probabilities=reference.probabilities,
            window_size=window_size,
            plan=plan,
            reference_hash=reference.lineage.content_hash,
        )
        null = draws.null_p_values
        drawn[key] = null
        logger.info(
            "serve-drift: drew %d x %d null p-values for %s at window %d in %.1f s",
            *null.shape,
            config.kind,
            window_size,
            time.monotonic() - started,
        )
    if len(null) < plan.min_references:
        return None
    return fit_calibration(
        null,
        quantile=plan.quantile,
        window_size=window_size,
        reference_size=len(reference.embeddings),
    )


def _log_calibration(label: str, calibration: CalibrationMap, *, alpha: float) -> None:
    logger.info(
        "serve-drift: %s calibrated for window %d (M/N = %.2f): uncalibrated p < %g would "
        "alarm on up to %.3f of clean windows for %.0f %% of references like this one "
        "(typical %.3f); calibrated, it alarms at raw p < %.4f",
        label,
        calibration.window_size,
        calibration.window_ratio,
        alpha,
        calibration.false_alarm_rate(alpha),
        100 * calibration.quantile,
        calibration.false_alarm_rate(alpha, quantile=0.5),
        calibration.raw_threshold(alpha),
    )
