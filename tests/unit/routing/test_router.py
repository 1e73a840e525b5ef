"""The router without Ray: who answers, what is mirrored, and that nothing the candidate does
reaches the incumbent's responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.responses import JSONResponse

from serve_drift.routing import router as router_module
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.router import ShadowRouter, change_request
from tests.unit.routing.fakes import FakeArm, FakeComparator, answering

TOKEN = "unit-admin-token-0123456789"
ADMIN = {"authorization": f"Bearer {TOKEN}"}


@pytest.fixture(autouse=True)
def _admin_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVE_DRIFT_ADMIN_TOKEN", TOKEN)


@pytest.fixture
def arms(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, FakeArm]]:
    found = {
        "inc-app": FakeArm(answering(3, "inc-v1")),
        "cand-app": FakeArm(answering(3, "cand-v1")),
    }

    def app_handle(app: str) -> FakeArm:
        if app not in found:
            raise KeyError(app)
        return found[app]

    monkeypatch.setattr(router_module, "_app_handle", app_handle)
    yield found


def _router(comparator: FakeComparator, **changes: Any) -> ShadowRouter:
    config = {
        "incumbent": {"app": "inc-app"},
        "candidate": {"app": "cand-app"},
        "mirror": {"timeout_s": 0.2},
        "comparison": {"shipping": {"flush_interval_s": 0.01}},
        **changes,
    }
    return ShadowRouter(config, comparator)


def _predict(cid: str = "r", **headers: str) -> ReplayedRequest:
    return ReplayedRequest.build(
        method="POST",
        path="/predict",
        body=b"png bytes",
        headers={"content-type": "image/png", "x-request-id": cid, **headers},
    )


def _json(response: Any) -> Any:
    return json.loads(response.body)


async def _settle(router: ShadowRouter) -> None:
    await router._mirror.drain()
    await asyncio.sleep(0.05)  # one shipper flush


def test_shadow_answers_from_the_incumbent_and_pairs_the_candidates_answer(
    arms: dict[str, FakeArm],
) -> None:
    comparator = FakeComparator()

    async def run() -> list[Any]:
        router = _router(comparator)
        responses = [await router(_predict(f"r{i}")) for i in range(5)]
        await _settle(router)
        return responses

    responses = asyncio.run(run())
    assert {_json(r)["model_version"] for r in responses} == {"inc-v1"}
    assert {r.headers["x-serve-drift-arm"] for r in responses} == {"incumbent"}
    assert len(arms["cand-app"].requests) == 5
    mirrored = arms["cand-app"].requests[0]
    assert mirrored.replay_body == b"png bytes" and mirrored.url.path == "/predict"
    assert len(comparator.observations) == 5
    observation = comparator.observations[0]
    assert observation.incumbent.model_version == "inc-v1"
    assert observation.candidate.model_version == "cand-v1" and observation.candidate.ok


@pytest.mark.parametrize("fault", ["raises", "hangs", "garbage", "error_status"])
def test_a_faulty_candidate_never_changes_an_incumbent_response(
    arms: dict[str, FakeArm], fault: str
) -> None:
    async def faulty(request: Any) -> Any:
        if fault == "raises":
            raise RuntimeError("candidate bug")
        if fault == "hangs":
            await asyncio.sleep(3600)
        if fault == "error_status":
            return JSONResponse({"error": {"code": "internal_error"}}, status_code=500)
        return {"class_index": 1, "confidence": float("nan")}

    arms["cand-app"] = FakeArm(faulty)
    comparator = FakeComparator()

    async def run() -> tuple[list[Any], dict[str, int]]:
        router = _router(comparator)
        responses = [await router(_predict(f"r{i}")) for i in range(6)]
        await _settle(router)
        return responses, dict(router._mirror.counts)

    responses, counts = asyncio.run(run())
    assert counts["sent"] == 6
    assert all(r.status_code == 200 and _json(r)["model_version"] == "inc-v1" for r in responses)
    expected = {
        "raises": "error",
        "hangs": "timeout",
        "garbage": "invalid",
        "error_status": "error",
    }
    statuses = {o.candidate.status for o in comparator.observations}
    assert statuses == {expected[fault]}
    if fault == "hangs":  # timed out copies are cancelled at the candidate
        assert all(r.cancelled for r in arms["cand-app"].call.responses)


def test_a_full_mirror_drops_copies_and_still_answers(arms: dict[str, FakeArm]) -> None:
    async def hang(request: Any) -> Any:
        await asyncio.sleep(3600)

    arms["cand-app"] = FakeArm(hang)

    async def run() -> tuple[list[Any], dict[str, int]]:
        router = _router(
            FakeComparator(), mirror={"queue_size": 2, "max_in_flight": 1, "timeout_s": 60}
        )
        responses = [await router(_predict(f"r{i}")) for i in range(10)]
        counts = dict(router._mirror.counts)
        await router._mirror.stop()
        return responses, counts

    responses, counts = asyncio.run(run())
    assert all(r.status_code == 200 for r in responses)
    assert counts["sent"] == 3 and counts["dropped_queue_full"] == 7


def test_canary_keeps_each_caller_on_one_arm_and_changes_share_at_run_time(
    arms: dict[str, FakeArm],
) -> None:
    users = [f"user-{i}" for i in range(40)]

    async def run() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
        router = _router(
            FakeComparator(), mode="canary", canary={"share": 0.3, "key": {"header": "x-user"}}
        )

        async def arms_seen() -> dict[str, set[str]]:
            seen: dict[str, set[str]] = {u: set() for u in users}
            for user in users:
                for i in range(3):
                    response = await router(_predict(f"{user}-{i}", **{"x-user": user}))
                    seen[user].add(_json(response)["model_version"])
            return seen

        before = await arms_seen()
        await router.reconfigure({"canary_share": 0.8})
        return before, await arms_seen()

    before, after = asyncio.run(run())
    assert all(len(v) == 1 for v in (*before.values(), *after.values()))  # sticky
    on_candidate = {u for u, v in before.items() if v == {"cand-v1"}}
    widened = {u for u, v in after.items() if v == {"cand-v1"}}
    assert 0 < len(on_candidate) < len(widened) < len(users)
    assert on_candidate <= widened  # widening never moves a caller back


def test_a_failing_canary_candidate_falls_back_to_the_incumbent(arms: dict[str, FakeArm]) -> None:
    async def broken(request: Any) -> Any:
        raise RuntimeError("candidate down")

    arms["cand-app"] = FakeArm(broken)
    comparator = FakeComparator()

    async def run() -> list[Any]:
        router = _router(comparator, mode="canary", canary={"share": 1.0})
        responses = [await router(_predict(f"r{i}")) for i in range(3)]
        await asyncio.sleep(0.05)
        return responses

    responses = asyncio.run(run())
    assert {_json(r)["model_version"] for r in responses} == {"inc-v1"}
    assert {o.candidate.status for o in comparator.observations} == {"error"}
    assert {o.served_by for o in comparator.observations} == {"incumbent"}


def test_a_promotion_recorded_before_a_restart_is_honoured_on_the_first_request(
    arms: dict[str, FakeArm],
) -> None:
    from serve_drift.routing.messages import RoutingState

    comparator = FakeComparator()
    comparator.state = RoutingState("candidate", 3, 1.0)

    async def run() -> Any:
        return await _router(comparator)(_predict())

    response = asyncio.run(run())
    assert _json(response)["model_version"] == "cand-v1"
    assert not arms["inc-app"].requests


def test_admin_routes_need_the_token_and_promotion_shifts_traffic(arms: dict[str, FakeArm]) -> None:
    comparator = FakeComparator()

    async def run() -> tuple[Any, Any, Any, Any]:
        router = _router(comparator)
        refused = await router(ReplayedRequest.build(method="POST", path="/shadow/promote"))
        promoted = await router(
            ReplayedRequest.build(
                method="POST", path="/shadow/promote", body=b'{"reason": "r"}', headers=ADMIN
            )
        )
        answer = await router(_predict())
        return refused, promoted, answer, comparator.changes

    refused, promoted, answer, changes = asyncio.run(run())
    assert refused.status_code == 401 and _json(refused)["error"]["code"] == "unauthorized"
    assert promoted.status_code == 200 and _json(promoted)["applied"]
    assert changes[0].action == "promote" and changes[0].reason == "r"
    assert _json(answer)["model_version"] == "cand-v1"  # this replica applied it at once


def test_labels_go_to_every_arm_and_the_accepted_ones_to_the_comparator(
    arms: dict[str, FakeArm],
) -> None:
    def labels_answer(statuses: list[str]) -> Any:
        async def behaviour(request: Any) -> JSONResponse:
            items = json.loads(request.replay_body)["labels"]
            results = [
                {"correlation_id": i["correlation_id"], "status": s, "detail": ""}
                for i, s in zip(items, statuses, strict=True)
            ]
            return JSONResponse({"request_id": "x", "results": results})

        return behaviour

    arms["inc-app"] = FakeArm(labels_answer(["accepted", "unknown_correlation_id"]))
    arms["cand-app"] = FakeArm(labels_answer(["accepted", "accepted"]))
    comparator = FakeComparator()
    body = {"labels": [{"correlation_id": "a", "label": 1}, {"correlation_id": "b", "label": 2}]}

    async def run() -> Any:
        request = ReplayedRequest.build(
            method="POST", path="/labels", body=json.dumps(body).encode(), headers=ADMIN
        )
        return await _router(comparator)(request)

    response = asyncio.run(run())
    assert [r["status"] for r in _json(response)["results"]] == ["accepted", "accepted"]
    assert comparator.labels == [("a", 1), ("b", 2)]


def test_an_arm_that_is_not_deployed_is_a_503(arms: dict[str, FakeArm]) -> None:
    del arms["inc-app"]

    async def run() -> Any:
        return await _router(FakeComparator())(_predict())

    response = asyncio.run(run())
    assert response.status_code == 503 and _json(response)["error"]["code"] == "arm_unavailable"


def test_an_alertmanager_webhook_rolls_back_while_firing_only() -> None:
    firing = {"status": "firing", "alerts": [{"labels": {"alertname": "CandidateDrift"}}]}
    request = change_request("rollback", firing)
    assert request is not None and request.actor == "alert" and "CandidateDrift" in request.reason
    assert change_request("rollback", {**firing, "status": "resolved"}) is None


def test_the_candidates_request_is_traced_in_a_mirror_span_linked_to_the_route_span(
    arms: dict[str, FakeArm],
) -> None:
    from opentelemetry import trace

    from tests.support.telemetry_memory import memory_telemetry

    spans, _ = memory_telemetry()
    spans.clear()

    from serve_drift.request_context import RequestIds, bind_request_ids

    async def run() -> None:
        router = _router(FakeComparator())
        with bind_request_ids(RequestIds("traced-1", "internal-1")):  # as Ray Serve would
            await router(_predict("traced-1"))
        await _settle(router)

    asyncio.run(run())
    finished = {s.name: s for s in spans.get_finished_spans()}
    route, mirror = finished["serve_drift.route"], finished["serve_drift.shadow.mirror"]
    assert route.attributes["serve_drift.correlation_id"] == "traced-1"
    assert mirror.attributes["serve_drift.correlation_id"] == "traced-1"
    assert [link.context.span_id for link in mirror.links] == [route.context.span_id]
    assert mirror.context.trace_id != route.context.trace_id  # its own trace: no long tail
    incumbent_request = arms["inc-app"].requests[0]
    candidate_request = arms["cand-app"].requests[0]

    def ids(span: Any) -> str:
        context = span.context
        return f"{trace.format_trace_id(context.trace_id)}-{trace.format_span_id(context.span_id)}"

    route_ids, mirror_ids = ids(route), ids(mirror)
    assert route_ids in incumbent_request.headers["traceparent"]
    assert mirror_ids in candidate_request.headers["traceparent"]
