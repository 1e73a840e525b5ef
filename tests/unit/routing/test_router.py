"""The router without Ray: who answers, what is mirrored, and that nothing the candidate does
reaches the incumbent's responses."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.responses import JSONResponse

from serve_drift.routing import arms as arms_module
from serve_drift.routing.changes import change_request
from serve_drift.routing.forward import ReplayedRequest
from serve_drift.routing.router import ShadowRouter
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

    monkeypatch.setattr(arms_module, "_app_handle", app_handle)
    yield found


def _router(comparator: FakeComparator, **changes: Any) -> ShadowRouter:
    config = {
        "incumbent": {"app": "inc-app"},
        "candidate": {"app": "cand-app"},
        "mirror": {"timeout_s": 0.2, "flush_interval_s": 0.01},
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
    await asyncio.sleep(0.1)  # a few shipper flushes


def test_shadow_answers_from_the_incumbent_and_ships_a_copy_to_the_comparator(
    arms: dict[str, FakeArm],
) -> None:
    from serve_drift.request_context import RequestIds, bind_request_ids

    comparator = FakeComparator()

    async def run() -> list[Any]:
        router = _router(comparator)
        responses = []
        for i in range(5):
            with bind_request_ids(RequestIds(f"r{i}", f"internal-{i}")):  # as Ray Serve would
                responses.append(await router(_predict(f"r{i}")))
        await _settle(router)
        return responses

    responses = asyncio.run(run())
    assert {_json(r)["model_version"] for r in responses} == {"inc-v1"}
    assert {r.headers["x-serve-drift-arm"] for r in responses} == {"incumbent"}
    assert not arms["cand-app"].requests  # the router never calls the candidate itself
    assert [c.correlation_id for c in comparator.copies] == [f"r{i}" for i in range(5)]
    copy = comparator.copies[0]
    assert copy.internal_id == "internal-0" and copy.request.replay_body == b"png bytes"
    assert copy.request.url.path == "/predict" and copy.incumbent.model_version == "inc-v1"


def test_a_slow_comparator_fills_the_copy_buffer_and_the_router_still_answers(
    arms: dict[str, FakeArm],
) -> None:
    comparator = FakeComparator()
    comparator.mirror_delay_s = 3600

    async def run() -> tuple[list[Any], dict[str, int]]:
        router = _router(comparator, mirror={"buffer_size": 4, "batch_size": 2})
        responses = [await router(_predict(f"r{i}")) for i in range(20)]
        await asyncio.sleep(0.05)
        dropped = dict(router._copies.dropped)
        await router._copies.stop()
        return responses, dropped

    responses, dropped = asyncio.run(run())
    assert all(r.status_code == 200 and _json(r)["model_version"] == "inc-v1" for r in responses)
    assert dropped.get("queue_full", 0) >= 20 - 4 - 2  # at most a buffer and a batch in flight


def test_a_request_too_large_to_copy_is_answered_and_not_copied(arms: dict[str, FakeArm]) -> None:
    comparator = FakeComparator()

    async def run() -> tuple[Any, int]:
        router = _router(comparator, mirror={"max_copy_bytes": 4})
        response = await router(_predict("big"))  # a 9-byte body
        await _settle(router)
        return response, router._too_large

    response, too_large = asyncio.run(run())
    assert _json(response)["model_version"] == "inc-v1"
    assert too_large == 1 and not comparator.copies


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


def test_the_route_span_is_the_parent_of_the_arms_request_span(arms: dict[str, FakeArm]) -> None:
    from opentelemetry import trace

    from tests.support.telemetry_memory import memory_telemetry

    spans, _ = memory_telemetry()
    spans.clear()

    async def run() -> None:
        await _router(FakeComparator())(_predict("traced"))

    asyncio.run(run())
    (route,) = [s for s in spans.get_finished_spans() if s.name == "serve_drift.route"]
    assert route.attributes["serve_drift.arm"] == "incumbent"
    assert route.attributes["serve_drift.shadow.mirrored"] is True
    span_id = trace.format_span_id(route.context.span_id)
    assert span_id in arms["inc-app"].requests[0].headers["traceparent"]


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
