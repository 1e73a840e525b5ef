"""The comparator without Ray: windows stored, labels joined, decisions, changes recorded with
lineage, state and windows surviving a restart, and the safe-mode rollback."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from serve_drift.routing import comparator as comparator_module
from serve_drift.routing.changes import ChangeRequest
from serve_drift.routing.comparator import ShadowComparator
from serve_drift.routing.store import ComparisonStore
from tests.support.telemetry_memory import memory_telemetry, metric_points
from tests.unit.routing.fakes import FakeMethod
from tests.unit.routing.support import ok, shadow

WINDOW = 50


class FakeMonitor:
    def __init__(self, *, version: str, reference_hash: str, drifting: bool = False) -> None:
        self.drifting = drifting

        async def results(limit: int) -> list[Any]:
            return [
                SimpleNamespace(
                    window_index=i,
                    is_drift=self.drifting,
                    p_value=0.5,
                    tested_at=1e12,
                    model_version=version,
                    estimated_accuracy=None,
                )
                for i in range(3)
            ]

        async def health() -> Any:
            reference = {
                "model_name": "digits",
                "model_version": version,
                "version": f"pool@{reference_hash[:6]}",
                "content_hash": reference_hash,
            }
            return SimpleNamespace(reference=reference)

        self.results = FakeMethod(results)
        self.health = FakeMethod(health)


@pytest.fixture
def monitors(monkeypatch: pytest.MonkeyPatch) -> dict[str, FakeMonitor]:
    found = {
        "inc-app": FakeMonitor(version="inc", reference_hash="sha256:aaaa"),
        "cand-app": FakeMonitor(version="cand", reference_hash="sha256:bbbb"),
    }
    monkeypatch.setattr(comparator_module, "_monitor_handle", lambda app, name: found[app])
    return found


def _comparator(store: Path, **decision: Any) -> ShadowComparator:
    return ShadowComparator(
        {
            "incumbent": {"app": "inc-app"},
            "candidate": {"app": "cand-app"},
            "comparison": {"window_size": WINDOW, "path": str(store), "niceness": 0},
            "decision": {"min_pairs": 100, "min_labels": 100, **decision},
        }
    )


def _traffic(
    n: int, *, candidate_wrong_every: int, start: int = 0
) -> tuple[list[Any], list[tuple[str, int]]]:
    observations, labels = [], []
    for i in range(start, start + n):
        y = i % 10
        wrong = candidate_wrong_every and i % candidate_wrong_every == 0
        cand = ok((y + 1) % 10 if wrong else y, version="cand")
        observations.append(shadow(f"r{i}", ok(y, version="inc"), cand, at=float(i)))
        labels.append((f"r{i}", y))
    return observations, labels


async def _settle(comparator: ShadowComparator) -> None:
    while comparator._tasks:
        await asyncio.gather(*comparator._tasks)


def test_a_weaker_candidate_is_judged_roll_back_and_the_rollback_is_recorded(
    tmp_path: Path, monitors: dict[str, FakeMonitor]
) -> None:
    observations, labels = _traffic(200, candidate_wrong_every=5)  # 80 % against 100 %

    async def run() -> tuple[Any, Any, Any]:
        comparator = _comparator(tmp_path / "s.sqlite")
        await comparator.ingest(observations)
        joined = await comparator.submit_labels(labels)
        await _settle(comparator)
        report = await comparator.report()
        refused = await comparator.change(ChangeRequest("promote"))
        applied = await comparator.change(ChangeRequest("rollback", reason="weaker"))
        return joined, report, (refused, applied)

    joined, report, (refused, applied) = asyncio.run(run())
    assert joined == 200
    assert report.decision.verdict == "rollback"
    assert [w.index for w in report.windows] == [0, 1, 2, 3]
    assert not refused.applied and refused.code == "decision_not_promote"
    assert applied.applied and applied.state.route_all_to == "incumbent"
    change = applied.change
    assert change.verdict == "rollback" and change.reason == "weaker"
    lineage = {arm.arm: arm for arm in change.arms}
    assert lineage["candidate"].model_version == "cand"
    assert lineage["candidate"].reference_hash == "sha256:bbbb"
    assert lineage["incumbent"].answered_version == "inc"
    with ComparisonStore(tmp_path / "s.sqlite") as store:
        assert [c.change_id for c in store.changes("shadow")] == [change.change_id]
        stored = store.windows("shadow")
        assert len(stored) == 4 and all(w.comparison.pairs.labelled == WINDOW for w in stored)


def test_an_equal_candidate_is_judged_promote(
    tmp_path: Path, monitors: dict[str, FakeMonitor]
) -> None:
    observations, labels = _traffic(200, candidate_wrong_every=0)

    async def run() -> Any:
        comparator = _comparator(tmp_path / "s.sqlite")
        await comparator.submit_labels(labels)  # before their requests: they wait for them
        await comparator.ingest(observations)
        await _settle(comparator)
        return await comparator.change(ChangeRequest("promote"))

    answer = asyncio.run(run())
    assert answer.applied and answer.state.route_all_to == "candidate", answer.detail


def test_a_restarted_comparator_keeps_the_routing_and_the_evidence(
    tmp_path: Path, monitors: dict[str, FakeMonitor]
) -> None:
    path = tmp_path / "s.sqlite"
    observations, labels = _traffic(200, candidate_wrong_every=0)

    async def first() -> None:
        comparator = _comparator(path)
        await comparator.ingest(observations)
        await comparator.submit_labels(labels)
        await _settle(comparator)

    async def second() -> Any:
        comparator = _comparator(path)
        state = await comparator.routing_state()
        report = await comparator.report()
        return state, report

    asyncio.run(first())
    state, report = asyncio.run(second())
    assert state.epoch == 0 and report.decision.verdict == "promote"
    assert report.decision.evidence.comparison.pairs.labelled == 200


def test_a_candidate_drift_alarm_rolls_back_by_itself_in_safe_mode(
    tmp_path: Path, monitors: dict[str, FakeMonitor]
) -> None:
    monitors["cand-app"].drifting = True
    observations, _ = _traffic(WINDOW, candidate_wrong_every=0)

    async def run() -> Any:
        comparator = _comparator(tmp_path / "s.sqlite", auto_rollback=True)
        await comparator.ingest(observations)
        await _settle(comparator)
        return await comparator.history()

    (change,) = asyncio.run(run())
    assert (change.action, change.actor, change.after.route_all_to) == (
        "rollback",
        "auto",
        "incumbent",
    )
    assert "candidate drift" in change.reason


def test_a_change_starts_new_evidence(tmp_path: Path, monitors: dict[str, FakeMonitor]) -> None:
    observations, labels = _traffic(200, candidate_wrong_every=0)

    async def run() -> Any:
        comparator = _comparator(tmp_path / "s.sqlite")
        await comparator.ingest(observations)
        await comparator.submit_labels(labels)
        await comparator.change(ChangeRequest("rollback"))
        await comparator.change(ChangeRequest("resume"))
        more, _ = _traffic(10, candidate_wrong_every=0, start=500)
        await comparator.ingest(more)
        await _settle(comparator)
        return await comparator.report()

    report = asyncio.run(run())
    evidence = report.decision.evidence
    assert evidence.epoch == 2 and evidence.comparison.observations == 10
    assert report.decision.verdict == "hold"


def test_an_unanswering_monitor_holds_and_the_comparison_still_exports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, reader = memory_telemetry()

    def missing(app: str, name: str) -> Any:
        raise LookupError(f"{app} is not deployed")

    monkeypatch.setattr(comparator_module, "_monitor_handle", missing)
    observations, labels = _traffic(200, candidate_wrong_every=0)

    async def run() -> Any:
        comparator = _comparator(tmp_path / "s.sqlite", min_agreement=0.5)
        await comparator.submit_labels(labels)
        await comparator.ingest(observations)
        await _settle(comparator)
        return await comparator.report()

    report = asyncio.run(run())
    assert report.decision.verdict == "hold"
    drift = next(c for c in report.decision.checks if c.name == "candidate_drift")
    assert drift.status == "unknown"
    agreement = [p.value for p in metric_points(reader, "serve_drift.shadow.agreement")]
    assert agreement and agreement[-1] == 1.0


def test_copies_go_to_the_candidate_and_their_answers_fill_the_windows(
    tmp_path: Path, monitors: dict[str, FakeMonitor], monkeypatch: pytest.MonkeyPatch
) -> None:
    from serve_drift.routing import arms as arms_module
    from serve_drift.routing.forward import ReplayedRequest
    from serve_drift.routing.messages import MirrorCopy
    from tests.unit.routing.fakes import FakeArm, answering

    candidate = FakeArm(answering(4, "cand"))
    monkeypatch.setattr(arms_module, "_app_handle", lambda app: candidate)
    request = ReplayedRequest.build(method="POST", path="/predict", body=b"png")
    copies = [
        MirrorCopy(f"r{i}", f"i{i}", float(i), request, ok(4 if i % 2 else 7, version="inc"))
        for i in range(WINDOW)
    ]

    async def run() -> Any:
        comparator = _comparator(tmp_path / "s.sqlite")
        await comparator.mirror(copies)
        await comparator._shadow.drain()
        await _settle(comparator)
        return await comparator.report()

    report = asyncio.run(run())
    assert len(candidate.requests) == WINDOW
    assert report.mirror["completed"] == WINDOW
    (window,) = report.windows
    assert window.comparison.pairs.pairs == WINDOW and window.comparison.pairs.agreement == 0.5
    assert window.comparison.pairs.flips == ((7, 4, WINDOW // 2),)
