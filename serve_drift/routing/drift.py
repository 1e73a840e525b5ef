"""Each arm's own drift monitor, summarised for a comparison: alarm, p-value, estimated accuracy.

Each arm is tested against its own reference by its own monitor; the comparator only reads
their results. A single window under the threshold is a coin the level allows; an **alarm**
is ``alarm_windows`` consecutive drifting windows (a window drifts when any detector says so).
``estimated_accuracy`` is the monitors' label-free estimate when they provide one (issue 10),
averaged over the windows; None otherwise.

>>> from types import SimpleNamespace as R
>>> results = [R(window_index=i, is_drift=i >= 3, p_value=0.5, tested_at=float(i),
...              model_version="v1") for i in range(5)]
>>> s = summarize_drift(results, since=0.0, model_version="v1", alarm_windows=2)
>>> (s.windows, s.drifting, s.alarm, s.estimated_accuracy)
(5, 2, True, None)
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ArmDrift:
    windows: int = 0
    drifting: int = 0
    alarm: bool = False
    latest_p_value: float | None = None
    latest_window: int | None = None
    estimated_accuracy: float | None = None
    available: bool = True  # False when the monitor did not answer

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ArmDrift:
        return cls(**data)


UNAVAILABLE = ArmDrift(available=False)


def summarize_drift(
    results: Iterable[Any], *, since: float | None, model_version: str | None, alarm_windows: int
) -> ArmDrift:
    """Results (``DriftResult``-like, newest last) tested after ``since`` on ``model_version``
    (any version when None), grouped by window."""
    windows: dict[int, list[Any]] = {}
    for result in results:
        if since is not None and result.tested_at < since:
            continue
        if model_version is not None and result.model_version != model_version:
            continue
        windows.setdefault(result.window_index, []).append(result)
    if not windows:
        return ArmDrift()
    ordered = [windows[i] for i in sorted(windows)]
    drifting = [any(r.is_drift for r in w) for w in ordered]
    latest = ordered[-1]
    return ArmDrift(
        windows=len(ordered),
        drifting=sum(drifting),
        alarm=len(drifting) >= alarm_windows and all(drifting[-alarm_windows:]),
        latest_p_value=min(float(r.p_value) for r in latest),
        latest_window=int(latest[0].window_index),
        estimated_accuracy=_estimated_accuracy(ordered),
    )


def _estimated_accuracy(windows: list[list[Any]]) -> float | None:
    # The field arrives with issue 10's monitor results; older results have none.
    values = [
        float(estimate)
        for window in windows
        if (estimate := getattr(window[0], "estimated_accuracy", None)) is not None
    ]
    return statistics.fmean(values) if values else None
