"""Alert history in the event store (both backends): incidents, transitions and maintenance,
idempotent."""

from __future__ import annotations

import jsonschema
import pytest

from serve_drift.alerts.config import AlertsConfig
from serve_drift.alerts.engine import AlertEngine
from serve_drift.alerts.incidents import Incident, Transition, load_alert_schema
from serve_drift.alerts.maintenance import MaintenanceWindow
from serve_drift.eventlog.store import BaseEventStore as EventStore
from tests.support.alert_signals import MODEL, replay, windows
from tests.support.store_backends import PostgresBackend, SqliteBackend

SHIFTED_THEN_CLEAN = [0.5, 0.002, 0.003, 0.004, 0.5, 0.5, 0.5, 0.5, 0.5]


@pytest.fixture
def store(store_backend: SqliteBackend | PostgresBackend) -> EventStore:
    with store_backend.open() as opened:
        yield opened


def _lifecycle() -> list[Transition]:
    config = AlertsConfig(rules=(AlertsConfig().rule("input-drift"),), sinks=())
    return replay(windows(SHIFTED_THEN_CLEAN), config=config)


def test_an_incident_is_stored_with_its_history_and_evidence(store: EventStore) -> None:
    opened, resolved = _lifecycle()
    assert store.write_alert_transitions([opened]).written_ids == (opened.transition_id,)
    assert [s.state for s in store.alert_incidents()] == ["open"]
    store.write_alert_transitions([resolved])
    (stored,) = store.alert_incidents()
    assert (stored.state, stored.resolved_at) == ("resolved", resolved.at)
    incident = Incident.from_dict(stored.document)
    assert incident == resolved.incident
    assert [w.p_value for w in incident.evidence.windows] == [0.5, 0.002, 0.003, 0.004, 0.5]
    history = store.alert_transitions(stored.incident_id)
    assert [(t.kind, t.notified) for t in history] == [("opened", True), ("resolved", True)]
    for transition in history:
        jsonschema.validate(transition.document, load_alert_schema())


def test_writes_are_idempotent_and_the_newest_state_wins(store: EventStore) -> None:
    opened, resolved = _lifecycle()
    store.write_alert_transitions([resolved])
    receipt = store.write_alert_transitions([opened, resolved])  # late and repeated
    assert receipt.written_ids == (opened.transition_id,)
    assert receipt.already_present_ids == (resolved.transition_id,)
    (stored,) = store.alert_incidents()
    assert stored.state == "resolved"
    assert len(store.alert_transitions(stored.incident_id)) == 2


def test_incidents_are_filtered_and_found_by_id_prefix(store: EventStore) -> None:
    engine = AlertEngine(AlertsConfig(sinks=()), started_at=0.0, model_names=(MODEL,))
    transitions = replay(windows([0.002, 0.003, 0.004]), engine=engine)
    transitions += replay(windows([0.5], start=3, flagged_share=0.5), engine=engine)
    store.write_alert_transitions(transitions)
    rules = {s.rule for s in store.alert_incidents(state="open")}
    assert rules == {"input-drift", "flagged-inputs"}
    assert [s.rule for s in store.alert_incidents(rule="flagged-inputs")] == ["flagged-inputs"]
    assert store.alert_incidents(state="resolved") == []
    assert store.alert_incidents(since=10_000.0) == []
    some = transitions[0].incident.incident_id
    found = store.alert_incident(some[:6])
    assert found is not None and found.incident_id == some
    assert store.alert_incident("%") is None  # wildcards are not patterns here


def test_maintenance_is_stored_and_its_clearing_too(store: EventStore) -> None:
    window = MaintenanceWindow.starting(at=100.0, duration_s=600, who="alice", why="retraining")
    store.write_maintenance(window)
    active = store.active_maintenance(at=200.0)
    assert active is not None and MaintenanceWindow.from_dict(active) == window
    assert store.active_maintenance(at=800.0) is None
    store.write_maintenance(window.cleared(at=300.0, by="bob"))
    assert store.active_maintenance(at=400.0) is None


def test_a_store_created_before_the_alert_tables_gains_them(
    store_backend: SqliteBackend | PostgresBackend,
) -> None:
    with store_backend.open() as old:
        db = old._connection()  # as an older release left it
        for table in ("alert_incidents", "alert_transitions", "maintenance_windows"):
            db.execute(f"DROP TABLE {table}")
    with store_backend.open() as reopened:
        assert reopened.alert_incidents() == []
        reopened.write_alert_transitions(_lifecycle()[:1])
        assert len(reopened.alert_incidents()) == 1
