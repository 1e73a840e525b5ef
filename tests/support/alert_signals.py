"""Builders of drift results and window signals for the alert tests: recorded sequences."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Transition
from serve_drift.alerts.signals import Signal, WindowTested
from serve_drift.messages import DriftResult

MODEL = "digits"
VERSION = "v1"
WINDOW_S = 60.0  # one window a minute in these sequences


def drift_result(
    p_value: float,
    *,
    window: int,
    detector: str = "combined",
    version: str = VERSION,
    at: float | None = None,
) -> DriftResult:
    tested_at = window * WINDOW_S if at is None else at
    return DriftResult(
        test_id=f"test-{detector}-{version}-{window}",
        detector=detector,
        backend="native",
        is_drift=p_value < 0.05,
        p_value=p_value,
        p_value_threshold=0.05,
        distance=0.1,
        distance_threshold=None,
        window_index=window,
        window_size=200,
        reference_size=500,
        model_name=MODEL,
        model_version=version,
        reference_version="ref-1",
        first_event_at=tested_at - 30,
        last_event_at=tested_at - 1,
        tested_at=tested_at,
        duration_s=0.05,
        trace_id=f"{window + 1:032x}",
        span_id=f"{window + 1:016x}",
        correlation_ids_sample=tuple(f"req-{window}-{i}" for i in range(20)),
    )


def window(
    window_index: int,
    p_values: float | dict[str, float],
    *,
    version: str = VERSION,
    at: float | None = None,
    **measured: float | None,
) -> WindowTested:
    """A tested window; ``p_values`` is one p-value (detector ``combined``) or per detector."""
    per_detector = p_values if isinstance(p_values, dict) else {"combined": p_values}
    tested_at = window_index * WINDOW_S if at is None else at
    results = tuple(
        drift_result(p, window=window_index, detector=d, version=version, at=tested_at)
        for d, p in sorted(per_detector.items())
    )
    return WindowTested(
        at=tested_at,
        model_name=MODEL,
        model_version=version,
        window_index=window_index,
        results=results,
        **measured,  # type: ignore[arg-type]
    )


def windows(
    p_values: Sequence[float], *, start: int = 0, **measured: float | None
) -> list[WindowTested]:
    return [window(start + i, p, **measured) for i, p in enumerate(p_values)]


def replay(
    signals: Iterable[Signal],
    *,
    config: AlertsConfig | None = None,
    engine: AlertEngine | None = None,
) -> list[Transition]:
    """Every transition the signals cause, in order."""
    engine = engine or AlertEngine(config or AlertsConfig(), started_at=0.0, model_names=(MODEL,))
    return [t for signal in signals for t in engine.observe(signal)]


def kinds(transitions: Iterable[Transition], rule: str | None = None) -> list[str]:
    return [t.kind for t in transitions if rule is None or t.incident.rule == rule]
