"""A drill's raw material without an endpoint: phases' traffic and the monitor's results for
windows of known traffic, in the forms the endpoint answers (``DriftResult.to_dict()``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from serve_drift.tools.drill_scenario import Phase, parse_scenario
from serve_drift.tools.drill_traffic import PhaseTraffic, request_id

RUN = "feedc0de"
WINDOW = 10
T0 = 1_000_000.0


def scenario_phases(corrupted: Sequence[bool], **expect: Any) -> tuple[Phase, ...]:
    """One phase per entry (3 windows each): clean, or darkness at severity 3 with ``expect``."""
    phases = [
        {"name": f"p{i}", "windows": 3, "rate_per_s": 10}
        | ({} if not bad else {"corruption": {"name": "darkness", "severity": 3}, "expect": expect})
        for i, bad in enumerate(corrupted)
    ]
    return parse_scenario({"name": "fake", "phases": phases}).phases


def traffic(phases: Sequence[Phase], *, seconds: float = 3.0) -> list[PhaseTraffic]:
    """Each phase ran ``seconds``, one after the other from ``T0``, every request answered."""
    return [
        PhaseTraffic(
            index=i,
            name=p.name,
            clean=p.clean,
            corruption=None if p.corruption is None else p.corruption.describe(),
            started_at=T0 + i * seconds,
            ended_at=T0 + (i + 1) * seconds,
            sent=3 * WINDOW,
            ok=3 * WINDOW,
            rejected={},
            flagged={},
            correct=3 * WINDOW,
        )
        for i, p in enumerate(phases)
    ]


def window_result(
    index: int,
    phases: Sequence[int],
    *,
    p_value: float,
    tested_at: float,
    foreign: int = 0,
    detector: str = "combined",
) -> dict[str, Any]:
    """The monitor's result for window ``index`` holding requests of ``phases`` (and
    ``foreign`` requests of other traffic), as ``GET /drift`` returns it."""
    sample = [request_id(RUN, phase, index * WINDOW + k) for k, phase in enumerate(phases)]
    sample += [f"other-client-{k}" for k in range(foreign)]
    return {
        "test_id": f"t-{detector}-{index}",
        "detector": detector,
        "backend": "native",
        "is_drift": p_value < 0.05,
        "p_value": p_value,
        "p_value_threshold": 0.05,
        "distance": 1.0,
        "distance_threshold": None,
        "window_index": index,
        "window_size": WINDOW,
        "reference_size": 400,
        "model_name": "digits",
        "model_version": "v1",
        "reference_version": "ref-1",
        "first_event_at": tested_at - 1.0,
        "last_event_at": tested_at - 0.1,
        "tested_at": tested_at,
        "duration_s": 0.05,
        "trace_id": "",
        "span_id": "",
        "correlation_ids_sample": sample,
        "component_p_values": {"classifier": p_value, "confidence": 0.5},
        "skipped_components": [],
    }


def run_results(
    p_values: Sequence[float], phase_of_window: Sequence[Sequence[int]]
) -> list[dict[str, Any]]:
    """Window ``i`` holds ``phase_of_window[i]`` and was tested one second after it filled."""
    return [
        window_result(i, phases, p_value=p, tested_at=T0 + i + 1.0)
        for i, (p, phases) in enumerate(zip(p_values, phase_of_window, strict=True))
    ]
