"""Shadow copies sent from the comparator's process: under the client's request IDs, traced
with a link to the router's span, bounded, and every fault of the candidate counted."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from opentelemetry import trace
from starlette.responses import JSONResponse

from serve_drift.routing import arms as arms_module
from serve_drift.routing.config import MirrorConfig
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.messages import MirrorCopy, Observation
from serve_drift.routing.shadowing import ShadowCaller
from tests.unit.routing.fakes import FakeArm, FakeMethod, answering
from tests.unit.routing.support import ok

ROUTE_TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _copy(i: int) -> MirrorCopy:
    request = ReplayedRequest.build(
        method="POST",
        path="/predict",
        body=b"png",
        headers={"content-type": "image/png", "traceparent": ROUTE_TRACEPARENT},
    )
    return MirrorCopy(f"r{i}", f"internal-{i}", float(i), request, ok(3, version="inc"))


def _run(
    candidate: FakeArm | None, copies: int, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> tuple[list[Observation], dict[str, int]]:
    def app_handle(app: str) -> FakeArm:
        if candidate is None:
            raise LookupError(app)
        return candidate

    monkeypatch.setattr(arms_module, "_app_handle", app_handle)
    seen: list[Observation] = []

    async def run() -> dict[str, int]:
        caller = ShadowCaller(
            app="cand-app",
            config=MirrorConfig(**{"timeout_s": 0.1, **config}),
            router="shadow",
            observe=seen.append,
        )
        for i in range(copies):
            caller.offer(_copy(i))
        await caller.drain()
        return dict(caller.outcomes)

    return seen, asyncio.run(run())


def test_a_copy_pairs_the_candidates_answer_with_the_incumbents(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen, outcomes = _run(FakeArm(answering(5, "cand")), 3, monkeypatch)
    assert outcomes == {"completed": 3}
    first = seen[0]
    assert (first.correlation_id, first.mode, first.served_by) == ("r0", "shadow", "incumbent")
    assert seen[0].incumbent.model_version == "inc" and seen[0].candidate.rows[0].predicted == 5


@pytest.mark.parametrize(
    ("fault", "status", "outcome"),
    [
        ("raises", "error", "failed"),
        ("hangs", "timeout", "timeout"),
        ("nan", "invalid", "invalid"),
        ("wrong_type", "invalid", "invalid"),
        ("status_500", "error", "failed"),
    ],
)
def test_every_fault_of_the_candidate_is_an_observed_and_counted_failure(
    monkeypatch: pytest.MonkeyPatch, fault: str, status: str, outcome: str
) -> None:
    async def faulty(request: Any) -> Any:
        if fault == "raises":
            raise RuntimeError("candidate bug")
        if fault == "hangs":
            await asyncio.sleep(3600)
        if fault == "status_500":
            return JSONResponse({"error": {"code": "internal_error"}}, status_code=500)
        if fault == "wrong_type":
            return ["not", "an", "answer"]
        return {"class_index": 1, "confidence": float("nan")}

    candidate = FakeArm(faulty)
    seen, outcomes = _run(candidate, 4, monkeypatch)
    assert outcomes == {outcome: 4}
    assert {o.candidate.status for o in seen} == {status}
    assert all(o.incumbent.ok for o in seen)
    if fault == "hangs":  # timed-out copies are cancelled at the candidate
        assert all(r.cancelled for r in candidate.call.responses)


def test_copies_beyond_the_queue_are_dropped_and_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    async def slow(request: Any) -> Any:
        await asyncio.sleep(0.05)
        return {"class_index": 1, "confidence": 0.5}

    seen, outcomes = _run(
        FakeArm(slow), 10, monkeypatch, queue_size=2, max_in_flight=1, timeout_s=5.0
    )
    assert outcomes == {"completed": 2, "dropped_queue_full": 8}
    assert len(seen) == 2  # dropped copies leave no observation: nothing to compare


def test_a_missing_candidate_app_is_unreachable(monkeypatch: pytest.MonkeyPatch) -> None:
    seen, outcomes = _run(None, 2, monkeypatch)
    assert outcomes == {"unreachable": 2}
    assert {o.candidate.status for o in seen} == {"unreachable"}


def test_a_copy_carries_the_clients_request_ids_and_a_linked_span(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ray.serve.context import _get_serve_request_context

    from tests.support.telemetry_memory import memory_telemetry

    spans, _ = memory_telemetry()
    spans.clear()
    ids: list[tuple[str, str]] = []

    async def candidate(request: Any) -> Any:
        return {"class_index": 1, "confidence": 0.5}

    arm = FakeArm(candidate)
    original = arm.remote

    def remote(request: Any) -> Any:  # what a DeploymentHandle reads when called
        context = _get_serve_request_context()
        ids.append((context.request_id, context._internal_request_id))
        return original(request)

    arm.remote = remote  # type: ignore[method-assign]
    _run(arm, 1, monkeypatch)
    assert ids == [("r0", "internal-0")]
    (mirror,) = [s for s in spans.get_finished_spans() if s.name == "serve_drift.shadow.mirror"]
    assert [trace.format_span_id(link.context.span_id) for link in mirror.links] == [
        "b7ad6b7169203331"
    ]
    assert mirror.context.trace_id != int("0af7651916cd43dd8448eb211c80319c", 16)
    header = arm.requests[0].headers["traceparent"]
    assert trace.format_span_id(mirror.context.span_id) in header


def test_copies_go_to_a_batch_capable_candidate_in_few_calls_each_under_its_own_ids(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candidate = FakeArm(answering(5, "cand"), batches=True)
    seen, outcomes = _run(candidate, 40, monkeypatch, candidate_batch_size=16)
    assert outcomes == {"completed": 40}
    assert [len(call[0]) for call in candidate.batch.calls] == [16, 16, 8]
    assert candidate.batched_ids == [(f"r{i}", f"internal-{i}") for i in range(40)]
    assert sorted(o.correlation_id for o in seen) == sorted(f"r{i}" for i in range(40))
    assert all(o.candidate.rows[0].predicted == 5 and o.incumbent.ok for o in seen)


def test_in_a_batch_a_hanging_or_raising_copy_fails_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    async def mixed(request: Any) -> Any:
        copy = request.headers["x-copy"]
        if copy == "hang":
            await asyncio.sleep(3600)
        if copy == "raise":
            raise ValueError("candidate bug")
        return {"class_index": 2, "confidence": 0.7}

    def copy_of(i: int, kind: str) -> MirrorCopy:
        request = ReplayedRequest.build(method="POST", path="/predict", headers={"x-copy": kind})
        return MirrorCopy(f"r{i}", f"internal-{i}", float(i), request, ok(3, version="inc"))

    monkeypatch.setattr(arms_module, "_app_handle", lambda app: FakeArm(mixed, batches=True))
    seen: list[Observation] = []

    async def run() -> dict[str, int]:
        caller = ShadowCaller(
            app="cand-app", config=MirrorConfig(timeout_s=0.1), router="s", observe=seen.append
        )
        for i, kind in enumerate(["ok", "hang", "raise", "ok"]):
            caller.offer(copy_of(i, kind))
        await caller.drain()
        return dict(caller.outcomes)

    assert asyncio.run(run()) == {"completed": 2, "timeout": 1, "failed": 1}
    by_id = {o.correlation_id: o.candidate for o in seen}
    assert (by_id["r1"].status, by_id["r2"].status) == ("timeout", "error")
    assert by_id["r2"].detail == "ValueError"
    assert by_id["r0"].ok and by_id["r3"].ok


def test_a_candidate_without_the_batch_method_gets_one_call_per_copy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candidate = FakeArm(answering(4, "cand"))  # no batch method, as an undecorated deployment
    seen, outcomes = _run(candidate, 6, monkeypatch)
    assert outcomes == {"completed": 6}
    assert len(candidate.batch.calls) == 1  # asked once, then per copy until BATCH_RETRY_S
    parents = {r.headers["traceparent"] for r in candidate.requests}
    assert len(parents) == 6 and ROUTE_TRACEPARENT not in parents  # each its mirror span
    assert len(candidate.requests) == 6 and len(seen) == 6


def test_a_batch_answer_of_the_wrong_length_makes_every_copy_invalid(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    candidate = FakeArm(answering(4, "cand"))

    async def short(items: list[Any], timeout_s: float) -> list[Any]:
        return []

    candidate.batch = FakeMethod(short)
    seen, outcomes = _run(candidate, 3, monkeypatch)
    assert outcomes == {"invalid": 3}
    assert {o.candidate.detail for o in seen} == {
        "the batch method answered 0 answers for 3 copies"
    }
