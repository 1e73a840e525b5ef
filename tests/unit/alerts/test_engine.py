"""The rule engine on recorded signal sequences: what opens, what is notified, what resolves."""

from __future__ import annotations

import json

import pytest

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Incident
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.alerts.rules import AlertRule, DriftCondition
from serve_drift.alerts.signals import DetectorFailed, LabelMetrics, SentinelRun, Tick
from tests.support.alert_signals import MODEL, kinds, replay, window, windows

CLEAN, SHIFT = 0.4, 0.002
TWO_OF_THREE = DriftCondition(k=2, n=3, alpha=0.01)


def _two_of_three(rule: AlertRule) -> AlertRule:
    conditions = tuple(
        TWO_OF_THREE if isinstance(c, DriftCondition) else c for c in rule.conditions
    )
    return rule.model_copy(update={rule.combine: conditions})


def _only(*names: str) -> AlertsConfig:
    """The default rules, keeping only ``names`` (inhibiting only among themselves), with the
    sustained-drift condition these sequences were recorded for: 2 of the last 3 windows at
    p <= 0.01. The engine's state machine is under test here, not the default's k and n
    (``test_defaults`` and ``benchmarks/alert_rules.py`` judge those)."""
    rules = [_two_of_three(r) for r in AlertsConfig().rules if r.name in names]
    kept = [r.model_copy(update={"inhibits": tuple(set(r.inhibits) & set(names))}) for r in rules]
    return AlertsConfig(rules=tuple(kept), sinks=())


def test_sustained_drift_opens_once_at_the_second_significant_window_and_resolves() -> None:
    sequence = windows(
        [CLEAN, CLEAN, SHIFT, SHIFT, SHIFT, SHIFT, CLEAN, CLEAN, CLEAN, CLEAN, CLEAN]
    )
    transitions = replay(sequence, config=_only("input-drift"))
    assert kinds(transitions) == ["opened", "resolved"]
    opened, resolved = transitions
    assert opened.at == sequence[3].at and opened.notify  # 2 of the last 3 at window 3
    # 2-of-3 stops holding at window 7 (one significant of 5,6,7); 3 evaluations later it resolves
    assert resolved.at == sequence[9].at and resolved.notify
    assert opened.incident.labels == {
        "alertname": "input-drift",
        "severity": "warning",
        "owner": "ml-platform",
        "model_name": MODEL,
        "model_version": "v1",
        "detector": "combined",
    }


def test_the_evidence_carries_windows_p_values_traces_and_sample_requests() -> None:
    sequence = windows([CLEAN, SHIFT, SHIFT])
    (opened,) = replay(sequence, config=_only("input-drift"))
    evidence = opened.incident.evidence
    assert [w.window_index for w in evidence.windows] == [0, 1, 2]
    assert [w.significant for w in evidence.windows] == [False, True, True]
    assert [w.p_value for w in evidence.windows] == [CLEAN, SHIFT, SHIFT]
    assert evidence.trace_ids == tuple(r.trace_id for s in sequence for r in s.results)
    assert "req-1-0" in evidence.correlation_ids and "req-0-0" not in evidence.correlation_ids
    assert evidence.conditions[0].active is True
    assert opened.incident.runbook_url and opened.incident.suggested_checks


def test_a_sustained_shift_is_one_incident_however_long_it_lasts() -> None:
    engine = AlertEngine(_only("input-drift"), started_at=0.0, model_names=(MODEL,))
    assert kinds(replay(windows([SHIFT] * 50), engine=engine)) == ["opened"]
    (incident,) = engine.open_incidents()
    assert len(incident.evidence.windows) == 32  # the evidence grows, capped, newest kept
    assert incident.evidence.windows[-1].window_index == 49


def test_estimated_accuracy_decides_between_the_page_and_the_ticket() -> None:
    config = _only("drift-accuracy-drop", "input-drift")
    steady = windows(
        [CLEAN, SHIFT, SHIFT], estimated_accuracy=0.95, estimated_accuracy_baseline=0.97
    )
    fell = windows([CLEAN, SHIFT, SHIFT], estimated_accuracy=0.75, estimated_accuracy_baseline=0.97)
    assert [(t.incident.rule, t.notify) for t in replay(steady, config=config)] == [
        ("input-drift", True)
    ]
    page, ticket = replay(fell, config=config)
    assert (page.incident.rule, page.incident.severity, page.notify) == (
        "drift-accuracy-drop",
        "critical",
        True,
    )
    # The ticket is still recorded, but muted while the page is open.
    assert (ticket.incident.rule, ticket.notify) == ("input-drift", False)
    assert ticket.suppressed_by == "inhibited by drift-accuracy-drop"
    assert page.incident.evidence.signals[0].value == 0.75
    assert page.incident.evidence.signals[0].baseline == 0.97


def test_no_estimated_accuracy_means_the_page_cannot_fire() -> None:
    transitions = replay(windows([SHIFT] * 5), config=_only("drift-accuracy-drop"))
    assert transitions == []


def test_the_ticket_is_notified_once_the_page_resolves_while_it_is_still_open() -> None:
    config = _only("drift-accuracy-drop", "input-drift")
    engine = AlertEngine(config, started_at=0.0, model_names=(MODEL,))
    fell = windows([SHIFT, SHIFT], estimated_accuracy=0.7, estimated_accuracy_baseline=0.97)
    recovered = windows(
        [SHIFT] * 4, start=2, estimated_accuracy=0.96, estimated_accuracy_baseline=0.97
    )
    replay(fell, engine=engine)
    later = replay(recovered, engine=engine)
    # The page resolves after 3 windows without the drop; the muted ticket is then released.
    assert [(t.incident.rule, t.kind, t.notify) for t in later] == [
        ("drift-accuracy-drop", "resolved", True),
        ("input-drift", "released", True),
    ]


def test_a_muted_ticket_whose_shift_ended_with_the_page_is_never_sent() -> None:
    config = _only("drift-accuracy-drop", "input-drift")
    engine = AlertEngine(config, started_at=0.0, model_names=(MODEL,))
    fell = windows([SHIFT, SHIFT], estimated_accuracy=0.2, estimated_accuracy_baseline=0.97)
    after = windows([CLEAN] * 5, start=2, estimated_accuracy=0.96, estimated_accuracy_baseline=0.97)
    opened = replay(fell, engine=engine)
    later = replay(after, engine=engine)
    assert [(t.incident.rule, t.kind, t.notify) for t in opened] == [
        ("drift-accuracy-drop", "opened", True),
        ("input-drift", "opened", False),
    ]
    # The page resolves while the ticket's condition is already clearing: nothing is released,
    # and the ticket resolves unsent one window later. One shift, one notification.
    assert [(t.incident.rule, t.kind, t.notify) for t in later] == [
        ("drift-accuracy-drop", "resolved", True),
        ("input-drift", "resolved", False),
    ]


def test_incidents_are_per_detector() -> None:
    sequence = [window(i, {"combined": SHIFT, "mmd": CLEAN}) for i in range(3)]
    transitions = replay(sequence, config=_only("input-drift"))
    assert [dict(t.incident.scope)["detector"] for t in transitions] == ["combined"]


def test_reminders_follow_the_renotify_interval() -> None:
    config = _only("input-drift")  # renotify every 24 h
    day_s = 24 * 3600.0
    sequence = [window(i, SHIFT, at=i * 3600.0) for i in range(50)]
    transitions = replay(sequence, config=config)
    assert kinds(transitions) == ["opened", "renotified", "renotified"]
    assert [t.at for t in transitions] == [3600.0, 3600.0 + day_s, 3600.0 + 2 * day_s]


def test_a_new_model_version_resolves_the_old_versions_incidents() -> None:
    engine = AlertEngine(_only("input-drift"), started_at=0.0, model_names=(MODEL,))
    replay(windows([SHIFT, SHIFT]), engine=engine)
    (resolved,) = engine.observe(window(2, CLEAN, version="v2"))
    assert resolved.kind == "resolved" and dict(resolved.incident.scope)["model_version"] == "v1"
    assert resolved.incident.resolution == "superseded by model version v2"
    assert engine.open_incidents() == []


def test_a_failing_detector_alerts_after_three_windows_and_clears_on_success() -> None:
    engine = AlertEngine(_only("detector-failing"), started_at=0.0, model_names=(MODEL,))
    failures = [
        DetectorFailed(
            at=i * 60.0, model_name=MODEL, model_version="v1", detector="mmd", error="OOM"
        )
        for i in range(3)
    ]
    assert kinds(replay(failures[:2], engine=engine)) == []
    (opened,) = engine.observe(failures[2])
    assert opened.kind == "opened" and dict(opened.incident.scope)["detector"] == "mmd"
    assert "OOM" in opened.incident.evidence.conditions[0].detail
    assert kinds(engine.observe(window(4, {"mmd": CLEAN}))) == ["resolved"]


def test_silence_alerts_when_no_window_is_tested_and_resolves_with_the_next_one() -> None:
    engine = AlertEngine(_only("monitor-silent"), started_at=0.0, model_names=(MODEL,))
    assert engine.observe(Tick(at=3599.0)) == []
    (opened,) = engine.observe(Tick(at=3601.0))
    assert opened.incident.scope == (("model_name", MODEL),)
    assert kinds(engine.observe(window(60, CLEAN, at=3700.0))) == ["resolved"]
    assert engine.observe(Tick(at=3700.0 + 3599.0)) == []


def _labels(at: float, accuracy: float, n: int = 100, ece: float = 0.02) -> LabelMetrics:
    return LabelMetrics(
        at=at, model_name=MODEL, model_version="v1", window_index=None, n_labels=n,
        accuracy=accuracy, f1_macro=accuracy, ece=ece,
    )  # fmt: skip


def test_label_accuracy_is_compared_with_its_first_trusted_window() -> None:
    config = _only("label-accuracy-drop")
    sequence = [
        _labels(1.0, 0.60, n=10),  # too few labels: neither a baseline nor an alert
        _labels(2.0, 0.97),  # the baseline
        _labels(3.0, 0.95),
        _labels(4.0, 0.91),  # 6 points under the baseline
    ]
    transitions = replay(sequence, config=config)
    assert [(t.kind, t.at) for t in transitions] == [("opened", 4.0)]
    assert transitions[0].incident.evidence.signals[0].baseline == 0.97


def test_calibration_error_rising_opens_the_calibration_rule() -> None:
    transitions = replay(
        [_labels(1.0, 0.95, ece=0.03), _labels(2.0, 0.95, ece=0.09)],
        config=_only("calibration-drift"),
    )
    assert kinds(transitions) == ["opened"]


def test_a_sentinel_regression_against_the_first_run() -> None:
    runs = [
        SentinelRun(at=float(i), model_name=MODEL, model_version="v1", accuracy=acc, n_images=200)
        for i, acc in enumerate([0.98, 0.97, 0.90])
    ]
    transitions = replay(runs, config=_only("sentinel-regression"))
    assert [(t.kind, t.at) for t in transitions] == [("opened", 2.0)]


@pytest.mark.parametrize(
    ("rule", "measured", "fires"),
    [
        ("flagged-inputs", {"flagged_share": 0.35}, True),
        ("flagged-inputs", {"flagged_share": 0.05}, False),
        ("telemetry-dropping", {"dropped_share": 0.02}, True),
        ("telemetry-dropping", {"dropped_share": None}, False),
    ],
)
def test_measured_shares_against_their_bounds(
    rule: str, measured: dict[str, float | None], fires: bool
) -> None:
    transitions = replay([window(0, CLEAN, **measured)], config=_only(rule))
    assert kinds(transitions) == (["opened"] if fires else [])


def test_latency_and_all_of_several_signals() -> None:
    config = AlertsConfig.model_validate(
        {
            "sinks": [],
            "rules": [
                {
                    "name": "slow-and-flagged",
                    "all": [
                        {"kind": "threshold", "signal": "latency_p99_s", "above": 0.5},
                        {"kind": "threshold", "signal": "flagged_share", "above": 0.1},
                    ],
                }
            ],
        }
    )
    only_slow = window(0, CLEAN, latency_p99_s=0.9, flagged_share=0.01)
    both = window(1, CLEAN, latency_p99_s=0.9, flagged_share=0.2)
    assert kinds(replay([only_slow], config=config)) == []
    assert kinds(replay([only_slow, both], config=config)) == ["opened"]


def test_a_cusum_rule_alerts_on_a_shift_that_no_single_window_shows() -> None:
    config = AlertsConfig.model_validate(
        {
            "sinks": [],
            "rules": [
                {"name": "slow-drift", "all": [{"kind": "cusum", "allowance": 1.5, "threshold": 8}]}
            ],
        }
    )
    # p = 0.08 never passes alpha = 0.05, but each adds -ln(0.08) - 1.5 = 1.03 to the sum:
    # 8.2 > 8 at the eighth window (index 7).
    transitions = replay(windows([0.08] * 12), config=config)
    assert [t.at for t in transitions if t.kind == "opened"] == [7 * 60.0]


def test_a_suppression_schedule_holds_the_notification_until_it_ends() -> None:
    config = AlertsConfig.model_validate(
        {
            "sinks": [],
            "rules": [r.model_dump() for r in _only("input-drift").rules],
            "suppress": [{"name": "batch-hour", "start": "00:00", "end": "01:00"}],
        }
    )
    engine = AlertEngine(config, started_at=0.0, model_names=(MODEL,))
    (opened,) = replay(windows([SHIFT, SHIFT]), engine=engine)  # at 00:01, Jan 1 1970
    assert (opened.notify, opened.suppressed_by) == (False, "suppression schedule batch-hour")
    assert engine.observe(window(2, SHIFT, at=3599.0)) == []
    (released,) = engine.observe(Tick(at=3600.0))
    assert (released.kind, released.notify) == ("released", True)


def test_maintenance_holds_everything_back_and_releases_what_is_still_open() -> None:
    engine = AlertEngine(_only("input-drift"), started_at=0.0, model_names=(MODEL,))
    maintenance = MaintenanceWindow.starting(at=0.0, duration_s=600, who="alice", why="retraining")
    engine.set_maintenance(maintenance, at=0.0)
    (opened,) = replay(windows([SHIFT, SHIFT]), engine=engine)
    assert not opened.notify and opened.suppressed_by == "maintenance by alice: retraining"
    cleared, released = engine.clear_maintenance(at=120.0, by="bob")
    assert cleared is not None and (cleared.cleared_by, cleared.cleared_at) == ("bob", 120.0)
    assert [(t.kind, t.notify) for t in released] == [("released", True)]


def test_maintenance_that_expires_releases_at_the_next_signal() -> None:
    engine = AlertEngine(_only("input-drift"), started_at=0.0, model_names=(MODEL,))
    engine.set_maintenance(
        MaintenanceWindow.starting(at=0.0, duration_s=300, who="ci", why="reference swap"), at=0.0
    )
    replay(windows([SHIFT, SHIFT]), engine=engine)
    assert engine.observe(Tick(at=299.0)) == []
    assert [(t.kind, t.notify) for t in engine.observe(Tick(at=300.0))] == [("released", True)]


def test_an_incident_opened_and_resolved_during_maintenance_is_never_notified() -> None:
    engine = AlertEngine(_only("input-drift"), started_at=0.0, model_names=(MODEL,))
    engine.set_maintenance(
        MaintenanceWindow.starting(at=0.0, duration_s=3600, who="ci", why="retraining"), at=0.0
    )
    transitions = replay(windows([SHIFT, SHIFT, CLEAN, CLEAN, CLEAN, CLEAN, CLEAN]), engine=engine)
    transitions += engine.clear_maintenance(at=1000.0, by="ci")[1]
    assert kinds(transitions) == ["opened", "resolved"]
    assert not any(t.notify for t in transitions)
    assert transitions[1].suppressed_by is None  # nobody was told it opened: nothing to resolve


def test_a_restarted_engine_continues_open_incidents_without_reopening_them() -> None:
    config = _only("input-drift")
    first = AlertEngine(config, started_at=0.0, model_names=(MODEL,))
    (opened,) = replay(windows([SHIFT, SHIFT]), engine=first)
    stored = json.loads(opened.incident_json())  # as the event store gives it back
    restarted = AlertEngine(
        config, started_at=200.0, model_names=(MODEL,), open_incidents=[Incident.from_dict(stored)]
    )
    later = replay(windows([SHIFT, SHIFT, CLEAN, CLEAN, CLEAN, CLEAN], start=2), engine=restarted)
    assert kinds(later) == ["resolved"]
    assert later[0].incident.incident_id == opened.incident.incident_id


def test_replaying_a_sequence_gives_the_same_transitions() -> None:
    sequence = [*windows([CLEAN, SHIFT, SHIFT, CLEAN, CLEAN, CLEAN]), Tick(at=9000.0)]
    first, second = replay(sequence), replay(sequence)
    assert [t.to_dict() for t in first] == [t.to_dict() for t in second] and first
