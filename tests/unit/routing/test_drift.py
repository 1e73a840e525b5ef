"""Each arm's own drift results, summarised: an alarm is consecutive drifting windows."""

from __future__ import annotations

from types import SimpleNamespace

from serve_drift.routing.drift import summarize_drift


def _result(
    window: int, drift: bool, *, at: float = 0.0, version: str = "v", **extra: object
) -> SimpleNamespace:
    return SimpleNamespace(
        window_index=window,
        is_drift=drift,
        p_value=0.01 if drift else 0.5,
        tested_at=at,
        model_version=version,
        **extra,
    )


def test_an_alarm_needs_consecutive_drifting_windows() -> None:
    scattered = [_result(i, i in (1, 3)) for i in range(5)]
    assert not summarize_drift(scattered, since=None, model_version=None, alarm_windows=2).alarm
    ending = [_result(i, i >= 3) for i in range(5)]
    summary = summarize_drift(ending, since=None, model_version=None, alarm_windows=2)
    assert summary.alarm and (summary.windows, summary.drifting) == (5, 2)


def test_any_detector_drifting_makes_the_window_drift() -> None:
    results = [_result(0, False), _result(0, True), _result(1, True)]
    summary = summarize_drift(results, since=None, model_version=None, alarm_windows=2)
    assert summary.alarm and summary.windows == 2 and summary.latest_window == 1


def test_results_before_the_evidence_or_of_another_version_are_left_out() -> None:
    results = [
        _result(0, True, at=1.0),
        _result(1, True, at=5.0, version="old"),
        _result(2, False, at=6.0),
    ]
    summary = summarize_drift(results, since=2.0, model_version="v", alarm_windows=1)
    assert (summary.windows, summary.drifting, summary.alarm) == (1, 0, False)


def test_estimated_accuracy_is_averaged_when_the_monitor_provides_it() -> None:
    with_estimate = [_result(i, False, estimated_accuracy=a) for i, a in enumerate((0.9, 0.8))]
    summary = summarize_drift(with_estimate, since=None, model_version=None, alarm_windows=2)
    assert summary.estimated_accuracy is not None and abs(summary.estimated_accuracy - 0.85) < 1e-12
    without = summarize_drift([_result(0, False)], since=None, model_version=None, alarm_windows=2)
    assert without.estimated_accuracy is None and without.available
