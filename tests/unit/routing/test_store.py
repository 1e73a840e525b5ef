"""The comparison store keeps windows and routing changes across restarts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from serve_drift.routing.messages import ArmLineage, RoutingChange, RoutingState
from serve_drift.routing.store import ComparisonStore, ComparisonStoreError
from serve_drift.routing.windows import ComparisonWindows
from tests.unit.routing.support import ok, shadow


def _change(n: int, at: float, target: str | None) -> RoutingChange:
    return RoutingChange(
        change_id=f"c{n}",
        at=at,
        action="rollback" if target == "incumbent" else "promote",
        actor="admin",
        reason=f"change {n}",
        before=RoutingState(epoch=n - 1),
        after=RoutingState(route_all_to=target, epoch=n, changed_at=at),
        verdict="rollback",
        evidence={"windows": 2},
        arms=(
            ArmLineage(arm="candidate", app="b", model_version="m2", reference_hash="sha256:ab"),
        ),
    )


def test_windows_and_changes_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    windows = ComparisonWindows(window_size=2, windows_kept=5)
    records = [r for i in range(4) for r in windows.add(shadow(f"r{i}", ok(1), ok(i % 2)), epoch=0)]
    with ComparisonStore(path) as store:
        for record in records:
            store.save_window("shadow", record)
        store.save_window("shadow", records[0])  # an update (late labels) replaces the row
        store.add_change("shadow", _change(1, 10.0, "incumbent"))
        store.add_change("shadow", _change(2, 20.0, "candidate"))
    with ComparisonStore(path) as store:
        assert store.windows("shadow") == records
        assert store.next_window_index("shadow") == 2 and store.next_window_index("other") == 0
        assert [c.change_id for c in store.changes("shadow")] == ["c1", "c2"]
        assert store.changes("shadow")[1] == _change(2, 20.0, "candidate")
        assert store.routing_state("shadow") == RoutingState("candidate", 2, 20.0)
        assert store.routing_state("other") == RoutingState()


def test_a_store_of_a_newer_layout_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    ComparisonStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(ComparisonStoreError) as refused:
        ComparisonStore(path)
    assert refused.value.code == "comparison_store_failed"


def test_a_failing_write_raises_the_stores_own_error(tmp_path: Path) -> None:
    store = ComparisonStore(tmp_path / "s.sqlite")
    store.add_change("shadow", _change(1, 1.0, "incumbent"))
    with pytest.raises(ComparisonStoreError):
        store.add_change("shadow", _change(1, 2.0, "incumbent"))  # the same change twice
    store.close()
