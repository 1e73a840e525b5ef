"""The quarantine store: files plus JSON sidecars, bounded by count, bytes and age."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import pytest

from serve_drift.ingress import IngressConfig, IngressGate, QuarantineStore
from serve_drift.ingress.quarantine import _ORPHAN_AGE_S
from tests.support.telemetry_memory import memory_telemetry, metric_points


def put(store: QuarantineStore, data: bytes = b"x", **metadata: object) -> str:
    return store.put(data=data, extension="png", metadata=metadata)


def test_entry_is_a_data_file_plus_a_json_sidecar(tmp_path: Path) -> None:
    store = QuarantineStore(directory=tmp_path / "q")
    entry_id = put(store, b"\x89PNG...", correlation_id="c-1", checks=["constant"])
    (entry,) = store.entries()
    assert entry.entry_id == entry_id and entry.data_path.read_bytes() == b"\x89PNG..."
    sidecar = json.loads((tmp_path / "q" / f"{entry_id}.json").read_text())
    assert sidecar["correlation_id"] == "c-1" and sidecar["bytes"] == 7
    assert len(sidecar["sha256"]) == 64 and sidecar["data_file"] == f"{entry_id}.png"
    assert stat.S_IMODE(entry.data_path.stat().st_mode) == 0o600  # hostile bytes: no exec
    assert not list((tmp_path / "q").glob(".tmp-*"))


def test_count_limit_evicts_the_oldest(tmp_path: Path) -> None:
    store = QuarantineStore(directory=tmp_path, max_items=3)
    ids = [put(store, i=i) for i in range(5)]
    assert [e.entry_id for e in store.entries()] == ids[2:]
    assert len(list(tmp_path.iterdir())) == 6  # three data files, three sidecars


def test_byte_limit_evicts_until_under(tmp_path: Path) -> None:
    store = QuarantineStore(directory=tmp_path, max_bytes=2_000)
    for _ in range(5):
        put(store, b"\0" * 600)
    total = sum(p.stat().st_size for p in tmp_path.iterdir())
    assert total <= 2_000 and len(store.entries()) == 2


def test_age_limit_evicts_expired_entries(tmp_path: Path) -> None:
    store = QuarantineStore(directory=tmp_path, max_age_s=60)
    put(store)
    put(store)
    assert store.enforce_retention(now=time.time() + 30) == 0
    assert store.enforce_retention(now=time.time() + 120) == 2
    assert store.entries() == [] and list(tmp_path.iterdir()) == []


def test_leftovers_of_crashed_writes_are_cleaned_and_foreign_files_kept(tmp_path: Path) -> None:
    store = QuarantineStore(directory=tmp_path)
    put(store)
    orphan = tmp_path / "00000000000000000001-deadbeef.png"  # data file without a sidecar
    temporary = tmp_path / ".tmp-00000000000000000002-deadbeef.json"
    foreign = tmp_path / "README.json"
    for path in (orphan, temporary, foreign):
        path.write_text("{}")
    old = time.time() - 2 * _ORPHAN_AGE_S
    os.utime(orphan, (old, old))
    os.utime(temporary, (old, old))
    store.enforce_retention()
    assert not orphan.exists() and not temporary.exists() and foreign.exists()
    assert len(store.entries()) == 1


def test_gate_bounds_pending_writes_and_counts_outcomes(tmp_path: Path) -> None:
    _, reader = memory_telemetry()
    config = IngressConfig.model_validate(
        {
            "plausibility": {"constant": {"action": "quarantine"}},
            "quarantine": {"max_pending_writes": 2},
        }
    )
    gate = IngressGate(config=config, quarantine=QuarantineStore(directory=tmp_path))

    async def flood() -> None:
        for _ in range(5):  # no await between: the writes are all pending at once
            gate._store(b"x", "png", {})
        await gate.drain()

    asyncio.run(flood())
    outcomes = [
        (p.attributes["outcome"], p.value)
        for p in metric_points(reader, "serve_drift.ingress.quarantined")
    ]
    assert ("stored", 2) in outcomes and ("dropped", 3) in outcomes
    assert len(QuarantineStore(directory=tmp_path).entries()) == 2


def test_a_failing_write_is_counted_not_raised(tmp_path: Path) -> None:
    _, reader = memory_telemetry()
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    config = IngressConfig.model_validate({"plausibility": {"constant": {"action": "quarantine"}}})
    gate = IngressGate(config=config, quarantine=QuarantineStore(directory=blocker / "q"))

    async def write() -> None:
        gate._store(b"x", "png", {})
        await gate.drain()

    asyncio.run(write())
    failed = [
        p.value
        for p in metric_points(reader, "serve_drift.ingress.quarantined")
        if p.attributes["outcome"] == "failed"
    ]
    assert failed and failed[0] >= 1


@pytest.mark.parametrize("limit", ["max_items", "max_bytes", "max_age_s"])
def test_retention_limits_must_be_positive(limit: str) -> None:
    with pytest.raises(ValueError):
        IngressConfig.model_validate({"quarantine": {limit: 0}})
