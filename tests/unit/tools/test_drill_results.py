"""Judging a drill: windows matched to phases, detection delays, false alarms, alerts."""

from __future__ import annotations

import dataclasses

import pytest

from serve_drift.alerts import AlertsConfig
from serve_drift.tools.drill_collect import backtest
from serve_drift.tools.drill_results import (
    PhaseOutcome,
    alert_views,
    judge,
    judged_detector,
    window_views,
)
from tests.unit.tools.drill_fakes import (
    RUN,
    T0,
    run_results,
    scenario_phases,
    traffic,
    window_result,
)

CLEAN, SHIFTED = 0.5, 0.001
PHASES_OF = [[0]] * 3 + [[1]] * 3 + [[2]] * 3  # three windows per phase


def _judge(
    p_values: list[float],
    *,
    phases_of: list[list[int]] | None = None,
    incidents: list[dict[str, object]] | None = None,
    alerts_known: bool = True,
    **expect: object,
) -> list[PhaseOutcome]:
    phases = scenario_phases([False, True, False], **expect)
    results = run_results(p_values, phases_of or PHASES_OF)
    found = (
        backtest(results, config=AlertsConfig(sinks=()), model_name="digits")
        if incidents is None
        else incidents
    )
    return judge(
        phases,
        traffic(phases),
        window_views(results, run_id=RUN, detector="combined:native"),
        alert_views(found, source="backtest"),
        alerts_known=alerts_known,
    )


def _status(outcome: PhaseOutcome, name: str) -> str:
    return next(c.status for c in outcome.checks if c.name == name)


def test_a_shift_seen_in_its_first_window_is_detected_at_once() -> None:
    clean, shifted, recovery = _judge(
        [CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 3, detect_within_windows=1
    )
    assert shifted.windows == (3, 4, 5) and shifted.drifted == (3, 4, 5)
    assert shifted.detection_windows == 1
    assert shifted.detection_delay_s == pytest.approx(1.0)  # tested 1 s after the phase began
    assert _status(shifted, "detected") == "pass"
    assert clean.false_alarms == () and recovery.false_alarms == ()
    assert clean.ok and recovery.ok


def test_a_late_detection_fails_a_tight_bound_and_passes_a_loose_one() -> None:
    late = [CLEAN] * 3 + [0.3, SHIFTED, SHIFTED] + [CLEAN] * 3
    assert _status(_judge(late, detect_within_windows=1)[1], "detected") == "fail"
    shifted = _judge(late, detect_within_windows=2)[1]
    assert shifted.detection_windows == 2 and _status(shifted, "detected") == "pass"


def test_a_missed_shift_fails_and_a_phase_too_short_to_tell_is_unknown() -> None:
    missed = _judge([CLEAN] * 9, detect_within_windows=3)[1]
    assert missed.detection_windows is None and _status(missed, "detected") == "fail"
    too_short = _judge([CLEAN] * 9, detect_within_windows=5)[1]
    assert _status(too_short, "detected") == "unknown"


def test_a_drifted_clean_window_is_a_false_alarm() -> None:
    clean, _, recovery = _judge([CLEAN, 0.01, CLEAN] + [SHIFTED] * 3 + [CLEAN] * 3)
    assert clean.false_alarms == (1,) and _status(clean, "no false alarm") == "fail"
    assert recovery.false_alarms == () and recovery.ok


def test_a_window_straddling_clean_and_shifted_traffic_is_no_false_alarm() -> None:
    phases_of = [[0], [0], [0, 1], [1], [1], [1, 2], [2], [2], [2]]
    clean, shifted, recovery = _judge(
        [CLEAN, CLEAN] + [SHIFTED] * 4 + [CLEAN] * 3, phases_of=phases_of
    )
    assert clean.false_alarms == () and recovery.false_alarms == ()
    assert shifted.windows == (2, 3, 4, 5) and shifted.detection_windows == 1


def test_an_alert_opened_by_a_window_straddling_shift_and_recovery_belongs_to_the_shift() -> None:
    phases_of = [[0], [0], [0], [1], [1], [1, 2], [2], [2], [2]]
    p_values = [CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 3
    clean, shifted, recovery = _judge(p_values, phases_of=phases_of, alert={})
    assert [a.opening_window for a in shifted.alerts] == [5]  # the window holding phases 1, 2
    assert not clean.alerts and not recovery.alerts and _status(recovery, "no alert") == "pass"


def test_windows_with_other_traffic_are_not_judged() -> None:
    phases = scenario_phases([False, True])
    results = [window_result(0, [0], p_value=0.001, tested_at=T0 + 1, foreign=3)]
    results += [window_result(1, [0], p_value=CLEAN, tested_at=T0 + 2)]
    views = window_views(results, run_id=RUN, detector="combined:native")
    clean, _ = judge(phases, traffic(phases), views, [])
    assert clean.windows == (1,) and clean.false_alarms == () and clean.ok


def test_the_default_rules_alert_on_the_shift_and_not_on_clean_traffic() -> None:
    outcomes = _judge(
        [CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 3,
        alert={"severity": "warning", "within_windows": 3},
    )
    clean, shifted, recovery = outcomes
    # 3 of the last 4 windows with p <= 0.05: opened by the shift's third window.
    assert [(a.rule, a.severity, a.opening_window) for a in shifted.alerts] == [
        ("input-drift", "warning", 5)
    ]
    assert _status(shifted, "alert raised") == "pass"
    assert _status(clean, "no alert") == "pass" and _status(recovery, "no alert") == "pass"


def test_a_resolved_incident_keeps_its_opening_window_though_its_evidence_grew() -> None:
    # Four quiet windows resolve it; by then its evidence holds every window it was open for.
    phases = scenario_phases([False, True, False], alert={"within_windows": 3})
    phases_of = [[0]] * 3 + [[1]] * 3 + [[2]] * 5
    results = run_results([CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 5, phases_of)
    (incident,) = backtest(results, config=AlertsConfig(sinks=()), model_name="digits")
    assert incident["state"] == "resolved" and len(incident["evidence"]["windows"]) > 3
    runs = traffic(phases)
    views = window_views(results, run_id=RUN, detector="combined:native")
    _, shifted, _ = judge(phases, runs, views, alert_views([incident], source="backtest"))
    assert [a.opening_window for a in shifted.alerts] == [5]
    assert _status(shifted, "alert raised") == "pass"


def test_an_alert_too_late_or_too_mild_fails() -> None:
    p_values = [CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 3
    assert _status(_judge(p_values, alert={"within_windows": 1})[1], "alert raised") == "fail"
    assert _status(_judge(p_values, alert={"severity": "critical"})[1], "alert raised") == "fail"
    assert (
        _status(_judge(p_values, alert={"rule": "drift-accuracy-drop"})[1], "alert raised")
        == "fail"
    )


def test_an_alert_opened_in_a_clean_phase_fails_it() -> None:
    # Three clean windows at p <= 0.05 open the drift rule inside the clean phase.
    clean = _judge([0.02, 0.02, 0.02] + [CLEAN] * 6)[0]
    assert [a.opening_window for a in clean.alerts] == [2]
    assert _status(clean, "no alert") == "fail"


def test_without_a_source_of_alerts_their_checks_are_unknown_not_passed() -> None:
    clean, shifted, _ = _judge(
        [CLEAN] * 3 + [SHIFTED] * 3 + [CLEAN] * 3, incidents=[], alerts_known=False, alert={}
    )
    assert _status(clean, "no alert") == "unknown" and _status(shifted, "alert raised") == "unknown"


def test_an_incident_without_windows_belongs_to_the_phase_running_when_it_opened() -> None:
    flagged = {
        "incident_id": "i-1",
        "rule": "flagged-inputs",
        "severity": "warning",
        "opened_at": T0 + 4.5,
        "state": "open",
        "evidence": {"windows": []},
    }
    _, shifted, _ = _judge([CLEAN] * 9, incidents=[flagged])
    assert [a.rule for a in shifted.alerts] == ["flagged-inputs"]


def test_accuracy_bounds_and_rejections_are_checked() -> None:
    phases = scenario_phases([False, True], min_accuracy=0.9, max_rejected=0)
    runs = traffic(phases)
    runs[1] = dataclasses.replace(runs[1], correct=15, rejected={"503": 2}, sent=32)
    results = run_results([CLEAN] * 3 + [SHIFTED] * 3, PHASES_OF[:6])
    _, shifted = judge(
        phases, runs, window_views(results, run_id=RUN, detector="combined:native"), []
    )
    assert _status(shifted, "accuracy") == "fail" and _status(shifted, "rejections") == "fail"
    unlabelled = dataclasses.replace(runs[1], correct=None)
    _, shifted = judge(phases, [runs[0], unlabelled], [], [])
    assert _status(shifted, "accuracy") == "unknown"


def test_the_default_detector_is_judged_unless_another_is_named() -> None:
    results = [
        window_result(0, [0], p_value=0.5, tested_at=T0, detector=d) for d in ("mmd", "combined")
    ]
    assert judged_detector(results, None) == "combined:native"
    assert judged_detector(results, "mmd") == "mmd:native"
    assert judged_detector(results, "bbsd") is None
    assert judged_detector(results[:1], None) == "mmd:native"
