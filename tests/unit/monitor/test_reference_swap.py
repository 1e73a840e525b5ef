"""The reference's model version against the deployment's, and swapping the reference through
``user_config`` between windows, without Ray (the monitor's methods, called directly)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from serve_drift import DriftConfig, ReferenceSet
from serve_drift.eventlog.store import EventStore
from serve_drift.messages import IngestReceipt
from serve_drift.monitor.deployment import DriftMonitor
from serve_drift.monitor.state import MonitorState
from tests.support.batches import event_batch
from tests.support.telemetry_memory import memory_telemetry
from tests.unit.monitor.test_lanes import _until

DIM = 6
WINDOW = 20


def _reference(path: Path, *, model_version: str, data_version: str, dim: int = DIM) -> str:
    rows = np.random.default_rng(len(data_version)).normal(size=(200, dim))
    ReferenceSet.from_embeddings(
        rows, model_name="m", model_version=model_version, data_version=data_version
    ).save(path)
    return str(path)


def _config(
    tmp_path: Path, *, served: str = "1", reference_version: str = "1", **extra: Any
) -> DriftConfig:
    base: dict[str, Any] = {
        "model_name": "m",
        "model_version": served,
        "reference_path": _reference(
            tmp_path / "old.npz", model_version=reference_version, data_version="old"
        ),
        "window": {"size": WINDOW},
        "detectors": [{"backend": "native", "n_permutations": 20}],
        "calibration": {"enabled": False},
        "monitor_niceness": 0,
        "events": {"path": str(tmp_path / "events.sqlite"), "sample_rate": 1.0},
    }
    return DriftConfig.model_validate({**base, **extra})


def _batch(i: int, *, version: str = "1") -> Any:
    rows = np.random.default_rng(i).normal(size=(WINDOW, DIM))
    return event_batch(rows, start=i * WINDOW, version=version)


def _tested(state: MonitorState, *batches: Any) -> list[Any]:
    results = []
    for batch in batches:
        for job in state.accept(batch):
            results += state.process(job)
    return results


# --- the version check -------------------------------------------------------------------


def test_refuse_at_start_up_tests_nothing_and_says_why(tmp_path: Path) -> None:
    memory_telemetry()
    state = MonitorState(_config(tmp_path, served="2", reference_version="1"))
    assert _tested(state, _batch(0, version="2"), _batch(1, version="2")) == []
    assert state.counts.windows_refused == 2 and state.counts.windows_tested == 0
    health = state.health()
    assert health.status == "degraded"
    (reason,) = [r for r in health.reasons if r.startswith("model_version_mismatch")]
    assert "'1'" in reason and "'2'" in reason and "not tested" in reason
    assert health.version_check == {
        "model_version": "2",
        "reference_model_version": "1",
        "policy": "refuse",
        "mismatch": True,
    }


def test_degraded_tests_and_flags_every_result_with_both_versions(tmp_path: Path) -> None:
    memory_telemetry()
    config = _config(tmp_path, served="2", reference_version="1", on_version_mismatch="degraded")
    state = MonitorState(config)
    (result,) = _tested(state, _batch(0, version="2"))
    assert (result.model_version, result.reference_model_version) == ("2", "1")
    assert result.version_mismatch
    assert any("flagged version_mismatch" in r for r in state.health().reasons)
    stored = state.event_log.recent_results(limit=5)  # type: ignore[union-attr]
    assert stored[-1].reference_model_version == "1" and stored[-1].version_mismatch


def test_matching_versions_test_unflagged_and_stay_ready(tmp_path: Path) -> None:
    memory_telemetry()
    state = MonitorState(_config(tmp_path))
    (result,) = _tested(state, _batch(0))
    assert result.reference_model_version == "1" and not result.version_mismatch
    assert state.health().status == "ready" and state.health().version_check["mismatch"] is False


def test_reconfigure_can_change_the_policy(tmp_path: Path) -> None:
    memory_telemetry()
    monitor = DriftMonitor(_config(tmp_path, served="2", reference_version="1"))
    state = monitor._state
    assert _tested(state, _batch(0, version="2")) == []
    monitor.reconfigure({"on_version_mismatch": "degraded"})
    (result,) = _tested(state, _batch(1, version="2"))
    assert result.version_mismatch


# --- swaps through user_config -------------------------------------------------------------


def _swap_under_load(monitor: DriftMonitor, user_config: dict[str, Any]) -> list[IngestReceipt]:
    """Ten windows' worth of batches; the swap is asked for after the third."""

    async def scenario() -> list[IngestReceipt]:
        receipts = []
        for i in range(10):
            receipts.append(await monitor.ingest(_batch(i)))
            if i == 2:
                monitor.reconfigure(user_config)
            await asyncio.sleep(0.05)
        await _until(lambda: len(monitor._state.results) == 10)
        return receipts

    receipts = asyncio.run(scenario())
    monitor._swaps.submit(lambda: None).result(timeout=30)  # one worker: the swap is done
    return receipts


def test_a_swap_under_load_loses_no_window_and_later_results_carry_the_new_version(
    tmp_path: Path,
) -> None:
    memory_telemetry()
    monitor = DriftMonitor(_config(tmp_path))
    old = monitor._state.reference
    new_path = _reference(tmp_path / "new.npz", model_version="1", data_version="new-set")
    new = ReferenceSet.load(new_path)
    receipts = _swap_under_load(
        monitor,
        {
            "reference_path": new_path,
            "reference_sha256": new.lineage.content_hash,
            "changed_by": "alice",
        },
    )
    results = list(monitor._state.results)
    assert [r.window_index for r in results] == list(range(10))  # every window, once
    versions = [r.reference_version for r in results]
    first_new = versions.index(new.version)
    assert first_new >= 3  # the windows handed to the tests before the swap kept the old one
    assert versions[:first_new] == [old.version] * first_new  # type: ignore[union-attr]
    assert versions[first_new:] == [new.version] * (10 - first_new)  # never back
    assert monitor._state.counts.windows_skipped == 0
    assert receipts[-1].reference_version == new.version  # replicas follow it
    health = monitor._state.health()
    assert health.status == "ready" and health.reference["version"] == new.version
    (change,) = health.reference_changes
    assert change["outcome"] == "applied" and change["changed_by"] == "alice"
    assert change["to_hash"] == new.lineage.content_hash
    assert change["from_version"] == old.version  # type: ignore[union-attr]
    monitor._writer.close(timeout_s=10)
    with EventStore(tmp_path / "events.sqlite") as store:
        (stored,) = store.reference_changes()
        assert stored["change_id"] == change["change_id"]
        inference = store.recent(limit=500)
    assert {r.reference_version for r in inference} == {old.version, new.version}  # type: ignore[union-attr]


def _refused(tmp_path: Path, user_config: dict[str, Any], *, code: str) -> DriftMonitor:
    memory_telemetry()
    monitor = DriftMonitor(_config(tmp_path))
    old = monitor._state.reference
    _swap_under_load(monitor, user_config)
    assert {r.reference_version for r in monitor._state.results} == {old.version}  # type: ignore[union-attr]
    health = monitor._state.health()
    assert health.status == "degraded"
    assert any(r.startswith(f"{code}: reference swap to") for r in health.reasons), health.reasons
    (change,) = health.reference_changes
    assert change["outcome"] == "refused" and change["code"] == code
    return monitor


def test_a_missing_reference_leaves_the_old_one_in_place(tmp_path: Path) -> None:
    _refused(tmp_path, {"reference_path": str(tmp_path / "nope.npz")}, code="reference_not_found")


def test_a_reference_of_another_width_is_refused(tmp_path: Path) -> None:
    path = _reference(tmp_path / "wide.npz", model_version="1", data_version="w", dim=DIM + 1)
    _refused(tmp_path, {"reference_path": path}, code="reference_dimension_mismatch")


def test_a_reference_of_another_model_version_is_refused_under_refuse(tmp_path: Path) -> None:
    path = _reference(tmp_path / "v2.npz", model_version="2", data_version="v2")
    _refused(tmp_path, {"reference_path": path}, code="model_version_mismatch")


def test_a_reference_without_the_expected_hash_is_refused(tmp_path: Path) -> None:
    path = _reference(tmp_path / "n.npz", model_version="1", data_version="n2")
    wrong = "sha256:" + "0" * 64
    _refused(
        tmp_path,
        {"reference_path": path, "reference_sha256": wrong},
        code="reference_hash_mismatch",
    )


def test_a_corrupt_reference_is_refused(tmp_path: Path) -> None:
    (tmp_path / "corrupt.npz").write_bytes(b"not an npz")
    _refused(tmp_path, {"reference_path": str(tmp_path / "corrupt.npz")}, code="reference_corrupt")


def test_reapplying_the_same_user_config_changes_and_stores_nothing(tmp_path: Path) -> None:
    memory_telemetry()
    monitor = DriftMonitor(_config(tmp_path))
    path = _reference(tmp_path / "new.npz", model_version="1", data_version="new-set")
    _swap_under_load(monitor, {"reference_path": path})
    monitor.reconfigure({"reference_path": path})  # as Serve does after a restart
    monitor._swaps.submit(lambda: None).result(timeout=10)
    assert len(monitor._state.health().reference_changes) == 1
    monitor._writer.close(timeout_s=10)
    restarted = DriftMonitor(_config(tmp_path))  # starts from the config's reference again
    restarted.reconfigure({"reference_path": path})
    restarted._swaps.submit(lambda: None).result(timeout=30)
    restarted._writer.close(timeout_s=10)
    with EventStore(tmp_path / "events.sqlite") as store:
        assert len(store.reference_changes()) == 1  # the same change, applied again


def test_an_invalid_update_is_refused_whole(tmp_path: Path) -> None:
    memory_telemetry()
    monitor = DriftMonitor(_config(tmp_path))
    with pytest.raises(ValueError, match="reference_sha256"):
        monitor.reconfigure({"reference_path": "x.npz", "reference_sha256": "md5:abc"})
    assert monitor._state.health().reference_changes == ()
